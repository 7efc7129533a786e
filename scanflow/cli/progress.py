"""A scan's progress on the command line (``scanflow process``, ``scanflow submit --wait``),
read from its run's progress artifact (tasks/_progress.py): a Rich progress bar with the
stage and the share decoded when stderr is a terminal, else a plain line at each stage and
every 20 points. On stderr: stdout keeps the one line scripts read (the manifest's URI, the
run's id).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

POLL_S = 0.5
PLAIN_STEP = 20.0


def _latest(client: Any, key: str, since: datetime) -> tuple[float, str, Any] | None:
    found = client.read_artifacts(
        artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
        sort=ArtifactSort.CREATED_DESC,
        limit=1,
    )
    if not found or found[0].created is None or found[0].created < since:
        return None  # nothing yet, or an earlier run's
    return float(found[0].data or 0.0), str(found[0].description or ""), found[0].flow_run_id


class _Plain:
    def __init__(self, stream: TextIO) -> None:
        self.stream, self.stage, self.value = stream, "", -PLAIN_STEP

    def show(self, value: float, stage: str) -> None:
        kind = stage.split()[0] if stage else ""
        if kind != self.stage or value >= self.value + PLAIN_STEP or value >= 100:
            print(f"progress: {value:5.1f}%  {stage}", file=self.stream, flush=True)
            self.stage, self.value = kind, value


class Followed:
    """What the progress artifact said last, and whose run it is (known once it exists)."""

    value: float | None = None
    flow_run_id: Any = None


def follow(
    key: str,
    since: datetime,
    finished: Callable[[], bool],
    stream: TextIO | None = None,
    followed: Followed | None = None,
) -> Followed:
    """Show the progress artifact ``key`` (created after ``since``) until ``finished()``;
    ``followed`` (returned) holds the last value and the run's id as they are seen, for a
    caller interrupted meanwhile."""
    stream = stream or sys.stderr
    followed = followed or Followed()
    last: tuple[float, str, Any] | None = None
    with get_client(sync_client=True) as client:
        if stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            with Progress(
                TextColumn("{task.description:<16}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                console=Console(file=stream),
                transient=True,
            ) as bar:
                task = bar.add_task("starting", total=100)
                while True:
                    done = finished()
                    seen = _latest(client, key, since) or last
                    if seen:
                        followed.value, followed.flow_run_id = seen[0], seen[2]
                        bar.update(task, completed=seen[0], description=seen[1])
                        last = seen
                    if done:
                        break
                    time.sleep(POLL_S)
        else:
            plain = _Plain(stream)
            while True:
                done = finished()
                seen = _latest(client, key, since)
                if seen and seen != last:
                    followed.value, followed.flow_run_id = seen[0], seen[2]
                    plain.show(seen[0], seen[1])
                    last = seen
                if done:
                    break
                time.sleep(POLL_S)
    return followed
