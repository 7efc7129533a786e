"""process-scan end to end against a real Prefect server (SQLite), results on disk."""

from __future__ import annotations

import json
from pathlib import Path

import av
import jsonschema
import pytest
from prefect.client.orchestration import get_client

from cv.images import decode_jpeg
from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from flows.process_scan import process_scan
from scanflow.contracts.manifest import Manifest
from scanflow.settings import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]
SCHEMA = json.loads((REPO_ROOT / "schemas" / "manifest.schema.json").read_text())


def _path(uri: str) -> Path:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


def _check_summary_video(uri: str, expected_frames: int) -> None:
    with av.open(str(_path(uri))) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert sum(1 for _ in c.decode(s)) == expected_frames


async def _read_run(run_id: str):
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        artifacts = await client.read_artifacts()
    return run, [a for a in artifacts if a.flow_run_id == run.id]


def test_a_scan_runs_end_to_end(good_scan: SyntheticScan, results_dir: Path) -> None:
    manifest_uri = process_scan("scan-a", "patient-1", good_scan.path.as_uri())
    path = _path(manifest_uri)
    assert path == results_dir / "patient-1" / "scan-a" / "manifest.json"
    raw = json.loads(path.read_text())
    jsonschema.validate(raw, SCHEMA)
    m = Manifest.model_validate(raw)
    assert (m.scan_id, m.patient_id, m.status) == ("scan-a", "patient-1", "completed")
    assert m.video.width == 320 and m.video.fps == pytest.approx(15)
    assert m.quality.usable and m.quality.frames_decoded == 90
    assert m.model.name == "view-classifier" and len(m.model.sha256) == 64
    assert set(m.timings_s) == {
        "load_model",
        "download_scan",
        "extract_frames",
        "run_inference",
        "inference_while_decoding",  # the model ran on kept frames as they were decoded
        "render_summary",
        "compute_tracking",
    }
    views = json.loads(_path(m.artifacts.views).read_text())
    assert len(views["rows"]) == 12  # one prediction per kept frame, in order
    assert [r[1] for r in views["rows"]] == sorted(r[1] for r in views["rows"])
    assert m.code_version.startswith("0.1.0")
    assert m.tracking is None  # first scan of this patient
    # every artifact exists and is valid
    seg = json.loads(_path(m.artifacts.frame_quality).read_text())
    assert len(seg["rows"]) == 90
    assert decode_jpeg(_path(m.artifacts.contact_sheet).read_bytes()).ndim == 3
    assert len(m.artifacts.keyframes) == 12
    for k in m.artifacts.keyframes:
        assert decode_jpeg(_path(k.uri).read_bytes()).shape == (240, 320, 3)
    assert m.artifacts.summary_video_frames == 12 * 5  # 12 kept frames, 0.5 s each at 10 fps
    _check_summary_video(m.artifacts.summary_video, m.artifacts.summary_video_frames)
    # the run in the UI: named after the scan, with a markdown summary
    import asyncio

    run, artifacts = asyncio.run(_read_run(m.flow_run_id or ""))
    assert run.name == "scan-a"
    assert any(a.type == "markdown" and "usable frames" in (a.data or "") for a in artifacts)


def test_inference_after_decoding_agrees_with_inference_while_decoding(
    good_scan: SyntheticScan, tmp_path: Path
) -> None:
    """Frames extracted without the model (no predictions made while decoding) are
    classified by run_inference from the stored JPEGs, with the same views."""
    from prefect import flow

    from scanflow.contracts.options import ScanOptions
    from scanflow.settings import Settings
    from tasks.frames import extract_frames
    from tasks.inference import load_model, load_views, run_inference

    @flow
    def both() -> tuple[list[str], list[str], bool]:
        settings, options = Settings(), ScanOptions()
        model = load_model(options.model, options.device, str(settings.models_dir))
        views = []
        for i, with_model in enumerate((True, False)):
            root = tmp_path / f"r{i}"
            frames = extract_frames(
                str(good_scan.path),
                root.as_uri(),
                str(tmp_path / f"w{i}"),
                options,
                model if with_model else None,
                str(settings.models_dir),
            )
            assert (frames.inference is not None) is with_model
            done = run_inference(frames, root.as_uri(), model, 4, str(settings.models_dir))
            views.append([row["view"] for row in load_views(done.views_uri)[1]])
        return views[0], views[1], True

    during, after, _ = both()
    assert len(during) == len(after) == 12
    # the same frames, once as decoded pixels and once through JPEG: nearly all agree
    assert sum(a == b for a, b in zip(during, after, strict=True)) >= 10


def test_a_later_scan_is_tracked_against_the_earlier_one(
    good_scan: SyntheticScan, later_scan: SyntheticScan, results_dir: Path
) -> None:
    first = Manifest.model_validate_json(
        _path(process_scan("first", "patient-2", good_scan.path.as_uri())).read_text()
    )
    assert first.tracking is None and first.view_frames
    assert first.trend is not None and len(first.trend.scans) == 1
    m = Manifest.model_validate_json(
        _path(process_scan("second", "patient-2", later_scan.path.as_uri())).read_text()
    )
    assert m.tracking is not None
    assert m.tracking.previous_scan_id == "first"
    compared = [v for v in m.tracking.views if v.status == "compared"]
    assert compared, m.tracking.views
    for v in compared:
        assert v.change_map and decode_jpeg(_path(v.change_map).read_bytes()).ndim == 3
    assert m.artifacts.tracking and _path(m.artifacts.tracking).is_file()
    assert m.trend and [p.scan_id for p in m.trend.scans] == ["first", "second"]
    assert _path(m.trend.plot_uri).read_bytes()[:4] == b"\x89PNG"
    # a third scan, pinned to the first one, tracks against it rather than the latest
    m3 = Manifest.model_validate_json(
        _path(
            process_scan(
                "third", "patient-2", later_scan.path.as_uri(), previous_scan_ids=["first"]
            )
        ).read_text()
    )
    assert m3.tracking is not None and m3.tracking.previous_scan_id == "first"


def test_concurrent_scans_of_one_patient_keep_a_sound_history(
    good_scan: SyntheticScan, later_scan: SyntheticScan, results_dir: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(process_scan, f"c-{i}", "patient-3", scan.path.as_uri())
            for i, scan in enumerate((good_scan, later_scan))
        ]
        uris = [f.result() for f in futures]
    assert all(_path(u).is_file() for u in uris)
    m = Manifest.model_validate_json(
        _path(process_scan("c-after", "patient-3", later_scan.path.as_uri())).read_text()
    )
    assert m.trend is not None
    assert sorted(p.scan_id for p in m.trend.scans[:2]) == ["c-0", "c-1"]
    assert m.trend.scans[-1].scan_id == "c-after"
    assert m.tracking is not None and m.tracking.previous_scan_id in {"c-0", "c-1"}


def test_a_scan_processed_again_keeps_its_previous_result_and_gets_it_back_on_failure(
    good_scan: SyntheticScan, results_dir: Path, tmp_path: Path
) -> None:
    scan = results_dir / "pt-again" / "again-1"
    first = process_scan("again-1", "pt-again", good_scan.path.as_uri(), return_state=True)
    assert first.is_completed(), first.message
    one = Manifest.model_validate_json((scan / "manifest.json").read_text())
    assert one.scanned_at == one.started_at and one.previous_versions == []

    second = process_scan("again-1", "pt-again", good_scan.path.as_uri(), return_state=True)
    assert second.is_completed(), second.message
    two = Manifest.model_validate_json((scan / "manifest.json").read_text())
    assert two.scanned_at == one.scanned_at and two.started_at > one.started_at
    [kept] = two.previous_versions
    archived = Manifest.model_validate_json(_path(kept).read_text())
    assert archived.flow_run_id == one.flow_run_id and archived.completed_at == one.completed_at
    folder = kept.rsplit("/", 1)[0]
    assert archived.artifacts.summary_video == folder + "/summary.mp4"
    assert _path(archived.artifacts.summary_video).is_file()
    assert "archive_previous" in two.timings_s and "archive_previous" not in one.timings_s

    # processed again from an upload that is gone: it fails before touching the scan
    gone = (tmp_path / "deleted.mp4").as_uri()
    third = process_scan("again-1", "pt-again", gone, return_state=True)
    assert third.is_failed() and "[not_found]" in str(third.message)
    assert len(list((scan / "versions").iterdir())) == 1
    # ... and from a dark one: rejected after its frames were written over the scan's; the
    # previous result is put back
    frames = {p.name: p.read_bytes() for p in (scan / "frames").iterdir()}
    dark = render_scan(
        tmp_path / "dark.mp4", ScanSpec(duration_s=6.0, fps=15.0, seed=1, dark=frozenset(range(90)))
    )
    fourth = process_scan("again-1", "pt-again", dark.path.as_uri(), return_state=True)
    assert fourth.is_failed() and fourth.name == "Rejected", fourth.message
    assert Manifest.model_validate_json((scan / "manifest.json").read_text()) == two
    after = {p.name: p.read_bytes() for p in (scan / "frames").iterdir()}
    overwritten = {n for n in frames if n in after}
    assert overwritten and {n: after[n] for n in frames} == frames  # every one put back
    # (frames it added stay, named by no manifest: the scan roles may not delete objects)
    assert len(list((scan / "versions").iterdir())) == 2  # it archived two first
