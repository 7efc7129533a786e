"""compute_tracking and the patient's history (tasks/tracking.py), in a file:// results store.

Scans are the synthetic ones with known truth: ``good_scan`` is the patient's first scan,
``later_scan`` the same mouth scanned again, unchanged, and a third rendered here with two
front teeth moved (cv.synthetic.later_scan). Each goes through the real extract_frames; its
views.json is written in run_inference's format from the truth (each kept frame's true
view), so which views exist is known without a model. The first scan's manifest is
assembled by Manifest.from_stages and written where the flow writes it. The tasks are called
directly with their run logger disabled; registration is real (OpenCV).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from prefect.logging import disable_run_logger

from cv.images import decode_jpeg, encode_jpeg
from cv.synthetic import VIEWS, ScanSpec, SyntheticScan, later_scan, render_scan
from cv.tracking.registration import Registration, register
from scanflow.contracts.manifest import Manifest, manifest_uri
from scanflow.contracts.options import ScanOptions
from scanflow.contracts.stages import (
    FramesResult,
    InferenceResult,
    ModelInfo,
    SummaryResult,
    TrackingResult,
    ViewChange,
    ViewCoverage,
    ViewFrame,
)
from scanflow.storage import FileStore, join
from tasks.frames import extract_frames, load_frame
from tasks.tracking import compare_view, completed_scans, compute_tracking, frame_loader
from tests.support.manifests import sample_manifest

PATIENT = "pt-1"
LABELS = [*VIEWS, "other"]
COLUMNS = ["kept_index", "frame_index", "time_s", "usable", "view", "confidence"]
Stage = tuple[FramesResult, InferenceResult]


def _stages(scan: SyntheticScan, root: Path, scan_id: str, work: Path) -> Stage:
    """extract_frames' result, and an InferenceResult whose views.json holds the truth."""
    scan_uri = join(root.as_uri(), PATIENT, scan_id)
    with disable_run_logger():
        frames = extract_frames.fn(str(scan.path), scan_uri, str(work / scan_id), ScanOptions())
    rows = [
        [i, k.index, round(k.time_s, 4), k.usable, scan.frames[k.index].view, 0.9]
        for i, k in enumerate(frames.kept)
    ]
    views = FileStore.path(join(scan_uri, "views.json"))
    views.write_text(json.dumps({"labels": LABELS, "columns": COLUMNS, "rows": rows}))
    inference = InferenceResult(
        embeddings_uri=join(scan_uri, "embeddings.npy"),
        views_uri=views.as_uri(),
        model=ModelInfo(name="truth", version="0", sha256="0" * 64, device="cpu"),
        views=ViewCoverage(
            frames={}, uncertain=0, usable=0, missing=[], min_confidence=0.5, min_frames=1
        ),
        frames=len(rows),
        frames_per_second=1.0,
    )
    return frames, inference


def _track(
    root: Path, scan_id: str, stage: Stage, previous_scan_ids: list[str] | None = None
) -> TrackingResult:
    frames, inference = stage
    scan_uri = join(root.as_uri(), PATIENT, scan_id)
    with disable_run_logger():
        return compute_tracking.fn(
            PATIENT, scan_id, root.as_uri(), scan_uri, previous_scan_ids, frames, inference
        )


def _publish(
    root: Path, scan_id: str, stage: Stage, tracking: TrackingResult, at: datetime
) -> Manifest:
    """The scan's manifest, written last where the flow writes it."""
    frames, inference = stage
    scan_uri = join(root.as_uri(), PATIENT, scan_id)
    summary = SummaryResult(
        video_uri=join(scan_uri, "summary.mp4"),
        video_frames=60,
        video_seconds=6.0,
        contact_sheet_uri=join(scan_uri, "contact_sheet.jpg"),
        keyframes=[],
    )
    manifest = Manifest.from_stages(
        scan_id=scan_id,
        patient_id=PATIENT,
        flow_run_id=None,
        code_version="test",
        started_at=at - timedelta(seconds=5),
        scanned_at=at - timedelta(seconds=5),
        previous_versions=[],
        source_uri=f"file:///uploads/{scan_id}.mp4",
        timings={},
        frames=frames,
        inference=inference,
        summary=summary,
        tracking=tracking,
    ).model_copy(update={"completed_at": at})
    uri = manifest_uri(scan_uri)
    FileStore().put_bytes(uri, manifest.model_dump_json().encode())
    return manifest


@pytest.fixture(scope="module")
def moved_scan(scans_dir: Path) -> SyntheticScan:
    """The mouth of good_scan and later_scan with two front teeth moved a few pixels."""
    spec = later_scan(ScanSpec(duration_s=6.0, fps=15.0, seed=1), {2: (6.0, 0.0), 3: (0, 5.0)}, 7)
    return render_scan(scans_dir / "moved.mp4", spec)


