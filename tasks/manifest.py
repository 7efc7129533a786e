"""publish_manifest: write manifest.json last and atomically (its presence means the scan is
complete), with a markdown summary on the run in the Prefect UI. The manifest itself is a
contract: scanflow.contracts.manifest."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from scanflow.contracts.manifest import Manifest, manifest_uri
from scanflow.storage import store_for


def _markdown(m: Manifest, uri: str, ui_hint: str | None) -> str:
    q = m.quality
    lines = [
        f"## Scan `{m.scan_id}`: {'usable' if q.usable else 'rejected'}",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| usable frames | {q.usable_frames} of {q.frames_decoded} ({q.usable_fraction:.0%}) |",
        f"| duration | {q.duration_s:.1f} s |",
        f"| median sharpness | {q.median_sharpness:.0f} |",
        f"| blurry / dark / glare / fast motion | {q.blurry_fraction:.0%} / "
        f"{q.dark_fraction:.0%} / {q.glare_fraction:.0%} / {q.fast_motion_fraction:.0%} |",
        f"| model | {m.model.name} {m.model.version} on {m.model.device} |",
        *_view_rows(m),
        # not the sum of timings_s: load_model and inference_while_decoding overlap decoding
        f"| total time | {(m.completed_at - m.started_at).total_seconds():.1f} s |",
    ]
    if m.tracking:
        t = m.tracking
        lines.append(
            f"| changed since `{t.previous_scan_id}` | {', '.join(t.changed_views) or 'no view'} |"
        )
        for v in t.views:
            if v.status == "compared":
                moved = f", moved {v.displacement_px:.1f} px" if v.displacement_px else ""
                lines.append(
                    f"| {v.view} | change {v.change_score:.2%}{moved} ({v.inliers} inliers) |"
                )
            else:
                lines.append(
                    f"| {v.view} | {v.status.replace('_', ' ')}"
                    f"{': ' + v.reason if v.reason else ''} |"
                )
    lines += [
        "",
        f"- manifest: `{uri}`",
        f"- summary video: `{m.artifacts.summary_video}`",
        f"- contact sheet: `{m.artifacts.contact_sheet}`",
    ]
    if m.trend:
        lines.append(f"- trend over {len(m.trend.scans)} scans: `{m.trend.plot_uri}`")
    return "\n".join(lines)


def _view_rows(m: Manifest) -> list[str]:
    if m.views is None:
        return []
    seen = ", ".join(f"{k} {v}" for k, v in m.views.frames.items() if v) or "none"
    missing = ", ".join(m.views.missing) or "none"
    return [f"| views (usable frames) | {seen}; missing: {missing} |"]


@task(name="publish-manifest")
def publish_manifest(manifest: Manifest, scan_uri: str) -> str:
    """Write manifest.json (atomically, last) and a markdown summary in the Prefect UI."""
    uri = manifest_uri(scan_uri)
    store_for(uri).put_bytes(uri, manifest.model_dump_json(indent=2).encode(), "application/json")
    create_markdown_artifact(
        key=artifact_key(manifest.scan_id),
        markdown=_markdown(manifest, uri, None),
        description=f"scan {manifest.scan_id}",
    )
    get_run_logger().info("manifest written: %s", uri)
    return uri


def artifact_key(scan_id: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    key = "".join(c if c.isalnum() else "-" for c in scan_id.lower())
    return f"scan-{key}"[:60].rstrip("-")
