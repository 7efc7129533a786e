"""publish_manifest: report.html, then manifest.json last and atomically (its presence means
the scan is complete), with a markdown summary on the run in the Prefect UI: the figures,
and the contact sheet, change maps and trend as pictures (``SCANFLOW_UI_IMAGES``). The
manifest itself is a contract: scanflow.contracts.manifest."""

from __future__ import annotations

import base64
import json
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cv.errors import ScanError
from cv.images import thumbnail_jpeg
from scanflow.contracts.manifest import Manifest, manifest_uri
from scanflow.report import report_uri, scan_report
from scanflow.settings import Settings
from scanflow.storage import S3Store, join, store_for
from tasks._progress import scan_artifact_key

UI_IMAGE_SIDE = 640  # px: a picture in the UI artifact (~20-60 KB as a JPEG at quality 70)


def ui_image_mode(results_uri: str, setting: str) -> str:
    """inline, presigned or links for pictures of results under ``results_uri``."""
    if setting != "auto":
        return setting
    return "links" if results_uri.startswith("s3://") else "inline"


def picture(uri: str, alt: str, mode: str, expiry_s: int) -> str:
    """A markdown image of the picture at ``uri`` (or a link to it, in links mode)."""
    if mode == "inline":
        try:
            small = thumbnail_jpeg(store_for(uri).get_bytes(uri), UI_IMAGE_SIDE)
        except (ScanError, ValueError):  # gone, or not a picture: its link instead
            return f"- {alt}: `{uri}`"
        return f"![{alt}](data:image/jpeg;base64,{base64.b64encode(small).decode()})"
    if mode == "presigned" and uri.startswith("s3://"):
        return f"![{alt}]({S3Store().presign(uri, expiry_s)})"
    return f"- {alt}: `{uri}`"


def _pictures(m: Manifest, mode: str, expiry_s: int) -> list[str]:
    shown = [(m.artifacts.contact_sheet, "contact sheet: the scan's keyframes")]
    if m.tracking:
        shown += [
            (
                c.change_map,
                f"{c.view.replace('_', ' ')}: change map against {m.tracking.previous_scan_id}",
            )  # fmt: skip
            for c in m.tracking.views
            if c.change_map
        ]
    if m.trend:
        shown.append((m.trend.plot_uri, f"trend over {len(m.trend.scans)} scans"))
    return ["", "### Pictures", ""] + [
        picture(uri, alt, mode, expiry_s) + "\n" for uri, alt in shown
    ]


def _markdown(m: Manifest, uri: str, images: tuple[str, int] = ("links", 0)) -> str:
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
        f"- report for the doctor: `{m.artifacts.report}`",
        f"- manifest: `{uri}`",
        f"- summary video: `{m.artifacts.summary_video}`",
    ]
    lines += _pictures(m, *images)
    return "\n".join(lines)


def _view_rows(m: Manifest) -> list[str]:
    if m.views is None:
        return []
    seen = ", ".join(f"{k} {v}" for k, v in m.views.frames.items() if v) or "none"
    missing = ", ".join(m.views.missing) or "none"
    return [f"| views (usable frames) | {seen}; missing: {missing} |"]


@task(name="publish-manifest")
def publish_manifest(manifest: Manifest, scan_uri: str) -> str:
    """Write report.html, then manifest.json (atomically, last), and a markdown summary with
    pictures in the Prefect UI."""
    settings = Settings()
    page = report_uri(scan_uri)
    manifest = manifest.model_copy(
        update={"artifacts": manifest.artifacts.model_copy(update={"report": page})}
    )
    store_for(page).put_bytes(page, scan_report(manifest).encode(), "text/html; charset=utf-8")
    uri = manifest_uri(scan_uri)
    store_for(uri).put_bytes(uri, manifest.model_dump_json(indent=2).encode(), "application/json")
    mode = ui_image_mode(scan_uri, settings.ui_images)
    create_markdown_artifact(
        key=artifact_key(manifest.scan_id),
        markdown=_markdown(manifest, uri, (mode, settings.presign_expiry_s)),
        description=f"scan {manifest.scan_id}",
    )
    get_run_logger().info("manifest written: %s", uri)
    return uri


def artifact_key(scan_id: str) -> str:
    return scan_artifact_key("scan", scan_id)


def _worst_frames(rows: list[list[Any]], stored: set[int]) -> list[tuple[int, str]]:
    """The stored frames that explain a rejection: the blurriest, the darkest, the one with
    the most glare (if any) and the fastest, each once, with what it shows (one frame may be
    several of these)."""
    kept = [r for r in rows if int(r[0]) in stored]
    if not kept:
        return []
    picks = [
        (min(kept, key=lambda r: float(r[2])), "blurriest (sharpness {2:.0f})"),
        (min(kept, key=lambda r: float(r[3])), "darkest (brightness {3:.0f})"),
        (max(kept, key=lambda r: float(r[5])), "most glare ({5:.0%} blown out)"),
        (max(kept, key=lambda r: float(r[6])), "fastest motion ({6:.1f})"),
    ]
    captions: dict[int, list[str]] = {}
    times: dict[int, float] = {}
    for row, text in picks:
        if "glare" in text and float(row[5]) <= 0:
            continue  # no glare anywhere: nothing to show
        values = [float(v) for v in row[:7]]
        captions.setdefault(int(row[0]), []).append(text.format(*values))
        times[int(row[0])] = float(row[1])
    return [
        (index, f"{' and '.join(texts)}, frame at {times[index]:.1f} s")
        for index, texts in captions.items()
    ]


def rejection_pictures(scan_uri: str) -> list[str]:
    """Markdown pictures of the frames that explain why a scan was rejected (none when its
    frames were not stored)."""
    settings = Settings()
    store = store_for(scan_uri)
    quality_uri = join(scan_uri, "frame_quality.json")
    if not store.exists(quality_uri):
        return []
    rows = json.loads(store.get_bytes(quality_uri))["rows"]
    frames = join(scan_uri, "frames")
    stored = {
        int(u.rsplit("/", 1)[-1].split(".")[0])
        for u in store.list_files(frames)
        if u.endswith(".jpg")
    }
    mode = ui_image_mode(scan_uri, settings.ui_images)
    lines = ["", "### The frames behind the verdict", ""]
    for index, caption in _worst_frames(rows, stored):
        uri = join(frames, f"{index:06d}.jpg")
        lines.append(picture(uri, caption, mode, settings.presign_expiry_s) + "\n")
    return lines if len(lines) > 3 else []
