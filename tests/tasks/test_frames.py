"""extract_frames and its helpers (tasks/frames.py, tasks/_frames.py).

- extract_frames decodes the synthetic ``good_scan`` (known blurred, dark and glaring frames)
  into a file:// results store: the kept frames stored, frame_quality.json one row a decoded
  frame, the verdict; called directly with its run logger disabled (no server);
- FramePublisher's back-pressure and failures, against a real file store whose writes a test
  can hold back or make fail, and a real StreamingClassifier whose model is still loading;
- hand_off_model's backlog sizing, the classifier it starts failing on a missing package.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prefect.logging import disable_run_logger

from cv.errors import ProcessingError, Reason, RejectedScan
from cv.images import decode_jpeg
from cv.model.streaming import StreamingClassifier
from cv.quality.analysis import Fault, FrameQuality
from cv.synthetic import ScanSpec, SyntheticScan, render_scan
from cv.video.frames import SampledFrame, VideoInfo
from scanflow.contracts.options import ScanOptions
from scanflow.contracts.stages import FramesResult, ModelInfo
from scanflow.models.cache import cpu_threads
from scanflow.storage import FileStore
from tasks._frames import BACKLOG_BYTES, IN_FLIGHT, STREAM_BATCH, FramePublisher, hand_off_model
from tasks.frames import FRAME_QUALITY_COLUMNS, extract_frames, frame_quality_json, load_frame

WAIT_S = 10.0  # the longest any test waits for a thread


def _extract(
    scan: Path, root: Path, work: Path, options: ScanOptions | None = None
) -> FramesResult:
    with disable_run_logger():
        return extract_frames.fn(str(scan), root.as_uri(), str(work), options or ScanOptions())


@pytest.fixture(scope="module")
def extracted(
    good_scan: SyntheticScan, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FramesResult, Path]:
    """good_scan's frames, extracted once; the scan's folder in the results store."""
    base = tmp_path_factory.mktemp("frames")
    root = base / "results" / "pt-1" / "scan-1"
    return _extract(good_scan.path, root, base / "work"), root


def _rows(root: Path) -> list[list[object]]:
    doc = json.loads((root / "frame_quality.json").read_text())
    assert doc["columns"] == FRAME_QUALITY_COLUMNS
    rows: list[list[object]] = doc["rows"]
    return rows


# -- extract_frames -------------------------------------------------------------------------


def test_one_frame_is_kept_per_half_second_and_stored_as_a_jpeg_named_by_its_index(
    extracted: tuple[FramesResult, Path],
) -> None:
    frames, root = extracted
    kept = frames.kept
    # sample_fps 2 over 6 s: one kept frame in each half-second window, in order
    assert [int(k.time_s * 2) for k in kept] == list(range(12))
    assert sorted(p.name for p in (root / "frames").iterdir()) == [
        f"{k.index:06d}.jpg" for k in kept
    ]
    for k in kept:
        assert k.uri == (root / "frames" / f"{k.index:06d}.jpg").as_uri()
        stored = FileStore.path(k.uri).read_bytes()
        assert Path(k.local_path).read_bytes() == stored  # the run's copy is the stored one
        assert decode_jpeg(stored).shape == (240, 320, 3)


def test_a_kept_frame_is_usable_unless_the_scan_truth_says_it_is_defective(
    extracted: tuple[FramesResult, Path], good_scan: SyntheticScan
) -> None:
    frames, root = extracted
    truth = good_scan.frames
    assert [k.usable for k in frames.kept] == [
        not (truth[k.index].blurred or truth[k.index].dark or truth[k.index].glare)
        for k in frames.kept
    ]
    # the kept figures are the ones frame_quality.json holds for that frame
    rows = _rows(root)
    for k in frames.kept:
        row = rows[k.index]
        assert (row[0], row[1], row[2]) == (k.index, round(k.time_s, 4), round(k.sharpness, 2))
        assert (row[7] == "ok") is k.usable


def test_frame_quality_json_has_one_row_per_decoded_frame_naming_its_faults(
    extracted: tuple[FramesResult, Path], good_scan: SyntheticScan
) -> None:
    frames, root = extracted
    rows = _rows(root)
    assert frames.frame_quality_uri == (root / "frame_quality.json").as_uri()
    assert len(rows) == frames.quality.frames_decoded == len(good_scan.frames) == 90
    assert [r[0] for r in rows] == list(range(90))
    assert [r[1] for r in rows] == [round(i / 15, 4) for i in range(90)]
    for t in good_scan.frames:
        faults = str(rows[t.index][7]).split("|")
        for name, defective in (("BLURRED", t.blurred), ("DARK", t.dark), ("GLARE", t.glare)):
            if defective:
                assert name in faults, (t, faults)
    assert sum(r[7] == "ok" for r in rows) == frames.quality.usable_frames


def test_the_verdict_counts_the_scans_defects(extracted: tuple[FramesResult, Path]) -> None:
    frames, _ = extracted
    q = frames.quality
    assert q.usable and q.reason is None
    assert q.frames_decoded == 90 and q.duration_s == pytest.approx(6.0)
    assert q.blurry_fraction == pytest.approx(10 / 90)
    assert q.dark_fraction == pytest.approx(4 / 90)
    assert q.glare_fraction == pytest.approx(4 / 90)
    assert q.usable_fraction == pytest.approx(q.usable_frames / 90)
    assert q.time_coverage == pytest.approx(1.0)
    v = frames.video
    assert (v.codec, v.width, v.height, v.fps, v.duration_s) == ("h264", 320, 240, 15.0, 6.0)
    assert frames.inference is None  # no model given: nothing predicted while decoding


def test_the_video_summary_records_the_uploaded_size(
    extracted: tuple[FramesResult, Path], good_scan: SyntheticScan
) -> None:
    assert extracted[0].video.size_bytes == good_scan.path.stat().st_size


def test_a_scan_with_too_few_usable_frames_is_rejected_with_its_figures(
    good_scan: SyntheticScan, tmp_path: Path
) -> None:
    options = ScanOptions(min_usable_frames=80)  # good_scan has 71
    with pytest.raises(RejectedScan) as caught:
        _extract(good_scan.path, tmp_path / "scan", tmp_path / "work", options)
    assert caught.value.reason is Reason.TOO_FEW_USABLE_FRAMES
    assert caught.value.message.startswith("71 of 90 frames usable (79%), 6.0 s.")
    assert caught.value.guidance


def test_a_file_that_is_not_a_video_is_unreadable_and_nothing_is_stored(tmp_path: Path) -> None:
    fake = tmp_path / "scan.mp4"
    fake.write_bytes(b"this is a text file with a video's name\n" * 100)
    with pytest.raises(RejectedScan) as caught:
        _extract(fake, tmp_path / "results" / "scan", tmp_path / "work")
    assert caught.value.reason is Reason.UNREADABLE_VIDEO
    assert not (tmp_path / "results").exists()


def test_load_frame_reads_the_store_when_the_local_copy_is_gone(
    extracted: tuple[FramesResult, Path], tmp_path: Path
) -> None:
    frame = extracted[0].kept[5]
    local = load_frame(frame)
    gone = frame.model_copy(update={"local_path": str(tmp_path / "deleted.jpg")})
    assert np.array_equal(load_frame(gone), local)
    assert local.shape == (240, 320, 3)


def test_frame_quality_json_is_one_row_a_frame() -> None:
    q = [
        FrameQuality(0, 0.0, 101.234, 120.04, 0.01234, 0.00001, 0.0),
        FrameQuality(1, 1 / 30, 9.5, 20.0, 0.9, 0.0, 3.333),
    ]
    doc = json.loads(frame_quality_json(q, [Fault.NONE, Fault.DARK | Fault.BLURRED]))
    assert doc["columns"] == FRAME_QUALITY_COLUMNS
    assert doc["rows"] == [
        [0, 0.0, 101.23, 120.0, 0.0123, 0.0, 0.0, "ok"],
        [1, 0.0333, 9.5, 20.0, 0.9, 0.0, 3.33, "DARK|BLURRED"],
    ]
    assert json.loads(frame_quality_json([], [])) == {"columns": FRAME_QUALITY_COLUMNS, "rows": []}


def test_frame_quality_json_refuses_faults_that_do_not_match_the_frames() -> None:
    with pytest.raises(ValueError):
        frame_quality_json([FrameQuality(0, 0.0, 1, 1, 0, 0, 0)], [])


# -- FramePublisher -------------------------------------------------------------------------


class HeldStore(FileStore):
    """A real file store whose writes wait for ``gate`` (and fail for names in ``fail``)."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.gate = threading.Event()
        self.fail = fail
        self.lock = threading.Lock()
        self.started = 0
        self.stored = 0
        self.publisher: FramePublisher | None = None
        self.most_pending = 0  # frames handed to the publisher and not yet stored, at most

    def note_pending(self) -> None:
        if self.publisher is not None:
            with self.lock:
                pending = len(self.publisher.sampled) - self.stored
                self.most_pending = max(self.most_pending, pending)

    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> str:
        with self.lock:
            self.started += 1
        self.note_pending()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        if uri.rsplit("/", 1)[-1] in self.fail:
            raise ProcessingError(Reason.STORAGE_ERROR, f"cannot write {uri}: disk full.")
        out = super().put_bytes(uri, data, content_type)
        with self.lock:
            self.stored += 1
        return out


