"""process-scan: one scan video in, a manifest of insights for the doctor out.

load_model ∥ (download_scan → [archive_previous] → extract_frames) → run_inference →
render_summary → compute_tracking → publish_manifest. A scan processed again (a backfill, a
re-run) first archives its previous result (tasks/versions.py) and restores it if this run
fails. Decoding is the floor, so it starts at once: the
model loads beside it (load_model is submitted; importing torch and loading the weights take
~1.5 s on 2 cores), extract_frames runs the model on each kept frame as soon as it is
loaded, and run_inference stores and summarises what it found. A bad model fails the run
with model_error before any frame is classified and before anything is published; no module
this flow imports pulls in torch, so the process reaches the decoder without it. The flow
only composes; the work is in tasks/ and cv/.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.context import TagsContext
from prefect.futures import PrefectFuture
from prefect.states import Failed
from prefect.utilities.annotations import quote
from pydantic import Field

from cv.errors import RejectedScan, ScanError
from scanflow.contracts.events import REJECTED_STATE
from scanflow.contracts.manifest import Manifest
from scanflow.contracts.options import ID_PATTERN, ScanOptions
from scanflow.contracts.stages import ModelInfo
from scanflow.notify.hooks import send_outcome
from scanflow.rejections import quiet_rejections, rejection_line
from scanflow.settings import Settings
from scanflow.storage import join
from tasks._progress import set_stage, start_progress
from tasks.download import download_scan
from tasks.frames import extract_frames
from tasks.inference import load_model, run_inference
from tasks.manifest import artifact_key, publish_manifest, rejection_pictures
from tasks.summary import render_summary
from tasks.tracking import compute_tracking
from tasks.versions import PreviousResult, archive_previous, restore_previous

ScanId = Annotated[str, Field(pattern=ID_PATTERN, description="The scan's id.")]
PatientId = Annotated[str, Field(pattern=ID_PATTERN, description="Pseudonymous patient id.")]

quiet_rejections()  # a rejection's traceback is not logged by Prefect's engines


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 4)


@contextmanager
def _untagged_tasks() -> Iterator[None]:
    """Run the block's tasks without the flow run's tags.

    Before a task that has tags, Prefect asks the server for tag concurrency slots and
    gives them back after it: two database writes a task. scanflow bounds concurrency by
    work pool and deployment, not by tag; on the embedded SQLite server those writes also
    collide with the previous task's state writes (a 503, retried 2 s later: measured
    after every task longer than ~10 s). The flow run keeps its tags.
    """
    with TagsContext(current_tags=set()):
        yield


@flow(
    name="process-scan",
    flow_run_name="{scan_id}",
    persist_result=False,
    on_completion=[send_outcome],
    on_failure=[send_outcome],
    on_crashed=[send_outcome],
    on_cancellation=[send_outcome],
)
def process_scan(
    scan_id: ScanId,
    patient_id: PatientId,
    video_uri: str,
    previous_scan_ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = None,
    options: ScanOptions | None = None,
) -> str | State[Any]:
    """Process one scan; returns the manifest's URI, or a Failed state named ``Rejected``
    (message ``[reason] ...``) when the patient should re-scan. Never retried: the same
    upload is refused the same way."""
    options = options or ScanOptions()
    settings = Settings()
    started = datetime.now(UTC)
    scan_uri = join(settings.results_root, patient_id, scan_id)
    work = settings.scratch_dir / f"{scan_id}-{int(time.time() * 1000)}"
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    previous: PreviousResult | None = None
    progress = start_progress(scan_id)
    with _untagged_tasks():
        try:
            loading = _load_model_beside(options, str(settings.models_dir), timings)
            with _timed(timings, "download_scan"):
                video = download_scan(
                    video_uri,
                    str(work),
                    options.limits.max_bytes,
                    scan_id=scan_id,
                    patient_id=patient_id,
                    input_roots=settings.allowed_input_roots,
                )
            previous = _archive_previous(scan_uri, timings)
            set_stage(progress, "decode")
            with _timed(timings, "extract_frames"):
                frames = extract_frames(
                    video.local_path,
                    scan_uri,
                    str(work),
                    options,
                    # quoted, Prefect passes the future on instead of waiting for it
                    cast("PrefectFuture[ModelInfo]", quote(loading)),
                    str(settings.models_dir),
                    progress,
                )
            model = loading.result()  # raises the load's model_error, if extract_frames did not
            if frames.inference is not None:  # the model ran while decoding: part of the above
                timings["inference_while_decoding"] = frames.inference.seconds
            set_stage(progress, "inference")
            with _timed(timings, "run_inference"):
                inference = run_inference(
                    frames,
                    scan_uri,
                    model,
                    options.batch_size,
                    str(settings.models_dir),
                    settings.cpu_threads,
                )
            set_stage(progress, "summary")
            with _timed(timings, "render_summary"):
                summary = render_summary(frames, inference, scan_uri, str(work), options)
            set_stage(progress, "tracking")
            with _timed(timings, "compute_tracking"):
                tracking = compute_tracking(
                    patient_id,
                    scan_id,
                    settings.results_root,
                    scan_uri,
                    previous_scan_ids,
                    frames,
                    inference,
                    scanned_at=previous.scanned_at if previous else started,
                )
            manifest = Manifest.from_stages(
                scan_id=scan_id,
                patient_id=patient_id,
                flow_run_id=str(runtime.flow_run.id) if runtime.flow_run.id else None,
                code_version=settings.resolved_code_version(),
                started_at=started,
                scanned_at=previous.scanned_at if previous else started,
                previous_versions=previous.previous_versions if previous else [],
                source_uri=video_uri,
                timings=timings,
                frames=frames,
                inference=inference,
                summary=summary,
                tracking=tracking,
            )
            set_stage(progress, "manifest")
            published = publish_manifest(manifest, scan_uri)
            set_stage(progress, "done")
            return published
        except RejectedScan as exc:
            _report_failure(scan_id, exc, scan_uri, previous)
            return Failed(name=REJECTED_STATE, message=str(exc), data=exc)
        except ScanError as exc:
            _report_failure(scan_id, exc, scan_uri, previous)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _load_model_beside(
    options: ScanOptions, cache_dir: str, timings: dict[str, float]
) -> PrefectFuture[ModelInfo]:
    """Submit load_model to the flow's thread pool; its time goes in ``timings`` when done."""
    start = time.perf_counter()
    loading = load_model.submit(options.model, options.device, cache_dir)
    loading.add_done_callback(
        lambda _: timings.__setitem__("load_model", round(time.perf_counter() - start, 4))
    )
    return loading


