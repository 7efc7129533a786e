"""shadow-model: a candidate view classifier over scans production already processed, before
it is trusted. From each scan's stored kept frames (no decoding), the candidate's views are
written beside production's (``<scan>/shadow/<sha>/views.json``, never over them) and
compared: view agreement, views newly missing or found, tracking verdicts changed (a view
compared with the previous scan that the candidate would call changed when production did
not, or the other way), time per scan. The report (a table
artifact and ``<results>/_shadow/<sha256>.json``) carries the gate's verdict, which
``scanflow model promote`` checks. ``scanflow model shadow URI [--last N | --since T]``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from scanflow.models.cache import cpu_threads
from scanflow.models.gate import judge, write_report
from scanflow.models.registry import describe, production_model
from scanflow.settings import Settings
from tasks.shadow import completed_scan_uris, shadow_scan


@flow(name="shadow-model", persist_result=False)
def shadow_model(
    candidate_uri: str, last: int = 20, since: datetime | None = None
) -> dict[str, Any]:
    settings = Settings()
    started = datetime.now(UTC)
    candidate = describe(candidate_uri, Path(settings.models_dir)).ref()
    scans = completed_scan_uris(settings.results_root, last, since)
    threads = settings.cpu_threads or cpu_threads()
    results = [shadow_scan(uri, candidate, str(settings.models_dir), threads) for uri in scans]
    production = production_model()
    report = {
        "candidate": candidate.model_dump(),
        "production": production.model_dump() if production else "the shipped default",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "scans": results,
        "frames": sum(r["frames"] for r in results),
        "tracking_verdicts_changed": sum(len(r["tracking_changed"]) for r in results),
        "seconds_per_scan": round(sum(r["seconds"] for r in results) / len(results), 3)
        if results
        else None,
        "gate": judge(results, settings.shadow_min_agreement),
    }
    report["report"] = write_report(settings.results_root, report)
    create_table_artifact(
        key=f"shadow-{str(candidate.sha256)[:12]}",
        table=[
            {
                "scan": r["scan"].rstrip("/").rsplit("/", 1)[-1],
                "agreement": r["agreement"],
                "views lost": ", ".join(r["views_lost"]) or "-",
                "views found": ", ".join(r["views_found"]) or "-",
                "tracking changed": ", ".join(
                    f"{t['view']}: {t['production']} -> {t['candidate']}"
                    for t in r["tracking_changed"]
                )
                or "-",
                "seconds": r["seconds"],
            }
            for r in results
        ],
        description=f"{candidate.name} {candidate.version} in shadow: {report['gate']['why']}",
    )
    get_run_logger().info(
        "shadow %s over %d scans: %s", candidate.name, len(results), report["gate"]
    )
    return report