def _sampled(count: int) -> list[SampledFrame]:
    """Smooth 64x48 frames, each a shade of its own (JPEG keeps them within a few levels)."""
    ramp = np.linspace(0, 120, 64)[None, :, None] + np.linspace(0, 60, 48)[:, None, None]
    return [
        SampledFrame(
            FrameQuality(i, i / 2, 100.0, 128.0, 0.0, 0.0, 0.0),
            np.broadcast_to(ramp + 3 * i, (48, 64, 3)).astype(np.uint8),
        )
        for i in range(count)
    ]


def _in_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_the_decoder_waits_once_in_flight_stores_reach_the_limit(tmp_path: Path) -> None:
    store = HeldStore()
    publisher = FramePublisher(store, (tmp_path / "scan").as_uri(), tmp_path / "frames")
    store.publisher = publisher
    (tmp_path / "frames").mkdir()
    frames = _sampled(3 * IN_FLIGHT)
    errors: list[BaseException] = []

    def decode() -> None:
        try:
            for f in frames:
                publisher.on_frame(f)
                store.note_pending()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with publisher:
        decoder = _in_thread(decode)
        deadline = time.monotonic() + WAIT_S
        while len(publisher.sampled) < IN_FLIGHT and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # had it not waited, it would have handed over more by now
        held = (len(publisher.sampled), decoder.is_alive(), store.started, store.stored)
        store.gate.set()  # (before asserting: a failure must not leave threads held)
        assert held == (IN_FLIGHT, True, 2, 0)  # two store threads, both held
        decoder.join(WAIT_S)
        assert not decoder.is_alive() and not errors
        sampled = publisher.finish()
    assert store.most_pending <= IN_FLIGHT
    assert [s.quality.index for s in sampled] == list(range(len(frames)))
    assert store.stored == len(frames)
    for s, f in zip(sampled, frames, strict=True):
        stored = FileStore.path(s.uri).read_bytes()
        assert Path(s.local_path).read_bytes() == stored
        assert s.uri.endswith(f"/scan/frames/{f.quality.index:06d}.jpg")
        assert np.abs(decode_jpeg(stored).astype(int) - f.rgb).mean() < 2


