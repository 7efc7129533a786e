"""Which scan inputs a run may read: a video URI is checked against the allowed input roots
before anything is read.

A root is ``s3://bucket[/prefix]`` or ``file:///dir``; a URI is allowed when it lies under
one of them, segment by segment (``patients/`` does not cover ``patients-old/``). Refused,
whatever the roots, are: schemes other than ``s3`` and ``file``, ``..`` or ``.`` segments,
empty segments, percent-encoding that decodes to more percent-encoding (``%252e``), control
characters and backslashes, queries and fragments, ``file://`` URIs naming another host, and
any path that names another patient: wherever a ``patients/<id>/`` folder appears, ``<id>``
must be the run's patient id (the upload layout is ``patients/<patient>/scans/<scan>.<ext>``).

The path is judged as the stores will read it (decoded once, as ``scanflow.storage`` does).
:func:`check_input_uri` is pure; for ``file://`` inputs the caller also checks the path
with its symbolic links resolved, so a link inside a root cannot lead out of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from cv.errors import ProcessingError, Reason

SCHEMES = ("s3", "file")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
_MAX_URI = 2048


@dataclass(frozen=True)
class InputRoot:
    """An allowed place to read scans from: ``s3://bucket/prefix`` or ``file:///dir``."""

    scheme: str
    bucket: str  # "" for file://
    parts: tuple[str, ...]  # the prefix (s3) or the absolute folder (file), by segment

    def __str__(self) -> str:
        path = "/".join(self.parts)
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{path}" if path else f"s3://{self.bucket}"
        return f"file:///{path}"

    def covers(self, scheme: str, bucket: str, parts: tuple[str, ...]) -> bool:
        return (
            (scheme, bucket) == (self.scheme, self.bucket)
            and len(parts) > len(self.parts)
            and parts[: len(self.parts)] == self.parts
        )


def parse_root(text: str) -> InputRoot:
    """An allowed input root from its URI; raises ValueError for anything else.

    ``s3://bucket`` (the whole bucket), ``s3://bucket/prefix/`` or ``file:///absolute/dir``
    (a trailing slash is optional; prefixes are whole folders).
    """
    split = urlsplit(text.strip())
    if split.scheme not in SCHEMES:
        raise ValueError(f"input root {text!r}: use s3://bucket/prefix or file:///dir")
    if split.query or split.fragment or _FORBIDDEN.search(text):
        raise ValueError(f"input root {text!r}: no query, fragment or control characters")
    path = unquote(split.path)
    segments = [s for s in path.split("/") if s]
    if any(s in {".", ".."} for s in segments):
        raise ValueError(f"input root {text!r}: no '.' or '..' segments")
    if split.scheme == "s3":
        if not _BUCKET.match(split.netloc):
            raise ValueError(f"input root {text!r}: {split.netloc!r} is not a bucket name")
        return InputRoot("s3", split.netloc, tuple(segments))
    if split.netloc not in {"", "localhost"} or not path.startswith("/") or not segments:
        raise ValueError(f"input root {text!r}: file roots are file:///absolute/folder")
    return InputRoot("file", "", tuple(segments))


def _deny(uri: str, why: str) -> ProcessingError:
    return ProcessingError(Reason.ACCESS_DENIED, f"video_uri {uri[:300]!r} is not allowed: {why}.")


def check_input_uri(uri: str, patient_id: str, roots: Iterable[InputRoot]) -> None:
    """Raise ``ProcessingError(access_denied)`` unless ``uri`` may be read for ``patient_id``.

    Args:
        uri: the run's ``video_uri`` (for ``file://``, also call it again with the path
            resolved, see the module docstring).
        patient_id: the run's pseudonymous patient id.
        roots: the allowed input roots.
    """
    roots = tuple(roots)
    if len(uri) > _MAX_URI:
        raise _deny(uri, f"longer than {_MAX_URI} characters")
    if _FORBIDDEN.search(uri):
        raise _deny(uri, "control characters or backslashes")
    split = urlsplit(uri)
    if split.scheme not in SCHEMES:
        raise _deny(uri, f"scheme {split.scheme or 'none'!r} is not allowed (s3:// or file://)")
    if split.query or split.fragment:
        raise _deny(uri, "a query or fragment is not part of an object's name")
    if split.scheme == "s3":
        bucket = split.netloc
        if not _BUCKET.match(bucket):
            raise _deny(uri, f"{bucket!r} is not a bucket name")
        path = unquote(split.path.lstrip("/"))  # as scanflow.storage.S3Store reads the key
        segments = path.split("/")
    else:
        bucket = ""
        if split.netloc not in {"", "localhost"}:
            raise _deny(uri, f"file:// on another host ({split.netloc!r})")
        path = unquote(split.path)  # as scanflow.storage.FileStore reads the path
        if not path.startswith("/"):
            raise _deny(uri, "not an absolute path")
        segments = path[1:].split("/")
    if _FORBIDDEN.search(path):
        raise _deny(uri, "percent-encoded control characters or backslashes")
    if unquote(path) != path:
        raise _deny(uri, "percent-encoded twice")
    if any(s in {"", ".", ".."} for s in segments):
        raise _deny(uri, "'..', '.' or empty path segments")
    for i, segment in enumerate(segments[:-2]):
        if segment.lower() == "patients" and segments[i + 1] != patient_id:
            raise _deny(uri, f"the path names another patient than the run's ({patient_id})")
    parts = tuple(segments)
    if not any(root.covers(split.scheme, bucket, parts) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "none"
        raise _deny(
            uri,
            f"outside the allowed input roots ({allowed}); "
            "set SCANFLOW_INPUT_ROOTS where the flow runs to allow it",
        )


def local_name(uri: str, scan_id: str) -> str:
    """The name the input gets on local disk: the scan id and the upload's extension.

    Messages and logs name the local file; the upload's own name may carry a person's
    name, so it never reaches them."""
    suffix = PurePosixPath(unquote(urlsplit(uri).path)).suffix.lower()
    if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        suffix = ".mp4"
    return scan_id + suffix
