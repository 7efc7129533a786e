"""ops-report: a day of scans for the people who run scanflow.

Counts by outcome and by cause, the latencies of each leg from the upload to the platform's
acknowledgement (p50, p95, max), the slowest scans, the rejection reasons and their shares.
Left as a table artifact and a markdown artifact with charts (data: URIs, drawn with OpenCV)
on the run, a JSON report in the results store (``<results root>/_reports/``), and a Slack
digest without patient data (no patient or scan ids). Deployed daily from prefect.yaml; by
hand: ``scanflow ops-report [--since T] [--until T] [--json]``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from scanflow.notify.senders import FAST, USER_AGENT, post_with_retries, resolve_targets
from scanflow.settings import Settings
from scanflow.storage import join, store_for
from tasks.ops_report import chart_markdown, collect_timelines, summarize
from tasks.reconcile import read_window, unwalked


@flow(name="ops-report", persist_result=False)
def ops_report(since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """The report for [since, until) (default: the last 24 hours); returns it."""
    settings = Settings()
    end = until or datetime.now(UTC)
    start = since or end - timedelta(days=1)
    runs = [r for r in read_window("process-scan", start) if r.created is None or r.created < end]
    report = {
        "window": {"since": start.isoformat(), "until": end.isoformat()},
        **summarize(collect_timelines(unwalked(runs), settings.results_root)),
    }
    _artifacts(report)
    stamp = end.strftime("%Y%m%dT%H%M%SZ")
    uri = join(settings.results_root, "_reports", f"ops-{stamp}.json")
    store_for(uri).put_bytes(uri, json.dumps(report, indent=1).encode(), "application/json")
    report["report"] = uri
    _slack_digest(report, settings)
    get_run_logger().info("ops report: %d runs, %s", report["runs"], report["by_outcome"])
    return report


def _artifacts(report: dict[str, Any]) -> None:
    rows = [{"figure": f"runs {k}", "value": v} for k, v in report["by_outcome"].items()]
    rows += [{"figure": f"cause {k}", "value": v} for k, v in report["by_cause"].items()]
    rows += [
        {
            "figure": f"{leg} p50 / p95 / max (s)",
            "value": f"{v['p50_s']} / {v['p95_s']} / {v['max_s']} (n={v['n']})",
        }
        for leg, v in report["latency"].items()
    ]
    rows += [
        {"figure": f"rejected: {r['reason']}", "value": f"{r['count']} ({r['share']:.0%})"}
        for r in report["rejections"]
    ]
    window = f"{report['window']['since']} .. {report['window']['until']}"
    create_table_artifact(key="ops-report", table=rows, description=f"ops report {window}")
    lines = [f"## Scans {window}", "", chart_markdown(report["by_outcome"], "runs by outcome")]
    if report["latency"]:
        p95 = {leg: v["p95_s"] for leg, v in report["latency"].items()}
        lines += ["", chart_markdown(p95, "p95 latency of each leg", " s")]
    if report["slowest"]:
        lines += ["", "| slowest scans | outcome | seconds |", "| --- | --- | --- |"]
        lines += [
            f"| `{s['scan_id']}` | {s['outcome']} | {s['seconds']} |" for s in report["slowest"]
        ]
    create_markdown_artifact(key="ops-report-charts", markdown="\n".join(lines))


def digest_text(report: dict[str, Any]) -> str:
    """The Slack digest: counts, latencies and reasons only (no patient or scan ids)."""
    outcomes = ", ".join(f"{k} {v}" for k, v in report["by_outcome"].items()) or "no runs"
    causes = ", ".join(f"{k} {v}" for k, v in report["by_cause"].items()) or "none"
    text = [
        f"*scanflow, {report['window']['since'][:16]} .. {report['window']['until'][:16]}*",
        f"{report['runs']} runs: {outcomes}",
        f"failures by cause: {causes}",
    ]
    whole = report["latency"].get("upload → platform acknowledged")
    if whole:
        text.append(
            f"upload to platform: p50 {whole['p50_s']} s, p95 {whole['p95_s']} s, "
            f"max {whole['max_s']} s"
        )
    if report["rejections"]:
        text.append(
            "rejections: "
            + ", ".join(f"{r['reason']} {r['share']:.0%}" for r in report["rejections"])
        )
    if report["unacknowledged_final"]:
        text.append(f"{report['unacknowledged_final']} outcomes not acknowledged by the platform")
    return "\n".join(text)


def _slack_digest(report: dict[str, Any], settings: Settings) -> None:
    targets = resolve_targets(settings)
    if targets.slack_url is None:
        return
    body = json.dumps({"text": digest_text(report)}).encode()
    with httpx.Client(timeout=targets.timeout_s) as client:
        post_with_retries(
            client,
            targets.slack_url.get_secret_value(),
            body,
            lambda: {"Content-Type": "application/json", "User-Agent": USER_AGENT},
            FAST,
            label="slack",
            log=get_run_logger(),
        )