def test_a_failing_store_raises_from_finish(tmp_path: Path) -> None:
    store = HeldStore(fail=frozenset({"000003.jpg"}))
    publisher = FramePublisher(store, (tmp_path / "scan").as_uri(), tmp_path / "frames")
    (tmp_path / "frames").mkdir()
    with pytest.raises(ProcessingError) as caught, publisher:
        for f in _sampled(5):  # fewer than IN_FLIGHT: on_frame never waits
            publisher.on_frame(f)
        store.gate.set()
        publisher.finish()
    assert caught.value.reason is Reason.STORAGE_ERROR
    assert "/scan/frames/000003.jpg" in caught.value.message


def test_frames_wait_in_the_backlog_while_the_model_loads_and_a_failed_load_stores_none(
    tmp_path: Path,
) -> None:
    loaded = threading.Event()

    def load() -> object:
        if not loaded.wait(WAIT_S):
            raise TimeoutError("the test never let the model load")
        raise ProcessingError(Reason.MODEL_ERROR, "model view-classifier fails its checks.")

    store = HeldStore()
    store.gate.set()  # stores are free: only the model holds them back
    backlog = 2 * IN_FLIGHT + 4
    classify = StreamingClassifier(load, 4, 1, backlog=backlog)  # type: ignore[arg-type]
    publisher = FramePublisher(
        store, (tmp_path / "scan").as_uri(), tmp_path / "frames", classify, backlog
    )
    (tmp_path / "frames").mkdir()
    frames = _sampled(backlog - 1)

    def decode() -> None:
        for f in frames:
            publisher.on_frame(f)

    with pytest.raises(ProcessingError) as caught, publisher:
        decoder = _in_thread(decode)
        decoder.join(WAIT_S / 2)
        alive = decoder.is_alive()
        loaded.set()  # (fails the load, which also frees a decoder held by mistake)
        assert not alive, "the decoder waited at IN_FLIGHT while the model loaded"
        assert len(publisher.sampled) == len(frames) > IN_FLIGHT
        assert store.started == 0  # nothing is stored before the model has loaded
        publisher.finish()
    assert caught.value.reason is Reason.MODEL_ERROR
    assert store.started == 0
    assert not list((tmp_path / "frames").iterdir()) and not (tmp_path / "scan").exists()


