"""A rejected scan is an answer, not a crash: one log line, no traceback.

When a task raises :class:`~cv.errors.RejectedScan`, Prefect's task engine logs "Task run
failed with exception ..." with the traceback (to the console and to the run's logs on the
server). For a rejection that is noise: the flow logs the reason code, the message and the
patient's guidance on one line and ends the run in a ``Rejected`` state
(``flows/process_scan.py``). :func:`quiet_rejections` installs a filter on Prefect's run
loggers that drops the records carrying a rejection's traceback; every other record, and
every other exception's traceback, passes.
"""

from __future__ import annotations

import logging

from cv.errors import RejectedScan

RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


def carries_rejection(record: logging.LogRecord) -> bool:
    """Does the record carry a RejectedScan (its exception, or one in its chain)?"""
    exc = record.exc_info[1] if record.exc_info else None
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, RejectedScan):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class DropRejectionTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not carries_rejection(record)


def quiet_rejections() -> None:
    """Install the filter on Prefect's run loggers (once per process)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropRejectionTracebacks) for f in logger.filters):
            logger.addFilter(DropRejectionTracebacks())


def rejection_line(scan_id: str, exc: RejectedScan) -> str:
    """The one line a rejection logs: the reason code, the message, the patient's guidance."""
    line = f"scan {scan_id} rejected [{exc.reason.value}]: {exc.message}"
    if exc.guidance and exc.guidance not in exc.message:
        line += f" Guidance for the patient: {exc.guidance}"
    return line
