"""download_scan: bring the uploaded video to local disk."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from prefect import get_run_logger, task
from pydantic import BaseModel

from cv.errors import Reason, RejectedScan
from tasks.retry import retry_transient
from tasks.storage import store_for


class DownloadedScan(BaseModel):
    source_uri: str
    local_path: str
    size_bytes: int


@task(
    name="download-scan", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient
)
def download_scan(video_uri: str, work_dir: str, max_bytes: int) -> DownloadedScan:
    """Fetch the scan video (no copy for file://), refusing it before download if too large."""
    store = store_for(video_uri)
    size = store.size(video_uri)
    if size > max_bytes:
        raise RejectedScan(
            Reason.TOO_LARGE,
            f"the upload is {size / 1e6:.0f} MB; the limit is {max_bytes / 1e6:.0f} MB.",
        )
    name = PurePosixPath(urlparse(video_uri).path).name or "scan.mp4"
    local = store.download(video_uri, Path(work_dir) / "input" / name)
    get_run_logger().info("scan video ready: %d bytes", size)
    return DownloadedScan(source_uri=video_uri, local_path=str(local), size_bytes=size)
