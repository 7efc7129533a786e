"""The harness of the tests that run the assembled system: receivers on loopback standing in
for the platform and Slack (scanflow.local.loopback), and stacks of their own
(scanflow.local.sandbox.Sandbox) that report to them, never the session's shared stack:
these tests kill workers and flow processes, and their automations would fire on other
tests' runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from scanflow.local.loopback import Receiver
from scanflow.local.sandbox import Sandbox

SIGNING_SECRET = "whsec-test-" + uuid.uuid4().hex  # lives in a Secret block on the stack
SLACK_TOKEN = "xoxb-test-" + uuid.uuid4().hex  # in the Slack URL, given by settings
ALL_EVENTS = ["scan.completed", "scan.rejected", "scan.failed", "scan.crashed", "scan.stalled"]
FIGURES: list[tuple[str, str, float]] = []  # (case, what, seconds): printed at the end


def for_scan(scan_id: str, event_type: str | None = None) -> Callable[[dict[str, Any]], bool]:
    def match(body: dict[str, Any]) -> bool:
        if body.get("scan_id") == scan_id and (event_type is None or body["type"] == event_type):
            return True
        # a Slack message names the scan in its fallback text
        text = str(body.get("text", ""))
        return ": " + scan_id + " " in text and (
            event_type is None or text.lower().startswith("scan " + event_type.split(".")[1])
        )

    return match


# -- stacks ------------------------------------------------------------------------------


class NotifyStack(Sandbox):
    """A stack of its own that reports to the receivers: the platform's signing key in a
    Secret block, Slack's URL in settings (both ways are used), the automations applied."""

    def __init__(
        self,
        name: str,
        platform: Receiver,
        slack: Receiver,
        s3: str | None = None,
        **settings: str,
    ) -> None:
        """``s3``: the S3 endpoint its runs use (moto, or a proxy in front of it)."""
        super().__init__(
            f"notify-{name}",
            # the sandbox leaves the test process's AWS_* out
            env={
                "AWS_ENDPOINT_URL_S3": s3,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            if s3
            else None,
            settings={
                "platform_webhook_url": platform.url + "/scanflow/events",
                "slack_webhook_url": f"{slack.url}/services/T0/B0/{SLACK_TOKEN}",
                "slack_events": json.dumps(ALL_EVENTS),
                "crash_retries": "0",  # a crash is the outcome these stacks check
                **settings,
            },
        )

    def up(self) -> None:
        super().up()
        # Seen once in CI with two stacks starting at once: the SQLite server answered this
        # write with a 500 (not the 503 its client retries). An operator would save it
        # again; so does the harness, a few times.
        for attempt in range(5):
            saved = self.cli("secrets", "set", "platform-signing-secret", stdin=SIGNING_SECRET)
            if saved.returncode == 0:
                break
            assert attempt < 4, saved.stdout + saved.stderr
            time.sleep(2.0 * (attempt + 1))
        applied = self.cli("automations", "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr

    def notify_runs(self, run_id: uuid.UUID | None) -> list[Any]:
        """The notify-outcome runs about ``run_id``."""
        return [
            r
            for r in self.runs_of("notify-outcome")
            if str(run_id) in str(r.parameters.get("flow_run_id"))
        ]

    def worker_pid(self) -> int:
        pid = self.pid("worker")
        assert pid is not None, "the stack's worker is not running"
        return pid


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- fixtures, shared by the conftests that import them (tests/system/notify, faults) ---


@pytest.fixture(scope="session")
def platform() -> Iterator[Receiver]:
    """The platform's webhook receiver, verifying signatures."""
    receiver = Receiver("platform", secret=SIGNING_SECRET).start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def slack() -> Iterator[Receiver]:
    """Slack's incoming-webhook receiver."""
    receiver = Receiver("slack").start()
    yield receiver
    receiver.stop()