@pytest.fixture(scope="module")
def history(
    good_scan: SyntheticScan, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Stage, TrackingResult, Manifest]:
    """A results root where the patient's first scan (good_scan) completed a day ago."""
    base = tmp_path_factory.mktemp("tracking")
    root = base / "results"
    stage = _stages(good_scan, root, "first", base / "work")
    tracking = _track(root, "first", stage)
    manifest = _publish(root, "first", stage, tracking, datetime.now(UTC) - timedelta(days=1))
    return root, stage, tracking, manifest


# -- the first scan -------------------------------------------------------------------------


def test_a_first_scan_has_nothing_to_compare_and_names_its_best_frame_of_each_view(
    history: tuple[Path, Stage, TrackingResult, Manifest], good_scan: SyntheticScan
) -> None:
    root, (frames, _), first, _ = history
    assert first.summary is None and first.uri is None
    assert not (root / PATIENT / "first" / "tracking.json").exists()
    assert [v.view for v in first.view_frames] == sorted(VIEWS)
    for v in first.view_frames:
        same_view = [k for k in frames.kept if good_scan.frames[k.index].view == v.view]
        best = max(same_view, key=lambda k: (k.usable, k.sharpness))
        assert frames.kept[v.kept_index] == best
        assert (v.uri, v.time_s, v.sharpness) == (best.uri, best.time_s, best.sharpness)
    assert [p.scan_id for p in first.trend.scans] == ["first"]
    assert first.trend.scans[0].views == len(VIEWS)
    assert first.trend.scans[0].changed_views is None
    trend = json.loads(FileStore.path(first.trend.json_uri).read_text())
    assert [p["scan_id"] for p in trend["scans"]] == ["first"]
    assert FileStore.path(first.trend.plot_uri).read_bytes()[:4] == b"\x89PNG"


def test_a_scans_own_earlier_manifest_is_not_its_history(
    history: tuple[Path, Stage, TrackingResult, Manifest],
) -> None:
    root, stage, _, _ = history
    again = _track(root, "first", stage)  # the same scan run again: not compared with itself
    assert again.summary is None and [p.scan_id for p in again.trend.scans] == ["first"]


# -- against the previous scan --------------------------------------------------------------


def test_an_unchanged_mouth_scanned_again_flags_no_view(
    history: tuple[Path, Stage, TrackingResult, Manifest],
    later_scan: SyntheticScan,
    tmp_path: Path,
) -> None:
    root, (first_frames, _), _, first = history
    stage = _stages(later_scan, root, "second", tmp_path)
    result = _track(root, "second", stage)
    summary = result.summary
    assert summary is not None and summary.previous_scan_id == "first"
    assert summary.changed_views == []
    assert [v.view for v in summary.views] == sorted(VIEWS)
    assert (summary.views_gained, summary.views_lost) == ([], [])
    compared = [v for v in summary.views if v.status == "compared"]
    assert len(compared) >= 3, summary.views
    for v in compared:
        assert v.changed is False and v.change_score == pytest.approx(0.0, abs=1e-3)
        assert v.change_map == join(root.as_uri(), PATIENT, "second", "tracking", f"{v.view}.jpg")
        assert decode_jpeg(FileStore.path(v.change_map).read_bytes()).shape == (240, 320, 3)
    for v in summary.views:
        if v.status != "compared":
            assert v.status == "untrustworthy" and v.reason and v.change_map is None
        previous = {f.view: f.uri for f in first.view_frames}[v.view]
        assert v.previous_frame == previous
    frames = stage[0]
    assert summary.quality_delta == {
        k: pytest.approx(getattr(frames.quality, k) - getattr(first_frames.quality, k))
        for k in ("usable_fraction", "time_coverage", "median_sharpness")
    }
    assert result.uri == join(root.as_uri(), PATIENT, "second", "tracking.json")
    stored = json.loads(FileStore.path(result.uri).read_text())
    assert stored == json.loads(summary.model_dump_json())
    assert [p.scan_id for p in result.trend.scans] == ["first", "second"]
    assert result.trend.scans[0].completed_at == first.completed_at
    assert result.trend.scans[1].changed_views == 0


