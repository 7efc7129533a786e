"""Delivery of scan outcomes: the signed platform webhook and the Slack message.

Both delivery paths (the flow's state hooks and the notify-outcome flow run by the server's
automations) call :func:`deliver`. The platform may get an outcome from both paths and on
every retry, always with the same ``event_id``; Slack gets it once: before posting, a path
claims the outcome in a Prefect Variable (``scanflow_slack_<event id>``, created atomically:
the server answers 409 to the second path), marks it sent afterwards, and releases it if
Slack could not be reached so the other path may try.

Secrets (the signing key, the Slack webhook URL) come from settings or Prefect Secret
blocks; they are never logged: log lines name the platform's host only.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from scanflow.contracts.events import EventType, WebhookEvent
from scanflow.contracts.manifest import manifest_uri
from scanflow.notify.receipts import record_receipt
from scanflow.notify.signing import HEADER, sign
from scanflow.settings import Settings
from scanflow.storage import join

RETRY_STATUSES = frozenset({408, 425, 429})
CLAIM_TAG = "scanflow-slack-claim"
USER_AGENT = "scanflow-notify/1"


class DeliveryError(Exception):
    """An HTTP delivery gave up: ``permanent`` when retrying cannot help (a 4xx answer)."""

    def __init__(self, message: str, *, permanent: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between half and all of
    ``min(cap, base * 2**n)`` (or the server's Retry-After, capped), within ``deadline_s``."""

    attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 8.0
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_s < 0 or self.cap_s < 0 or self.deadline_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0**attempt)
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


FAST = RetryPolicy()  # in the flow's own process: don't hold the worker slot for long


@dataclass(frozen=True)
class Delivery:
    status: int
    attempts: int
    seconds: float


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def post_with_retries(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: Callable[[], Mapping[str, str]],
    policy: RetryPolicy,
    *,
    label: str,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> Delivery:
    """POST ``body`` until a 2xx; retries timeouts, connection errors, 5xx, 408, 425, 429.

    ``headers`` is called for every attempt (a signature carries its own timestamp).
    """
    started = time.monotonic()
    last = "no attempt"
    for attempt in range(policy.attempts):
        retry_after: float | None = None
        try:
            response = client.post(url, content=body, headers=dict(headers()))
        except httpx.TransportError as exc:  # timeouts, refused connections, resets
            last = type(exc).__name__
        else:
            if response.is_success:
                return Delivery(response.status_code, attempt + 1, time.monotonic() - started)
            last = f"HTTP {response.status_code}"
            if response.status_code < 500 and response.status_code not in RETRY_STATUSES:
                raise DeliveryError(
                    f"{label} refused the request: {last}",
                    permanent=True,
                    status=response.status_code,
                )
            retry_after = _retry_after(response)
        pause = policy.delay(attempt, retry_after)
        spent = time.monotonic() - started
        if attempt + 1 >= policy.attempts or spent + pause > policy.deadline_s:
            break
        log.warning("%s: %s, attempt %d; retrying in %.1f s", label, last, attempt + 1, pause)
        time.sleep(pause)
    raise DeliveryError(
        f"{label}: gave up after {attempt + 1} attempts in {time.monotonic() - started:.1f} s "
        f"({last})",
        permanent=False,
    )


# -- configuration -----------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """Where outcomes go, with the secrets resolved (repr hides them)."""

    platform_url: str | None
    signing_secret: SecretStr | None = field(repr=False)
    slack_url: SecretStr | None = field(repr=False)
    slack_events: frozenset[str]
    timeout_s: float
    slack_by_cause: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)
    oncall_mention: str | None = None
    receipts_root: str | None = None  # where the platform's acknowledgements are kept

    @property
    def any_slack(self) -> bool:
        return self.slack_url is not None or bool(self.slack_by_cause)

    def slack_url_for(self, event: WebhookEvent) -> SecretStr | None:
        """The cause's own webhook, else the default one."""
        if event.cause is not None and event.cause.value in self.slack_by_cause:
            return self.slack_by_cause[event.cause.value]
        return self.slack_url


def _secret_block(name: str) -> SecretStr | None:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()  # type: ignore[union-attr]
    except ValueError:  # "Unable to find block document named ..."
        return None
    return SecretStr(str(value)) if value else None


def resolve_targets(settings: Settings) -> Targets:
    """Settings first, then the Secret blocks they name."""
    signing = settings.platform_signing_secret
    if settings.platform_webhook_url and signing is None:
        signing = _secret_block(settings.platform_signing_secret_block)
    slack = settings.slack_webhook_url or _secret_block(settings.slack_webhook_block)
    return Targets(
        platform_url=settings.platform_webhook_url,
        signing_secret=signing,
        slack_url=slack,
        slack_events=frozenset(settings.slack_events),
        timeout_s=settings.notify_timeout_s,
        slack_by_cause={cause.value: url for cause, url in settings.slack_webhook_urls.items()},
        oncall_mention=settings.slack_oncall_mention,
        receipts_root=settings.results_root,
    )


# -- platform ----------------------------------------------------------------------------


def event_body(event: WebhookEvent) -> bytes:
    return event.model_dump_json().encode()


def send_platform(
    event: WebhookEvent,
    targets: Targets,
    policy: RetryPolicy,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> Delivery | None:
    """POST the signed event to the platform; None when no platform is configured."""
    if not targets.platform_url:
        return None
    if targets.signing_secret is None:
        raise DeliveryError(
            "the platform webhook is set but no signing secret is (settings "
            "platform_signing_secret or its Secret block)",
            permanent=True,
        )
    secret = targets.signing_secret.get_secret_value()
    body = event_body(event)

    def headers() -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            HEADER: sign(secret, body),
            "X-Scanflow-Event-Id": str(event.event_id),
            "X-Scanflow-Event-Type": event.type.value,
        }

    label = f"platform {urlsplit(targets.platform_url).netloc}"
    with httpx.Client(timeout=targets.timeout_s) as client:
        delivery = post_with_retries(
            client, targets.platform_url, body, headers, policy, label=label, log=log
        )
    log.info(
        "%s: delivered %s %s (%s) in %.2f s, %d attempt(s)",
        label,
        event.type.value,
        event.event_id,
        event.source,
        delivery.seconds,
        delivery.attempts,
    )
    if targets.receipts_root:
        try:
            record_receipt(targets.receipts_root, event, delivery.status)
        except Exception as exc:  # noqa: BLE001 - delivered: the reconciler re-sends at worst
            log.warning("%s: no receipt kept for %s: %s", label, event.event_id, exc)
    return delivery


# -- Slack -------------------------------------------------------------------------------

_EMOJI = {
    EventType.COMPLETED: ":white_check_mark:",
    EventType.REJECTED: ":warning:",
    EventType.FAILED: ":x:",
    EventType.CRASHED: ":rotating_light:",
    EventType.STALLED: ":hourglass:",
}
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_PATH = re.compile(r"(?<![\w.])/(?:[^\s/]+/)+[^\s/]+")


def redact(text: str, event: WebhookEvent) -> str:
    """A state message fit for Slack: no URIs or paths (they name patients), no patient id."""
    text = _PATH.sub("<path>", _URI.sub("<uri>", text))
    if event.patient_id:
        text = text.replace(event.patient_id, "<patient>")
    for ch, esc in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(ch, esc)
    return text[:500]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def slack_message(event: WebhookEvent, oncall_mention: str | None = None) -> dict[str, Any]:
    """A Block Kit message: outcome, scan id, reason and cause, duration, link; the on-call
    mention first when the cause pages (model, internal). No patient data, no images."""
    title = f"Scan {event.type.value.removeprefix('scan.')}"
    scan = event.scan_id or "?"
    reason = event.reason.value if event.reason else "-"
    cause = event.cause.value if event.cause else "-"
    fields = [
        ("Scan", f"`{scan}`"),
        ("Reason", f"`{reason}` ({cause})"),
        ("State", event.state.name),
        ("Duration", _duration(event.duration_s)),
    ]
    if event.attempt and event.attempt > 1:
        fields.append(("Attempt", str(event.attempt)))
    page = bool(oncall_mention) and event.cause is not None and event.cause.pages_on_call
    blocks: list[dict[str, Any]] = [
        *(
            [{"type": "section", "text": {"type": "mrkdwn", "text": f"{oncall_mention} on-call"}}]
            if page
            else []
        ),
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"{_EMOJI[event.type]} {title}"},
        },
        {
            "type": "section",
            "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields],
        },
    ]
    if event.message:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": redact(event.message, event)}}
        )
    blocks += [
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open the run in Prefect"},
                    "url": event.links.run,
                }
            ],
        },
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": f"event `{event.event_id}` · sent by {event.source}"}
            ],
        },
    ]
    text = f"{title}: {scan} ({reason})"
    return {"text": f"{oncall_mention} {text}" if page else text, "blocks": blocks}


