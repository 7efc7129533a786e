"""The promotion gate: a candidate model is promoted only after a shadow run over past
scans (flows/shadow_model.py) agreed with production often enough and cost no scan a view
it had. The shadow report lives in the results store, ``<results>/_shadow/<sha256>.json``;
``scanflow model promote`` reads it and refuses without it, unless ``--force``."""

from __future__ import annotations

import json
from typing import Any

from scanflow.storage import join, store_for

REPORTS = "_shadow"


def report_uri(results_root: str, sha256: str) -> str:
    return join(results_root, REPORTS, f"{sha256}.json")


def write_report(results_root: str, report: dict[str, Any]) -> str:
    uri = report_uri(results_root, str(report["candidate"]["sha256"]))
    store_for(uri).put_bytes(uri, json.dumps(report, indent=1).encode(), "application/json")
    return uri


def read_report(results_root: str, sha256: str) -> dict[str, Any] | None:
    uri = report_uri(results_root, sha256)
    store = store_for(uri)
    if not store.exists(uri):
        return None
    report: dict[str, Any] = json.loads(store.get_bytes(uri))
    return report


def judge(scans: list[dict[str, Any]], min_agreement: float) -> dict[str, Any]:
    """The gate's verdict on a shadow run's per-scan results."""
    frames = sum(s["frames"] for s in scans)
    agreement = sum(s["agreement"] * s["frames"] for s in scans) / frames if frames else 0.0
    losing = [s["scan"] for s in scans if s["views_lost"]]
    why = []
    if not scans:
        why.append("no completed scan to shadow")
    if agreement < min_agreement:
        why.append(f"agreement {agreement:.1%} is under {min_agreement:.0%}")
    if losing:
        why.append(f"{len(losing)} scan(s) would lose a view they had")
    return {
        "passed": not why,
        "why": "; ".join(why) or "agrees with production and costs no scan a view",
        "agreement": round(agreement, 4),
        "min_agreement": min_agreement,
        "scans_losing_a_view": losing,
    }


def may_promote(results_root: str, sha256: str) -> tuple[bool, str]:
    """Whether the gate lets this candidate through, and why."""
    report = read_report(results_root, sha256)
    if report is None:
        return False, "never shadowed: run `scanflow model shadow URI` first (or --force)"
    gate = report["gate"]
    return bool(gate["passed"]), f"shadow run {report['finished_at'][:19]}: {gate['why']}"
