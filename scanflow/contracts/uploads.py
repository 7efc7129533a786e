"""An upload in the bucket, and the run it must have: the same scan ids and idempotency key
the upload trigger derives from its S3 notification (deployments/trigger/scanflow_trigger/
events.py, which ships alone and so cannot import this; a test holds the two to one answer).

    s3://<bucket>/[<root>/]patients/<patient_id>/scans/<scan_id>.<ext>
        -> process-scan(scan_id, patient_id, video_uri), idempotency key
           <bucket>/<key>@<versionId, or the ETag without its quotes>

The reconciler (flows/reconcile.py) lists the bucket and asks the server for each upload's
run by that key: a run created by the trigger and one created by the reconciler are the
same run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scanflow.contracts.options import ID_PATTERN

EXTENSIONS = frozenset({"mp4", "mov", "m4v"})  # any case: iPhones write .MOV
_ID = ID_PATTERN.strip("^$")
_KEY = re.compile(
    r"^(?P<root>(?:[A-Za-z0-9_.=-]+/)*)patients/"
    rf"(?P<patient_id>{_ID})/scans/(?P<scan_id>{_ID})\.(?P<ext>[A-Za-z0-9]{{1,8}})$"
)


@dataclass(frozen=True)
class Upload:
    """One object in the upload bucket, as a listing shows it."""

    bucket: str
    key: str
    version: str  # the versionId (versioned bucket) or the ETag without quotes
    modified: datetime
    size: int

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def idempotency_key(self) -> str:
        return f"{self.bucket}/{self.key}@{self.version}"


@dataclass(frozen=True)
class ScanUpload:
    """An upload that is a scan: the run it should have."""

    upload: Upload
    scan_id: str
    patient_id: str

    def parameters(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "patient_id": self.patient_id,
            "video_uri": self.upload.uri,
        }


def scan_of(upload: Upload, extensions: frozenset[str] = EXTENSIONS) -> ScanUpload | None:
    """The scan an upload is, or None when the trigger would refuse it (not a scan's key, an
    extension not accepted, an empty object): those never get a run."""
    match = _KEY.match(upload.key)
    if match is None or match["ext"].lower() not in extensions or upload.size <= 0:
        return None
    return ScanUpload(upload, match["scan_id"], match["patient_id"])


def version_of(listed: dict[str, Any]) -> str:
    """The version the trigger keys a run by, from a ListObjectVersions or ListObjectsV2
    entry: the versionId when the bucket is versioned, else the ETag (S3 quotes it in
    listings, not in notifications)."""
    version = listed.get("VersionId")  # as the trigger: versionId or eTag
    return str(version) if version else str(listed["ETag"]).strip('"')
