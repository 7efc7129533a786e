"""report.html: a scan's results as one page a doctor opens in any browser, and a patient's
page across their scans (``scanflow report PATIENT``).

Self-contained: every picture and the summary video are inside the file as ``data:`` URIs,
with its style inline; no script, font or request leaves it, so it opens the same from the
results folder, an e-mail attachment or a presigned URL. Accessible: one ``h1``, a heading a
section, alt text on every image, native video controls, and a layout that reflows to a
phone's width.
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from collections.abc import Iterable

from cv.errors import ScanError
from scanflow.contracts.manifest import Manifest
from scanflow.contracts.stages import MIN_VIEW_CONFIDENCE, ViewChange
from scanflow.storage import join, store_for

REPORT_NAME = "report.html"

STYLE = "".join(
    [
        'body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;',
        "margin:0;color:#1b1b1b;background:#fff}",
        "main{max-width:1100px;margin:0 auto;padding:1rem}",
        "h1{font-size:1.6rem;margin:.5rem 0}",
        "h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}",
        "table{border-collapse:collapse;width:100%;max-width:40rem}",
        "td,th{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee}",
        ".verdict{padding:.6rem 1rem;border-radius:.4rem;font-weight:600}",
        ".ok{background:#e6f4ea;color:#0d5323}",
        ".bad{background:#fdecea;color:#8a1c12}",
        ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.75rem}",
        "figure{margin:0}",
        "figure img{width:100%;height:auto;border-radius:.3rem;display:block}",
        "figcaption{font-size:.9rem;color:#444}",
        "video,img.wide{width:100%;max-width:960px;height:auto;display:block}",
        ".view{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));",
        "gap:.5rem;margin-bottom:1.25rem}",
        "a:focus,video:focus{outline:3px solid #1a73e8;outline-offset:2px}",
        "@media (max-width:480px){main{padding:.5rem}h1{font-size:1.3rem}}",
    ]
)


def _e(text: object) -> str:
    return html.escape(str(text))


def data_uri(uri: str) -> str:
    """The object at ``uri`` as a ``data:`` URI (its type from its name)."""
    mime = mimetypes.guess_type(uri)[0] or "application/octet-stream"
    data = store_for(uri).get_bytes(uri)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _img(uri: str | None, alt: str, cls: str = "") -> str:
    if not uri:
        return ""
    try:
        src = data_uri(uri)
    except ScanError:  # gone from the store: the page says so instead of failing
        return f"<p>({_e(alt)}: not available)</p>"
    klass = f' class="{cls}"' if cls else ""
    return f'<img src="{src}" alt="{_e(alt)}"{klass} loading="lazy">'


def _figure(uri: str | None, alt: str, caption: str) -> str:
    if not uri:
        return f"<figure><figcaption>{_e(caption)}</figcaption></figure>"
    return f"<figure>{_img(uri, alt)}<figcaption>{_e(caption)}</figcaption></figure>"


def _page(title: str, body: Iterable[str]) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; media-src data:; style-src 'unsafe-inline'\">"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body><main>"
        + "".join(body)
        + "</main></body></html>"
    )


def _rows(rows: Iterable[tuple[str, str]]) -> str:
    return (
        "<table><tbody>"
        + "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
        + "</tbody></table>"
    )


def _quality(m: Manifest) -> list[str]:
    q = m.quality
    verdict = "Usable scan" if q.usable else "Re-scan needed"
    return [
        "<h2>Scan quality</h2>",
        f'<p class="verdict {"ok" if q.usable else "bad"}" role="status">{verdict}</p>',
        _rows(
            [
                (
                    "usable frames",
                    f"{q.usable_frames} of {q.frames_decoded} ({q.usable_fraction:.0%})",
                ),
                ("duration", f"{q.duration_s:.1f} s"),
                ("time covered by usable frames", f"{q.time_coverage:.0%}"),
                ("longest gap without a usable frame", f"{q.longest_gap_s:.1f} s"),
                (
                    "median sharpness",
                    f"{q.median_sharpness:.0f} (threshold {q.sharpness_threshold:.0f})",
                ),
                (
                    "blurry / dark / glare / fast motion",
                    f"{q.blurry_fraction:.0%} / {q.dark_fraction:.0%} / {q.glare_fraction:.0%} / "
                    f"{q.fast_motion_fraction:.0%}",
                ),
                (
                    "views seen",
                    ", ".join(v.view.replace("_", " ") for v in m.view_frames) or "none",
                ),
                (
                    "views missing",
                    ", ".join(m.views.missing) if m.views and m.views.missing else "none",
                ),
            ]
        ),  # fmt: skip
    ]


def _change_text(c: ViewChange) -> str:
    if c.status == "compared":
        moved = f", moved {c.displacement_px:.1f} px" if c.displacement_px else ""
        verdict = "changed" if c.changed else "no change"
        return f"{verdict}: {c.change_score or 0:.1%} of the overlap{moved}"
    why = f": {c.reason}" if c.reason else ""
    return c.status.replace("_", " ") + why


def _tracking(m: Manifest) -> list[str]:
    t = m.tracking
    if t is None:
        return ["<h2>Tracking</h2><p>No earlier scan of this patient to compare with.</p>"]
    out = [
        "<h2>Tracking</h2>",
        f"<p>Compared with scan <strong>{_e(t.previous_scan_id)}</strong>; changed: "
        f"{_e(', '.join(t.changed_views) or 'no view')}.</p>",
    ]
    for c in t.views:
        name = c.view.replace("_", " ")
        out.append(f'<h3>{_e(name)}: {_e(_change_text(c))}</h3><div class="view">')
        out.append(_figure(c.previous_frame, f"{name} view, previous scan", "previous scan"))
        out.append(_figure(c.current_frame, f"{name} view, this scan", "this scan"))
        if c.change_map:
            out.append(
                _figure(
                    c.change_map,
                    f"{name} view, change map of this scan against the "
                    "previous one: changed areas highlighted",
                    "change map",
                )  # fmt: skip
            )
        out.append("</div>")
    return out


def _trend(m: Manifest) -> list[str]:
    if m.trend is None:
        return []
    rows = "".join(
        f"<tr><td>{_e(p.scan_id)}</td><td>{_e((p.scanned_at or p.completed_at).date())}</td>"
        f"<td>{p.usable_fraction:.0%}</td><td>{p.time_coverage:.0%}</td><td>{p.views}</td>"
        f"<td>{'' if p.changed_views is None else p.changed_views}</td></tr>"
        for p in m.trend.scans
    )
    return [
        "<h2>Trend</h2>",
        _img(
            m.trend.plot_uri,
            "trend of usable frames, time coverage and views seen across the patient's scans",
            "wide",
        ),  # fmt: skip
        '<table><thead><tr><th scope="col">scan</th><th scope="col">scanned</th>'
        '<th scope="col">usable</th><th scope="col">coverage</th><th scope="col">views</th>'
        f'<th scope="col">changed views</th></tr></thead><tbody>{rows}</tbody></table>',
    ]


def _keyframe_views(m: Manifest) -> dict[int, str]:
    """Each kept frame's view as views.json has it (confident, a standard view), by index."""
    if not m.artifacts.views:
        return {}
    try:
        doc = json.loads(store_for(m.artifacts.views).get_bytes(m.artifacts.views))
    except ScanError:
        return {}
    cols = doc["columns"]
    rows = [dict(zip(cols, row, strict=True)) for row in doc["rows"]]
    return {
        int(r["kept_index"]): str(r["view"]).replace("_", " ")
        for r in rows
        if r["view"] != "other" and float(r["confidence"]) >= MIN_VIEW_CONFIDENCE
    }


def _keyframes(m: Manifest) -> list[str]:
    views = _keyframe_views(m)
    figures = [
        _figure(
            k.uri,
            f"keyframe at {k.time_s:.1f} s, {views.get(k.kept_index, 'view not recognised')}",
            f"{k.time_s:.1f} s · {views.get(k.kept_index, 'view not recognised')}",
        )  # fmt: skip
        for k in m.artifacts.keyframes
    ]
    return ["<h2>Keyframes</h2>", f'<div class="grid">{"".join(figures)}</div>']


def _video(m: Manifest) -> str:
    label = f"summary video of the scan, {m.artifacts.summary_video_seconds:.0f} s"
    try:
        src = data_uri(m.artifacts.summary_video)
    except ScanError:
        return f"<p>({_e(label)}: not available)</p>"
    return (
        f'<video controls playsinline preload="metadata" src="{src}" aria-label="{_e(label)}">'
        "Your browser cannot play this video.</video>"
    )


def scan_report(m: Manifest) -> str:
    """The scan's report.html (reads the pictures and the video it embeds)."""
    scanned = m.scanned.strftime("%Y-%m-%d %H:%M UTC")
    views = [
        _figure(
            v.uri,
            f"{v.view.replace('_', ' ')} view at {v.time_s:.1f} s",
            f"{v.view.replace('_', ' ')}, {v.time_s:.1f} s",
        )  # fmt: skip
        for v in m.view_frames
    ]
    body = [
        f"<h1>Scan {_e(m.scan_id)}</h1>",
        f"<p>Patient {_e(m.patient_id)} · scanned {_e(scanned)} · model {_e(m.model.name)} "
        f"{_e(m.model.version)} · code {_e(m.code_version)}</p>",
        *_quality(m),
        "<h2>Summary video</h2>",
        _video(m),
        "<h2>Best frame of each view</h2>",
        f'<div class="grid">{"".join(views) or "<p>No view was recognised.</p>"}</div>',
        *_keyframes(m),
        *_tracking(m),
        *_trend(m),
    ]
    return _page(f"Scan {m.scan_id}", body)


def report_uri(scan_uri: str) -> str:
    return join(scan_uri, REPORT_NAME)


def patient_report(patient_id: str, scans: list[Manifest]) -> str:
    """One page across a patient's completed scans (oldest first): each scan's verdict and
    figures with a link to its own report, and the latest trend."""
    rows = "".join(
        f'<tr><td><a href="{_e(m.scan_id)}/{REPORT_NAME}">{_e(m.scan_id)}</a></td>'
        f"<td>{_e(m.scanned.date())}</td>"
        f"<td>{'usable' if m.quality.usable else 're-scan'}</td>"
        f"<td>{m.quality.usable_fraction:.0%}</td><td>{len(m.view_frames)}</td>"
        f"<td>{_e(', '.join(m.tracking.changed_views) if m.tracking else '')}</td></tr>"
        for m in scans
    )
    body = [
        f"<h1>Patient {_e(patient_id)}</h1>",
        f"<p>{len(scans)} completed scans.</p>",
        "<h2>Scans</h2>",
        '<table><thead><tr><th scope="col">scan</th><th scope="col">scanned</th>'
        '<th scope="col">verdict</th><th scope="col">usable</th><th scope="col">views</th>'
        f'<th scope="col">changed views</th></tr></thead><tbody>{rows}</tbody></table>',
    ]
    if scans:
        body += _trend(scans[-1])
        body.append('<h2>Contact sheets</h2><div class="grid">')
        body += [
            _figure(
                m.artifacts.contact_sheet,
                f"contact sheet of scan {m.scan_id}",
                f"{m.scan_id}, {m.scanned.date()}",
            )  # fmt: skip
            for m in scans
        ]
        body.append("</div>")
    return _page(f"Patient {patient_id}", body)
