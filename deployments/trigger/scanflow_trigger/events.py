"""Turns an invocation's event into scan requests, refusing what we do not accept.

The shapes accepted, each with real samples in ``tests/deployments/events/``:

- an S3 notification delivered straight to the function: ``{"Records": [{"eventSource":
  "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object":
  {"key": ..., "size": ..., "eTag": ..., "versionId": ...}}}, ...]}`` with URL-encoded keys
  of the form ``[<root>/]patients/<patient>/scans/<scan>.<ext>``;
- an EventBridge "Object Created" event (``source: aws.s3``; the key is not URL-encoded);
- SNS: ``{"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "<one of the above>"}}]}``;
- SQS, a batch: ``{"Records": [{"eventSource": "aws:sqs", "messageId": ..., "body": "<an S3
  notification, an EventBridge event or an SNS envelope>"}]}``. Each scan remembers the
  messages it came from, so that the handler can answer ``batchItemFailures`` with just the
  messages whose scans could not be submitted;
- a direct invocation: ``{"scan_id": ..., "patient_id": ..., "video_uri": "s3://..."}``.

S3 delivers a notification at least once, so each upload's idempotency key is
``<bucket>/<key>@<versionId or eTag>``, the same whichever path delivered it: a redelivered
event maps to the same flow run, and an overwritten object (a new version) to a new one. A
direct invocation uses ``process-scan/<patient>/<scan>``, the key ``scanflow submit`` uses, so
the two agree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote_plus

from .config import ID_PATTERN, TriggerConfig
from .errors import RejectedInput

_ID = ID_PATTERN.strip("^$")
_KEY = re.compile(
    r"^(?P<root>(?:[A-Za-z0-9_.=-]+/)*)patients/"
    rf"(?P<patient_id>{_ID})/scans/(?P<scan_id>{_ID})\.(?P<ext>[A-Za-z0-9]{{1,8}})$"
)
_ID_RE = re.compile(ID_PATTERN)
DIRECT_FIELDS = frozenset({"scan_id", "patient_id", "video_uri"})
_NESTING = 3  # SQS -> SNS -> S3 is the deepest envelope AWS delivers


@dataclass(frozen=True)
class ScanRequest:
    """One scan to process: the flow's parameters and the run's idempotency key.

    ``batch_items`` are the SQS message ids the scan came from (empty for other sources).
    """

    scan_id: str
    patient_id: str
    video_uri: str
    idempotency_key: str
    source: str
    batch_items: tuple[str, ...] = ()

    def parameters(self) -> dict[str, Any]:
        return {"scan_id": self.scan_id, "patient_id": self.patient_id, "video_uri": self.video_uri}


@dataclass(frozen=True)
class Rejection:
    """A record (or the whole event) refused, and why."""

    source: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class ParsedEvent:
    requests: tuple[ScanRequest, ...]
    rejections: tuple[Rejection, ...]
    # "s3", "eventbridge", "sns", "sqs", "direct", "s3-test" or "unknown"
    kind: str
    batch_items: tuple[str, ...] = ()  # every SQS message id of the batch


_UNRECOGNISED = (
    "unrecognised event: expected an S3 notification, an EventBridge Object Created "
    "event, an SNS or SQS delivery of one, or a direct invocation {scan_id, patient_id, "
    "video_uri}"
)


def parse_event(event: object, config: TriggerConfig) -> ParsedEvent:
    """Split an event into accepted scan requests and rejections; never raises for bad input."""
    if isinstance(event, dict) and DIRECT_FIELDS & event.keys() and "Records" not in event:
        try:
            return ParsedEvent((_direct(event, config),), (), "direct")
        except RejectedInput as exc:
            return ParsedEvent((), (Rejection("event", str(exc)),), "direct")
    collected = _Collector(config)
    kind = collected.walk(event, "event", (), depth=0)
    batch = tuple(collected.batch_items)
    if kind == "s3-test" and not collected.requests and not collected.rejections:
        return ParsedEvent((), (), "s3-test", batch)
    return ParsedEvent(tuple(collected.requests.values()), tuple(collected.rejections), kind, batch)


class _Collector:
    """Walks envelopes (SQS, SNS) down to S3 records and EventBridge events."""

    def __init__(self, config: TriggerConfig) -> None:
        self.config = config
        self.requests: dict[str, ScanRequest] = {}
        self.rejections: list[Rejection] = []
        self.batch_items: list[str] = []

    def walk(self, payload: object, source: str, items: tuple[str, ...], *, depth: int) -> str:
        """Collect what ``payload`` holds; returns the kind of the outermost envelope."""
        if depth > _NESTING:
            self.reject(source, "envelopes nested too deep")
            return "unknown"
        if isinstance(payload, dict) and payload.get("Event") == "s3:TestEvent":
            return "s3-test"  # S3 sends this once when a notification is configured
        if isinstance(payload, dict) and payload.get("source") == "aws.s3":
            self.add(source, items, lambda: _eventbridge(payload, source, self.config))
            return "eventbridge"
        if isinstance(payload, dict) and payload.get("Type") == "Notification":
            # an SNS envelope, as SQS receives it from a topic without raw delivery
            return self.walk_text(payload.get("Message"), f"{source}.Message", items, depth)
        records = payload.get("Records") if isinstance(payload, dict) else None
        if not isinstance(records, list):
            self.reject(source, _UNRECOGNISED)
            return "unknown"
        if not records:
            self.reject(f"{source}.Records" if depth else "Records", "the event has no records")
            return "s3"
        kinds = [self.record(r, _at(source, i, depth), items, depth) for i, r in enumerate(records)]
        return kinds[0]

    def walk_text(self, text: object, source: str, items: tuple[str, ...], depth: int) -> str:
        try:
            inner = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            inner = None
        if inner is None:
            self.reject(source, "the message is not JSON")
            return "unknown"
        self.walk(inner, source, items, depth=depth + 1)
        return "sns" if source.endswith(".Message") else "sqs"

    def record(self, record: object, source: str, items: tuple[str, ...], depth: int) -> str:
        if isinstance(record, dict) and record.get("eventSource") == "aws:sqs":
            message_id = str(record.get("messageId") or "")
            if not message_id:
                self.reject(source, "an SQS record without a messageId")
                return "sqs"
            self.batch_items.append(message_id)
            self.walk_text(record.get("body"), f"{source}.body", (*items, message_id), depth)
            return "sqs"
        if isinstance(record, dict) and record.get("EventSource") == "aws:sns":
            sns = record.get("Sns")
            message = sns.get("Message") if isinstance(sns, dict) else None
            self.walk_text(message, f"{source}.Sns.Message", items, depth)
            return "sns"
        self.add(source, items, lambda: _s3_record(record, source, self.config))
        return "s3"

    def add(self, source: str, items: tuple[str, ...], build: Any) -> None:
        try:
            request: ScanRequest = build()
        except RejectedInput as exc:
            self.reject(source, str(exc))
            return
        # The same upload twice in one event (or batch) is one run; every message it came
        # from shares that run's fate.
        known = self.requests.get(request.idempotency_key)
        if known is None:
            self.requests[request.idempotency_key] = replace(request, batch_items=items)
        else:
            merged = tuple(dict.fromkeys((*known.batch_items, *items)))
            self.requests[request.idempotency_key] = replace(known, batch_items=merged)

    def reject(self, source: str, reason: str) -> None:
        self.rejections.append(Rejection(source, reason))


def _at(source: str, index: int, depth: int) -> str:
    return f"Records[{index}]" if depth == 0 else f"{source}.Records[{index}]"


def _s3_record(record: object, source: str, config: TriggerConfig) -> ScanRequest:
    if not isinstance(record, dict):
        raise RejectedInput("not an object")
    name = str(record.get("eventName", ""))
    if record.get("eventSource") != "aws:s3" or not name.startswith("ObjectCreated:"):
        raise RejectedInput(
            f"not an S3 ObjectCreated record (eventSource={record.get('eventSource')!r}, "
            f"eventName={name!r})"
        )
    s3 = record.get("s3")
    bucket = _get(s3, "bucket", "name")
    raw_key = _get(s3, "object", "key")
    if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket or not raw_key:
        raise RejectedInput("the record has no s3.bucket.name or s3.object.key")
    key = unquote_plus(raw_key)  # S3 notification keys are URL-encoded, spaces as '+'
    return _upload(
        bucket,
        key,
        size=_get(s3, "object", "size"),
        version=_get(s3, "object", "versionId") or _get(s3, "object", "eTag"),
        source=source,
        config=config,
    )


def _eventbridge(event: dict[str, Any], source: str, config: TriggerConfig) -> ScanRequest:
    kind = event.get("detail-type")
    if kind != "Object Created":
        raise RejectedInput(f"not an S3 Object Created event (detail-type={kind!r})")
    detail = event.get("detail")
    bucket = _get(detail, "bucket", "name")
    key = _get(detail, "object", "key")  # EventBridge keys are not URL-encoded
    if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
        raise RejectedInput("the event has no detail.bucket.name or detail.object.key")
    return _upload(
        bucket,
        key,
        size=_get(detail, "object", "size"),
        version=_get(detail, "object", "version-id") or _get(detail, "object", "etag"),
        source=source,
        config=config,
    )


def _upload(
    bucket: str, key: str, *, size: object, version: object, source: str, config: TriggerConfig
) -> ScanRequest:
    patient_id, scan_id = _check_object(bucket, key, config)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RejectedInput(f"s3://{bucket}/{key}: size {size!r} is not a byte count")
        if size == 0:
            raise RejectedInput(f"s3://{bucket}/{key} is empty (0 bytes)")
        if size > config.max_object_bytes:
            raise RejectedInput(
                f"[too_large] s3://{bucket}/{key} is {size} bytes, over the limit of "
                f"{config.max_object_bytes}"
            )
    if not isinstance(version, str) or not version:
        raise RejectedInput(f"s3://{bucket}/{key}: the record has neither versionId nor eTag")
    return ScanRequest(
        scan_id=scan_id,
        patient_id=patient_id,
        video_uri=f"s3://{bucket}/{key}",
        idempotency_key=f"{bucket}/{key}@{version}",
        source=source,
    )


def _direct(event: dict[str, Any], config: TriggerConfig) -> ScanRequest:
    extra = sorted(event.keys() - DIRECT_FIELDS)
    missing = sorted(DIRECT_FIELDS - event.keys())
    if missing or extra:
        raise RejectedInput(
            "a direct invocation takes exactly scan_id, patient_id and video_uri"
            + (f"; missing {missing}" if missing else "")
            + (f"; unexpected {extra}" if extra else "")
        )
    scan_id, patient_id, uri = event["scan_id"], event["patient_id"], event["video_uri"]
    for name, value in (("scan_id", scan_id), ("patient_id", patient_id)):
        if not isinstance(value, str) or not _ID_RE.fullmatch(value):
            raise RejectedInput(f"{name}={value!r} does not match {ID_PATTERN}")
    if not isinstance(uri, str) or not uri.startswith("s3://") or "/" not in uri[5:]:
        raise RejectedInput(f"video_uri={uri!r} is not s3://<bucket>/<key>")
    bucket, key = uri[5:].split("/", 1)
    _check_location(bucket, key, config)
    return ScanRequest(
        scan_id=scan_id,
        patient_id=patient_id,
        video_uri=uri,
        idempotency_key=f"process-scan/{patient_id}/{scan_id}",
        source="event",
    )


def _check_location(bucket: str, key: str, config: TriggerConfig) -> str:
    """Bucket, prefix and extension allowlists; returns the extension."""
    where = f"s3://{bucket}/{key}"
    if bucket not in config.allowed_buckets:
        raise RejectedInput(f"{where}: bucket {bucket!r} is not in the allowlist")
    if not key.startswith(config.allowed_prefixes):
        raise RejectedInput(
            f"{where}: key is outside the allowed prefixes {list(config.allowed_prefixes)}"
        )
    ext = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    if ext not in config.allowed_extensions:
        raise RejectedInput(
            f"{where}: extension {ext!r} is not one of {sorted(config.allowed_extensions)}"
        )
    return ext


def _check_object(bucket: str, key: str, config: TriggerConfig) -> tuple[str, str]:
    _check_location(bucket, key, config)
    match = _KEY.match(key)
    if not match:
        raise RejectedInput(
            f"s3://{bucket}/{key}: key is not [<root>/]patients/<patient>/scans/<scan>.<ext> "
            f"with ids matching {ID_PATTERN}"
        )
    return match["patient_id"], match["scan_id"]


def _get(obj: object, *path: str) -> object:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj
