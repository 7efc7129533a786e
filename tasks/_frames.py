"""extract_frames' helpers: the publisher of kept frames, with its back-pressure, and the
hand-off of the run's model (loaded, or still loading) to the classifier that runs beside
the decoder."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from prefect.futures import PrefectFuture

from cv.images import encode_jpeg
from cv.model.streaming import StreamingClassifier
from cv.quality.analysis import FrameQuality
from cv.video.frames import SampledFrame, VideoInfo
from scanflow.contracts.options import ScanOptions
from scanflow.contracts.stages import ModelInfo
from scanflow.memory import trim_heap
from scanflow.models.cache import classifier_for, cpu_threads
from scanflow.storage import Store, join

if TYPE_CHECKING:
    from cv.model.heads import Classifier

IN_FLIGHT = 8  # kept frames being encoded/uploaded at once: bounds memory
STREAM_BATCH = 4  # kept frames a batch of the model while decoding
TRIM_EVERY = 16  # kept frames between returns of free heap pages (scanflow.memory)
# Kept frames that may wait for the model while it loads (~1.5 s: torch's import and the
# weights), by their pixels: 48 MiB is 72 frames at 640x360, ~9 s of a 1080p video's
# decoding at 2 frames kept a second.
BACKLOG_BYTES = 48 * 2**20


@dataclass(frozen=True)
class Sampled:
    """A kept frame once published: its figures and where its JPEG is."""

    quality: FrameQuality
    local_path: str
    uri: str


def model_info(model: ModelInfo | PrefectFuture[ModelInfo]) -> ModelInfo:
    """The run's model, waiting for load_model when it is still loading."""
    return model if isinstance(model, ModelInfo) else model.result()


@dataclass(frozen=True)
class ModelHandOff:
    """The classifier that runs beside the decoder, and how many kept frames may wait for
    it while the model loads."""

    classifier: StreamingClassifier
    threads: int
    backlog: int


def hand_off_model(
    model: ModelInfo | PrefectFuture[ModelInfo],
    info: VideoInfo,
    options: ScanOptions,
    work_dir: Path,
    model_cache_dir: str | None,
) -> ModelHandOff:
    """A streaming classifier fed with the run's model once load_model has it."""

    def load() -> Classifier:
        return classifier_for(model_info(model), model_cache_dir or ".")

    # the decoder keeps most cores busy; the model takes what is left (on a GPU, torch's
    # CPU threads are all but idle)
    threads = max(1, cpu_threads() // 2)
    side = max(info.width, info.height)
    scale = min(1.0, options.max_side / side) if side else 1.0
    frame_bytes = max(1, int(info.width * scale) * int(info.height * scale) * 3)
    # while the model loads, kept frames wait to be stored as well as classified
    backlog = max(IN_FLIGHT, min(256, BACKLOG_BYTES // frame_bytes))
    # small batches: the model's activations are the largest transient allocation of the
    # stage, and throughput on CPU is the same from 8 frames a batch
    classifier = StreamingClassifier(
        load,
        min(options.batch_size, STREAM_BATCH),
        threads,
        backlog=backlog,
        after_batch=trim_heap,
        spill=work_dir / "embeddings.f32",
    )
    return ModelHandOff(classifier, threads, backlog)


class FramePublisher:
    """Stores kept frames as JPEG on two threads (and hands them to the classifier) while
    decoding goes on, holding at most a few in flight: the decoder waits when stores fall
    behind, so memory does not grow with the scan. While the model loads, more may wait
    (``backlog``): nothing is stored before the model has loaded, so a model that fails to
    load publishes nothing."""

    def __init__(
        self,
        store: Store,
        scan_uri: str,
        frames_dir: Path,
        classify: StreamingClassifier | None = None,
        backlog: int = IN_FLIGHT,
    ) -> None:
        self.store = store
        self.scan_uri = scan_uri
        self.frames_dir = frames_dir
        self.classify = classify
        self.backlog = backlog
        self.sampled: list[Sampled] = []  # not the pixels: memory stays flat
        self._pending: list[Future[str]] = []
        self._stack = ExitStack()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> FramePublisher:
        # JPEG encoding, upload and the model release the GIL: they overlap decoding
        self._pool = self._stack.enter_context(
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="frames")
        )
        if self.classify is not None:
            self._stack.enter_context(self.classify)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.__exit__(kind, exc, tb)

    def on_frame(self, frame: SampledFrame) -> None:
        """Called by the decoder for each kept frame."""
        assert self._pool is not None, "use FramePublisher as a context manager"
        name = f"{frame.quality.index:06d}.jpg"
        local, uri = self.frames_dir / name, join(self.scan_uri, "frames", name)
        self.sampled.append(Sampled(frame.quality, str(local), uri))
        self._pending.append(self._pool.submit(self._publish, local, uri, frame))
        if self.classify is not None:
            self.classify.push(frame.rgb)
        if len(self.sampled) % TRIM_EVERY == 0:
            trim_heap()
        self._settle()
        # the backlog only while the model loads: afterwards a long scan would keep it
        # full, and peak above a short one
        loading = self.classify is not None and self.classify.model is None
        while len(self._pending) >= (self.backlog if loading else IN_FLIGHT):
            self._pending[0].result()
            self._settle()

    def finish(self) -> list[Sampled]:
        """Wait for every store; raises the first that failed."""
        for f in self._pending:
            f.result()
        self._pending.clear()
        return self.sampled

    def _publish(self, local: Path, uri: str, frame: SampledFrame) -> str:
        if self.classify is not None:
            self.classify.wait_loaded()  # a bad model fails the run before anything is stored
        data = encode_jpeg(frame.rgb)
        local.write_bytes(data)
        return self.store.put_bytes(uri, data, "image/jpeg")

    def _settle(self) -> None:
        """Drop the stores that are done, raising the first that failed: the list stays as
        short as the frames in flight, not as long as the scan."""
        still = []
        for f in self._pending:
            if f.done():
                f.result()
            else:
                still.append(f)
        self._pending[:] = still