def test_teeth_that_moved_flag_their_view_as_changed(
    history: tuple[Path, Stage, TrackingResult, Manifest],
    moved_scan: SyntheticScan,
    tmp_path: Path,
) -> None:
    root, _, _, _ = history
    result = _track(root, "moved", _stages(moved_scan, root, "moved", tmp_path))
    assert result.summary is not None and result.summary.previous_scan_id == "first"
    assert result.summary.changed_views == ["front"]  # teeth 2 and 3 are front teeth
    front = next(v for v in result.summary.views if v.view == "front")
    assert front.status == "compared" and front.changed
    assert front.change_score and front.change_score > 0.001
    assert front.displacement_px and front.displacement_px > 0.5
    assert result.trend.scans[-1].changed_views == 1


def test_views_seen_without_confidence_are_not_compared(
    history: tuple[Path, Stage, TrackingResult, Manifest],
    later_scan: SyntheticScan,
    tmp_path: Path,
) -> None:
    root, _, _, _ = history
    frames, inference = _stages(later_scan, root, "unsure", tmp_path)
    path = FileStore.path(inference.views_uri)
    doc = json.loads(path.read_text())
    for row in doc["rows"]:
        if row[4] == "front":
            row[5] = 0.49  # below MIN_VIEW_CONFIDENCE
        if row[4] == "left":
            row[4] = "other"  # "other" is not a view to compare
    path.write_text(json.dumps(doc))
    summary = _track(root, "unsure", (frames, inference)).summary
    assert summary is not None
    by_view = {v.view: v for v in summary.views}
    assert by_view["front"].status == by_view["left"].status == "missing_now"
    assert by_view["front"].current_frame is None and by_view["front"].previous_frame
    assert summary.views_lost == ["front", "left"] and summary.views_gained == []


def test_previous_scan_ids_pin_the_scan_compared_with(
    good_scan: SyntheticScan, later_scan: SyntheticScan, tmp_path: Path
) -> None:
    root = tmp_path / "results"
    now = datetime.now(UTC)
    old = _stages(good_scan, root, "old", tmp_path / "work")
    _publish(root, "old", old, _track(root, "old", old), now - timedelta(days=2))
    new = _stages(later_scan, root, "new", tmp_path / "work")
    unpinned = _track(root, "new", new, previous_scan_ids=["none"])  # (nothing to register)
    _publish(root, "new", new, unpinned, now - timedelta(days=1))
    current = _stages(later_scan, root, "current", tmp_path / "work")
    latest = _track(root, "current", current).summary
    assert latest is not None and latest.previous_scan_id == "new"
    pinned = _track(root, "current", current, previous_scan_ids=["old"])
    assert pinned.summary is not None and pinned.summary.previous_scan_id == "old"
    # the pin chooses what is compared; the trend is still every completed scan
    assert [p.scan_id for p in pinned.trend.scans] == ["old", "new", "current"]
    nothing = _track(root, "current", current, previous_scan_ids=["never-completed"])
    assert nothing.summary is None
    assert [p.scan_id for p in nothing.trend.scans] == ["old", "new", "current"]


def test_a_scan_processed_again_keeps_its_place_in_the_history(
    good_scan: SyntheticScan, later_scan: SyntheticScan, tmp_path: Path
) -> None:
    """A backfill re-processes the patient's first scan after a later one exists: it is
    compared with nothing later, and its manifest (completed now) still sorts first."""
    root = tmp_path / "results"
    now = datetime.now(UTC)
    first = _stages(good_scan, root, "first", tmp_path / "work")
    _publish(root, "first", first, _track(root, "first", first), now - timedelta(days=2))
    later = _stages(later_scan, root, "later", tmp_path / "work")
    _publish(root, "later", later, _track(root, "later", later), now - timedelta(days=1))
    scanned = completed_scans(root.as_uri(), PATIENT)[0].scanned
    frames, inference = first
    with disable_run_logger():
        again = compute_tracking.fn(
            PATIENT, "first", root.as_uri(), join(root.as_uri(), PATIENT, "first"), None,
            frames, inference, scanned_at=scanned,
        )  # fmt: skip
    assert again.summary is None  # not compared with the later scan
    assert [p.scan_id for p in again.trend.scans] == ["first"]
    redone = _publish(root, "first", first, again, now).model_copy(update={"scanned_at": scanned})
    FileStore().put_bytes(
        manifest_uri(join(root.as_uri(), PATIENT, "first")), redone.model_dump_json().encode()
    )
    assert [m.scan_id for m in completed_scans(root.as_uri(), PATIENT)] == ["first", "later"]
    newest = _track(root, "newest", later)
    assert newest.summary is not None and newest.summary.previous_scan_id == "later"
    assert [p.scan_id for p in newest.trend.scans] == ["first", "later", "newest"]


# -- completed_scans ------------------------------------------------------------------------


def _write(root: Path, manifest: Manifest) -> None:
    folder = root / manifest.patient_id / manifest.scan_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(manifest.model_dump_json())