def _archive_previous(scan_uri: str, timings: dict[str, float]) -> PreviousResult | None:
    start = time.perf_counter()
    previous = archive_previous(scan_uri)
    if previous is not None:  # only a scan processed again pays for it
        timings["archive_previous"] = round(time.perf_counter() - start, 4)
        get_run_logger().info(
            "processed before (model %s, code %s): that result is kept in %s",
            previous.model_sha256[:12],
            previous.code_version,
            previous.version_uri,
        )
    return previous


def _report_failure(
    scan_id: str, exc: ScanError, scan_uri: str, previous: PreviousResult | None
) -> None:
    """One log line (the rejection's carries the guidance), the run's summary artifact, and
    the previous result put back when this was a re-processing."""
    pictures = rejection_pictures(scan_uri) if isinstance(exc, RejectedScan) else []
    if previous is not None:
        restore_previous(scan_uri, previous)
    if isinstance(exc, RejectedScan):
        get_run_logger().warning(rejection_line(scan_id, exc))
        verdict = "rejected: the patient should re-scan"
    else:
        get_run_logger().error("scan %s failed: %s", scan_id, exc)
        verdict = "failed"
    lines = [
        f"## Scan `{scan_id}`: {verdict}",
        "",
        f"- reason: `{exc.reason.value}` (cause: {exc.reason.cause.value})",
        f"- {exc.message}",
    ]
    if exc.guidance:
        lines.append(f"- guidance for the patient: {exc.guidance}")
    lines += pictures
    create_markdown_artifact(
        key=artifact_key(scan_id), markdown="\n".join(lines), description=f"scan {scan_id}"
    )
