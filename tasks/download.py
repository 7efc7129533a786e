"""download_scan: bring the uploaded video to local disk."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from prefect import get_run_logger, task

from cv.errors import Reason, RejectedScan
from scanflow.access import check_input_uri, local_name, parse_root
from scanflow.contracts.stages import DownloadedScan
from scanflow.retry import retry_transient
from scanflow.storage import FileStore, store_for


@task(
    name="download-scan", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient
)
def download_scan(
    video_uri: str,
    work_dir: str,
    max_bytes: int,
    *,
    scan_id: str,
    patient_id: str,
    input_roots: list[str],
) -> DownloadedScan:
    """Check the URI against the allowed roots, then fetch the video (refused if too large)."""
    roots = [parse_root(r) for r in input_roots]
    check_input_uri(video_uri, patient_id, roots)
    source: Path | None = None
    if urlsplit(video_uri).scheme == "file":
        source = FileStore.path(video_uri).resolve()  # a link must not lead out of a root
        check_input_uri(source.as_uri(), patient_id, roots)
    store = store_for(video_uri)
    size = store.size(video_uri)
    if size > max_bytes:
        raise RejectedScan(
            Reason.TOO_LARGE,
            f"the upload is {size / 1e6:.0f} MB; the limit is {max_bytes / 1e6:.0f} MB.",
        )
    # Stages name the local file in messages and logs: it is named after the scan, never
    # after the upload (whose name may carry a person's name).
    local = Path(work_dir) / "input" / local_name(video_uri, scan_id)
    fetched = store.download(video_uri, local)
    if source is not None and fetched != local:  # file:// is read in place, through a link
        local.parent.mkdir(parents=True, exist_ok=True)
        local.unlink(missing_ok=True)
        os.symlink(source, local)
    get_run_logger().info("scan video ready: %d bytes", size)
    return DownloadedScan(source_uri=video_uri, local_path=str(local), size_bytes=size)
