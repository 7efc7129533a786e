"""The senders against real HTTP servers on loopback, and the Slack message's content. No
Prefect server needed. (The event itself: tests/scanflow/contracts/test_events.py.)"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prefect.states import Completed, Failed
from pydantic import SecretStr

from scanflow.local.loopback import Receiver
from scanflow.notify.senders import (
    DeliveryError,
    RetryPolicy,
    Targets,
    post_with_retries,
    resolve_targets,
    send_platform,
    slack_message,
)
from scanflow.notify.signing import HEADER, verify_signature
from tests.support.events import scan_event, scan_run

LOG = logging.getLogger("test-notify")
QUICK = RetryPolicy(attempts=5, base_s=0.05, cap_s=0.4, deadline_s=10)


class Scripted:
    """A loopback server answering a script of (status, delay_s, headers), then 200."""

    def __init__(self, script: list[tuple[int, float, dict[str, str]]]) -> None:
        self.script = list(script)
        self.hits: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.hits.append(time.monotonic())
                status, delay, headers = outer.script.pop(0) if outer.script else (200, 0, {})
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _post(server: Scripted, policy: RetryPolicy = QUICK, timeout: float = 2.0) -> Any:
    import httpx

    with httpx.Client(timeout=timeout) as client:
        return post_with_retries(
            client, server.url, b"{}", lambda: {}, policy, label="test", log=LOG
        )


def test_retries_5xx_and_429_then_delivers() -> None:
    server = Scripted([(503, 0, {}), (502, 0, {}), (429, 0, {"Retry-After": "0.3"})])
    try:
        delivery = _post(server)
    finally:
        server.close()
    assert delivery.status == 200 and delivery.attempts == 4
    assert server.hits[3] - server.hits[2] >= 0.28  # Retry-After honoured


def test_retries_a_timeout() -> None:
    server = Scripted([(200, 1.5, {})])  # slower than the client's 0.5 s timeout
    try:
        delivery = _post(server, timeout=0.5)
    finally:
        server.close()
    assert delivery.attempts == 2


def test_a_4xx_is_not_retried() -> None:
    server = Scripted([(400, 0, {})])
    try:
        with pytest.raises(DeliveryError) as err:
            _post(server)
    finally:
        server.close()
    assert err.value.permanent and err.value.status == 400 and len(server.hits) == 1


def test_gives_up_within_its_deadline() -> None:
    server = Scripted([(503, 0, {})] * 50)
    policy = RetryPolicy(attempts=50, base_s=0.1, cap_s=0.2, deadline_s=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as err:
            _post(server, policy)
    finally:
        server.close()
    assert not err.value.permanent and "HTTP 503" in str(err.value)
    assert time.monotonic() - started < 3 and len(server.hits) >= 4


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(base_s=1.0, cap_s=8.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 8.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(0, retry_after=30) == 8.0


# -- events to send -------------------------------------------------------------------------


# -- platform and Slack payloads ------------------------------------------------------------


def test_send_platform_signs_the_exact_body_it_sends() -> None:
    receiver = Receiver("platform", secret="s3cret").start()
    event = scan_event(Failed(message="[not_found] s3://uploads/x.mp4 does not exist."))
    targets = Targets(receiver.url + "/e", SecretStr("s3cret"), None, frozenset(), 5.0)
    try:
        delivery = send_platform(event, targets, QUICK, LOG)
    finally:
        receiver.stop()
    assert delivery is not None and delivery.status == 200
    [got] = receiver.records
    assert got.verified == "ok"
    verify_signature("s3cret", got.headers[HEADER], got.body)
    assert got.json["event_id"] == str(event.event_id)
    assert got.headers["X-Scanflow-Event-Id"] == str(event.event_id)
    assert got.headers["X-Scanflow-Event-Type"] == "scan.failed"


def test_send_platform_refuses_to_send_unsigned() -> None:
    targets = Targets("http://127.0.0.1:9/e", None, None, frozenset(), 5.0)
    with pytest.raises(DeliveryError) as err:
        send_platform(scan_event(Completed()), targets, QUICK, LOG)
    assert err.value.permanent


def test_targets_never_show_their_secrets() -> None:
    targets = Targets(
        "http://p", SecretStr("k-123"), SecretStr("https://hooks/T/B/x"), frozenset(), 1
    )
    assert "k-123" not in repr(targets) and "hooks/T/B" not in repr(targets)


def test_the_slack_message_has_no_patient_data_and_no_images() -> None:
    run = scan_run()
    event = scan_event(
        Failed(
            message="ProcessingError: [not_found] s3://uploads/patients/pt-4417/scans/scan-7.mp4 "
            "does not exist (/var/scans/pt-4417/scan-7.mp4, patient pt-4417)"
        ),
        run=run,
    )
    message = slack_message(event)
    text = json.dumps(message)
    assert "pt-4417" not in text and "s3://" not in text and "/var/scans" not in text
    assert "image" not in text  # no image blocks, no image_url anywhere
    assert "scan-7" in text and "not_found" in text and "Duration" in text
    assert f"/runs/flow-run/{run.id}" in text
    assert message["text"] == "Scan failed: scan-7 (not_found)"
    assert {b["type"] for b in message["blocks"]} <= {
        "header",
        "section",
        "actions",
        "context",
    }


# -- Slack routing by cause ------------------------------------------------------------------


def test_only_model_and_internal_failures_carry_the_on_call_mention() -> None:
    mention = "<!subteam^S0ONCALL>"
    for message, pages in [
        ("[model_error] the weights do not load", True),
        ("a bug with no code", True),  # internal_error
        ("[storage_error] S3 answered 503", False),  # infrastructure: retried, then the channel
        ("[not_found] gone", False),  # integration
    ]:
        posted = slack_message(scan_event(Failed(message=message)), mention)
        text = json.dumps(posted)
        assert (mention in text) is pages, message
        assert posted["text"].startswith(mention) is pages, message
    rejected = scan_event(Failed(name="Rejected", message="[too_short] 1 s"))
    assert rejected.cause is not None and rejected.cause.value == "patient"
    assert mention not in json.dumps(slack_message(rejected, mention))  # never pages
    assert mention not in json.dumps(slack_message(scan_event(Failed(message="x")), None))


def test_each_cause_goes_to_its_own_webhook_else_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scanflow.settings import Settings

    monkeypatch.setenv("SCANFLOW_SLACK_WEBHOOK_URL", "https://hooks.example/default")
    monkeypatch.setenv(
        "SCANFLOW_SLACK_WEBHOOK_URLS",
        json.dumps(
            {"model": "https://hooks.example/model", "internal": "https://hooks.example/bug"}
        ),
    )
    monkeypatch.setenv("SCANFLOW_SLACK_ONCALL_MENTION", "<!here>")
    targets = resolve_targets(Settings())
    assert targets.oncall_mention == "<!here>" and targets.any_slack

    def url(message: str) -> str | None:
        found = targets.slack_url_for(scan_event(Failed(message=message)))
        return found.get_secret_value() if found else None

    assert url("[model_error] no weights") == "https://hooks.example/model"
    assert url("no code at all") == "https://hooks.example/bug"
    assert url("[storage_error] 503") == "https://hooks.example/default"
    assert "hooks.example/model" not in repr(targets)  # secrets stay hidden
    monkeypatch.setenv("SCANFLOW_SLACK_WEBHOOK_URLS", json.dumps({"weather": "https://x"}))
    with pytest.raises(ValueError, match="weather"):
        Settings()  # an unknown cause is refused, not silently ignored