# -- hand_off_model -------------------------------------------------------------------------


def _info(width: int, height: int) -> VideoInfo:
    return VideoInfo(10**6, "h264", width, height, 6.0, 30.0)


def _missing_model(folder: Path) -> ModelInfo:
    """A ModelInfo whose package is not there: the classifier's load fails at once."""
    uri = (folder / "no.zip").as_uri()
    return ModelInfo(name="m", version="1", sha256="0" * 64, device="cpu", uri=uri)


@pytest.mark.parametrize(
    ("width", "height", "max_side", "backlog"),
    [
        (1920, 1080, 640, BACKLOG_BYTES // (640 * 360 * 3)),  # 72 frames of 640x360
        (1080, 1920, 640, 72),  # portrait: the same pixels
        (320, 240, 640, BACKLOG_BYTES // (320 * 240 * 3)),  # small frames are not enlarged
        (64, 48, 640, 256),  # tiny frames: capped
        (3840, 2160, 2160, IN_FLIGHT),  # huge kept frames: never fewer than IN_FLIGHT
    ],
)
def test_the_backlog_holds_48_mib_of_kept_frames_within_its_bounds(
    width: int, height: int, max_side: int, backlog: int, tmp_path: Path
) -> None:
    options = ScanOptions(max_side=max_side, batch_size=32)
    handoff = hand_off_model(
        _missing_model(tmp_path), _info(width, height), options, tmp_path, None
    )
    with handoff.classifier:
        assert handoff.backlog == backlog
        assert handoff.threads == max(1, cpu_threads() // 2)
        assert handoff.classifier.batch_size == STREAM_BATCH
        assert (tmp_path / "embeddings.f32").is_file()  # embeddings spill to the work folder
        # the model is loaded from the run's ModelInfo: a missing package fails it
        with pytest.raises(ProcessingError) as caught:
            handoff.classifier.wait_loaded()
    assert caught.value.reason is Reason.MODEL_ERROR
    assert str(tmp_path / "no.zip") in caught.value.message


def test_the_stream_batch_is_the_runs_batch_when_smaller(tmp_path: Path) -> None:
    options = ScanOptions(batch_size=2)
    handoff = hand_off_model(_missing_model(tmp_path), _info(320, 240), options, tmp_path, None)
    with handoff.classifier:
        assert handoff.classifier.batch_size == 2


def test_a_30_fps_scan_is_judged_alike_on_its_reference_frames(
    scans_dir: Path, tmp_path: Path
) -> None:
    """The default skips non-reference frames at 30 fps: fewer frames measured, the same
    verdict, the same kept windows, and frame_quality.json one row a measured frame."""
    scan = render_scan(
        scans_dir / "thirty.mp4",
        ScanSpec(duration_s=6.0, fps=30.0, seed=4, blurred=frozenset(range(40, 60))),
    )
    every = _extract(scan.path, tmp_path / "all", tmp_path / "w1", ScanOptions(decode="all"))
    part = _extract(scan.path, tmp_path / "ref", tmp_path / "w2")
    assert every.quality.frames_decoded == 180
    assert 0.3 * 180 < part.quality.frames_decoded < 0.9 * 180
    assert len(_rows(tmp_path / "ref")) == part.quality.frames_decoded
    assert part.quality.usable == every.quality.usable
    assert part.quality.blurry_fraction == pytest.approx(every.quality.blurry_fraction, abs=0.06)
    assert [int(k.time_s * 2) for k in part.kept] == [int(k.time_s * 2) for k in every.kept]