def _claim_name(event: WebhookEvent) -> str:
    return f"scanflow_slack_{event.event_id.hex}"


def claim_slack(event: WebhookEvent, wait_s: float) -> bool:
    """Take the right to post ``event`` to Slack; False when another path has it or sent it.

    With ``wait_s`` > 0, a claim still "sending" after that long is taken over (its holder
    died mid-send): a rare duplicate beats a missed alert.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name = _claim_name(event)
    mine = {"status": "sending", "by": event.source, "at": datetime.now(UTC).isoformat()}
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.create_variable(VariableCreate(name=name, value=mine, tags=[CLAIM_TAG]))
                return True
            except ObjectAlreadyExists:
                pass
            held = client.read_variable_by_name(name)
            if held is None:  # released while we looked: try again
                time.sleep(0.1)
                continue
            if isinstance(held.value, dict) and held.value.get("status") == "sent":
                return False
            if time.monotonic() >= deadline:
                if wait_s <= 0:
                    return False
                client.update_variable(VariableUpdate(name=name, value=mine))
                return True
            time.sleep(1.0)


def settle_slack_claim(event: WebhookEvent, sent: bool) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableUpdate

    name = _claim_name(event)
    with get_client(sync_client=True) as client:
        if sent:
            value = {"status": "sent", "by": event.source, "at": datetime.now(UTC).isoformat()}
            client.update_variable(VariableUpdate(name=name, value=value))
        else:
            client.delete_variable_by_name(name)


def send_slack(
    event: WebhookEvent,
    targets: Targets,
    policy: RetryPolicy,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    *,
    claim_wait_s: float = 0.0,
) -> Delivery | None:
    """Post the event to Slack once per outcome; None when not posted (not configured, not
    a Slack event type, or another path has it)."""
    url = targets.slack_url_for(event)
    if url is None or event.type.value not in targets.slack_events:
        return None
    if not claim_slack(event, claim_wait_s):
        log.info("slack: %s %s is posted by the other path", event.type.value, event.event_id)
        return None
    body = json.dumps(slack_message(event, targets.oncall_mention)).encode()
    try:
        with httpx.Client(timeout=targets.timeout_s) as client:
            delivery = post_with_retries(
                client,
                url.get_secret_value(),
                body,
                lambda: {"Content-Type": "application/json", "User-Agent": USER_AGENT},
                policy,
                label="slack",
                log=log,
            )
    except BaseException:
        settle_slack_claim(event, sent=False)
        raise
    settle_slack_claim(event, sent=True)
    log.info("slack: posted %s %s (%s)", event.type.value, event.event_id, event.source)
    return delivery


CAUSE_TAG = "cause:"


def tag_cause(flow_run: Any, event: WebhookEvent) -> None:
    """Tag the run with its outcome's cause (``cause:patient``, ...), so the Prefect UI
    filters runs by it; a no-op for a completed run or one already tagged."""
    if event.cause is None:
        return
    from prefect.client.orchestration import get_client

    tags = list(flow_run.tags or [])
    tag = f"{CAUSE_TAG}{event.cause.value}"
    if tag in tags:
        return
    kept = [t for t in tags if not t.startswith(CAUSE_TAG)]  # a retried run's earlier cause
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=[*kept, tag])


def run_url(flow_run_id: object) -> str:
    """The flow run's page in the Prefect UI (PREFECT_UI_URL, or derived from the API URL)."""
    from prefect.settings import get_current_settings

    base = (get_current_settings().ui_url or "").rstrip("/")
    return f"{base}/runs/flow-run/{flow_run_id}"


def manifest_for(settings: Settings, parameters: Mapping[str, Any]) -> str | None:
    """Where a completed run of process-scan wrote its manifest (from its parameters)."""
    patient, scan = parameters.get("patient_id"), parameters.get("scan_id")
    if not patient or not scan:
        return None
    return manifest_uri(join(settings.results_root, str(patient), str(scan)))
