"""Turns an invocation's event into scan requests, refusing what we do not accept.

Two shapes are accepted:

- an S3 notification: ``{"Records": [{"eventSource": "aws:s3", "eventName":
  "ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object": {"key": ..., "size": ...,
  "eTag": ..., "versionId": ...}}}, ...]}`` with URL-encoded keys of the form
  ``[<root>/]patients/<patient>/scans/<scan>.<ext>``;
- a direct invocation: ``{"scan_id": ..., "patient_id": ..., "video_uri": "s3://..."}``.

S3 delivers a notification at least once, so each upload's idempotency key is
``<bucket>/<key>@<versionId or eTag>``: a redelivered event maps to the same flow run, and an
overwritten object (a new version) to a new one. A direct invocation uses
``process-scan/<patient>/<scan>``, the key ``scanflow submit`` uses, so the two agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ScanRequest:
    """One scan to process: the flow's parameters and the run's idempotency key."""

    scan_id: str
    patient_id: str
    video_uri: str
    idempotency_key: str
    source: str

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
    kind: str  # "s3", "direct", "s3-test" or "unknown"


def parse_event(event: object, config: TriggerConfig) -> ParsedEvent:
    """Split an event into accepted scan requests and rejections; never raises for bad input."""
    if isinstance(event, dict) and isinstance(event.get("Records"), list):
        return _parse_s3(event["Records"], config)
    if isinstance(event, dict) and event.get("Event") == "s3:TestEvent":
        # S3 sends this once when the notification is configured; nothing to do.
        return ParsedEvent((), (), "s3-test")
    if isinstance(event, dict) and DIRECT_FIELDS & event.keys():
        try:
            return ParsedEvent((_direct(event, config),), (), "direct")
        except RejectedInput as exc:
            return ParsedEvent((), (Rejection("event", str(exc)),), "direct")
    return ParsedEvent(
        (),
        (
            Rejection(
                "event",
                "unrecognised event: expected an S3 notification with 'Records' or "
                "a direct invocation {scan_id, patient_id, video_uri}",
            ),
        ),
        "unknown",
    )


def _parse_s3(records: list[Any], config: TriggerConfig) -> ParsedEvent:
    requests: dict[str, ScanRequest] = {}
    rejections: list[Rejection] = []
    for i, record in enumerate(records):
        source = f"Records[{i}]"
        try:
            request = _s3_record(record, source, config)
        except RejectedInput as exc:
            rejections.append(Rejection(source, str(exc)))
            continue
        # A record repeated within one event is the same upload: one run.
        requests.setdefault(request.idempotency_key, request)
    if not records:
        rejections.append(Rejection("Records", "the event has no records"))
    return ParsedEvent(tuple(requests.values()), tuple(rejections), "s3")


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
    key = unquote_plus(raw_key)  # S3 event keys are URL-encoded, spaces as '+'
    patient_id, scan_id = _check_object(bucket, key, config)
    size = _get(s3, "object", "size")
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
    version = _get(s3, "object", "versionId") or _get(s3, "object", "eTag")
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
        if not isinstance(value, str) or not _ID_RE.match(value):
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