def test_completed_scans_are_the_patients_manifests_oldest_first(tmp_path: Path) -> None:
    root = tmp_path / "results"
    now = datetime.now(UTC)
    # folder names sort the other way from completion times
    _write(root, sample_manifest("a-latest", PATIENT, now))
    _write(root, sample_manifest("b-earliest", PATIENT, now - timedelta(days=30)))
    _write(root, sample_manifest("c-middle", PATIENT, now - timedelta(days=3)))
    _write(root, sample_manifest("theirs", "pt-2", now - timedelta(days=10)))
    # a scan being processed, or one that failed half-way: frames, no manifest
    (root / PATIENT / "d-unfinished" / "frames").mkdir(parents=True)
    (root / PATIENT / "d-unfinished" / "frame_quality.json").write_text("{}")
    (root / PATIENT / "not-a-scan.txt").write_text("a stray file")
    scans = completed_scans(root.as_uri(), PATIENT)
    assert [m.scan_id for m in scans] == ["b-earliest", "c-middle", "a-latest"]
    assert all(m.patient_id == PATIENT for m in scans)


def test_a_patient_without_results_has_no_history(tmp_path: Path) -> None:
    assert completed_scans((tmp_path / "results").as_uri(), PATIENT) == []


# -- a ViewChange from a Registration -------------------------------------------------------


def test_every_registration_figure_the_manifest_declares_is_copied(
    history: tuple[Path, Stage, TrackingResult, Manifest],
    later_scan: SyntheticScan,
    tmp_path: Path,
) -> None:
    root, _, first, _ = history
    frames, _ = _stages(later_scan, root, "compare", tmp_path)
    previous = next(v for v in first.view_frames if v.view == "front")
    kept = 0  # the first kept frame shows the front, as the previous scan's best one does
    assert later_scan.frames[frames.kept[kept].index].view == "front"
    current = ViewFrame(
        view="front",
        uri=frames.kept[kept].uri,
        kept_index=kept,
        time_s=frames.kept[kept].time_s,
        sharpness=frames.kept[kept].sharpness,
    )
    scan_uri = join(root.as_uri(), PATIENT, "compare")
    change = compare_view("front", current, previous, frame_loader(frames), scan_uri)
    reg, _ = register(
        load_frame(frames.kept[kept]), decode_jpeg(FileStore.path(previous.uri).read_bytes())
    )
    declared = {f.name for f in fields(Registration)} & set(ViewChange.model_fields)
    # all but the raw match count and the flag that the status carries
    assert declared == {f.name for f in fields(Registration)} - {"matches", "trustworthy"}
    assert {k: getattr(change, k) for k in declared} == {k: asdict(reg)[k] for k in declared}
    assert change.status == ("compared" if reg.trustworthy else "untrustworthy")
    assert (change.current_frame, change.previous_frame) == (current.uri, previous.uri)


def test_an_unmeasurable_reprojection_error_is_recorded_as_null(
    history: tuple[Path, Stage, TrackingResult, Manifest], tmp_path: Path
) -> None:
    root, (frames, _), first, _ = history
    blank = tmp_path / "blank.jpg"  # a featureless frame: nothing to register
    blank.write_bytes(encode_jpeg(np.full((240, 320, 3), 128, np.uint8)))
    previous = ViewFrame(view="front", uri=blank.as_uri(), kept_index=0, time_s=0, sharpness=0)
    current = next(v for v in first.view_frames if v.view == "front")
    scan_uri = (tmp_path / "scan").as_uri()
    change = compare_view("front", current, previous, frame_loader(frames), scan_uri)
    assert change.status == "untrustworthy"
    assert change.reason and "features" in change.reason
    assert change.reprojection_px is None  # inf in the Registration; JSON has no inf
    assert json.loads(change.model_dump_json())["reprojection_px"] is None
    assert change.change_map is None and change.changed is None
    assert not (tmp_path / "scan").exists()  # no change map written


def test_a_view_one_scan_lacks_is_missing_without_registering(
    history: tuple[Path, Stage, TrackingResult, Manifest], tmp_path: Path
) -> None:
    _, (frames, _), first, _ = history
    front = next(v for v in first.view_frames if v.view == "front")
    scan_uri = (tmp_path / "scan").as_uri()
    lost = compare_view("front", None, front, frame_loader(frames), scan_uri)
    gained = compare_view("front", front, None, frame_loader(frames), scan_uri)
    assert (lost.status, lost.current_frame, lost.previous_frame) == (
        "missing_now",
        None,
        front.uri,
    )
    assert (gained.status, gained.current_frame, gained.previous_frame) == (
        "missing_before",
        front.uri,
        None,
    )
    assert lost.inliers is None and lost.change_score is None
