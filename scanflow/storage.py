"""The results store and scan inputs behind one small interface: ``file://`` and ``s3://``.

Every method takes a full URI, so tasks hand each other URIs and never care where the bytes
live. Writes are atomic (a file is renamed into place; an S3 PUT is all or nothing), which
is what lets the manifest's presence mean "complete".

Errors are mapped at this edge to ScanError reasons: not_found, access_denied, or
storage_error for everything else (disk full, endpoint down after retries).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from cv.errors import ProcessingError, Reason, ScanError, scan_error


class Store(Protocol):
    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> str: ...
    def upload(self, path: Path, uri: str, content_type: str | None = None) -> str: ...
    def get_bytes(self, uri: str) -> bytes: ...
    def download(self, uri: str, dest: Path) -> Path: ...
    def exists(self, uri: str) -> bool: ...
    def list_dirs(self, uri: str) -> list[str]: ...
    def list_files(self, uri: str) -> list[str]: ...
    def size(self, uri: str) -> int: ...


def join(root: str, *parts: str) -> str:
    """Join URI path segments with single slashes."""
    out = root.rstrip("/")
    for p in parts:
        out += "/" + p.strip("/")
    return out


def to_uri(path_or_uri: str) -> str:
    """A local path becomes a ``file://`` URI; URIs pass through."""
    if "://" in path_or_uri:
        return path_or_uri
    return Path(path_or_uri).resolve().as_uri()


class FileStore:
    """A folder on local disk."""

    @staticmethod
    def path(uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise ValueError(f"not a file:// URI: {uri}")
        return Path(unquote(parsed.path))

    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> str:
        dest = self.path(uri)
        with _storage_errors(uri, writing=True):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return uri

    def upload(self, path: Path, uri: str, content_type: str | None = None) -> str:
        dest = self.path(uri)
        if dest.resolve() == path.resolve():
            return uri
        with _storage_errors(uri, writing=True):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return uri

    def get_bytes(self, uri: str) -> bytes:
        with _storage_errors(uri):
            return self.path(uri).read_bytes()

    def download(self, uri: str, dest: Path) -> Path:
        src = self.path(uri)
        with _storage_errors(uri):
            if not src.is_file():
                raise FileNotFoundError(errno.ENOENT, "no such file", str(src))
        return src  # already local: no copy

    def exists(self, uri: str) -> bool:
        return self.path(uri).exists()

    def list_dirs(self, uri: str) -> list[str]:
        base = self.path(uri)
        if not base.is_dir():
            return []
        return sorted(join(uri, p.name) for p in base.iterdir() if p.is_dir())

    def list_files(self, uri: str) -> list[str]:
        """Every file under ``uri``, at any depth (not the ``.name.`` files being written)."""
        base = self.path(uri)
        if not base.is_dir():
            return []
        return sorted(
            join(uri, *p.relative_to(base).parts)
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def size(self, uri: str) -> int:
        with _storage_errors(uri):
            return self.path(uri).stat().st_size


class _storage_errors:
    """Map OS errors to scan reasons, naming the URI. Reading, a missing or forbidden file
    is the input's (``not_found``, ``access_denied``); writing results, every failure is
    ours (``storage_error``), as S3Store reports its own."""

    def __init__(self, uri: str, *, writing: bool = False) -> None:
        self.uri = uri
        self.writing = writing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or not isinstance(exc, OSError):
            return
        if self.writing and exc.errno != errno.ENOSPC:
            raise ProcessingError(
                Reason.STORAGE_ERROR, f"cannot write {self.uri}: {exc.strerror or exc}."
            ) from exc
        if isinstance(exc, FileNotFoundError):
            raise scan_error(Reason.NOT_FOUND, f"{self.uri} does not exist.") from exc
        if isinstance(exc, PermissionError):
            raise scan_error(Reason.ACCESS_DENIED, f"no permission to access {self.uri}.") from exc
        if exc.errno == errno.ENOSPC:
            raise ProcessingError(
                Reason.STORAGE_ERROR, f"cannot write {self.uri}: the results disk is full."
            ) from exc
        raise ProcessingError(Reason.STORAGE_ERROR, f"{self.uri}: {exc.strerror or exc}.") from exc


# What boto3 retries (checked against moto behind a fault-injecting proxy, tests/system/faults):
# 500/502/503/504, throttling codes (SlowDown among them), RequestTimeout and connection
# errors, each call up to 9 attempts with full-jitter backoff (rand * min(2**n, 20) s:
# about a minute in all, 90 s at most), within the client's retry quota (500 tokens, 5 a
# retry, refunded by successes). "adaptive" adds client-side rate limiting after SlowDown.
# A call that still fails surfaces as storage_error; download_scan's task retries then try
# twice more, the other stages fail the run (no manifest is written).
S3_RETRIES = {"max_attempts": 8, "mode": "adaptive"}  # max_attempts counts retries


@functools.cache
def _s3_client() -> Any:
    # Created on first use, never at import. The endpoint comes from boto3's own settings
    # (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL), so a loopback S3 needs no code here.
    import boto3
    from botocore.config import Config

    config = Config(
        retries=dict(S3_RETRIES),
        connect_timeout=5,
        read_timeout=60,
        tcp_keepalive=True,
    )
    return boto3.client("s3", config=config)


class S3Store:
    """An S3 bucket (or an S3-compatible endpoint)."""

    @staticmethod
    def split(uri: str) -> tuple[str, str]:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3:// URI: {uri}")
        return parsed.netloc, unquote(parsed.path.lstrip("/"))

    def _call(self, uri: str, fn: str, **kwargs: Any) -> Any:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(_s3_client(), fn)(**kwargs)
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise _s3_error(uri, fn, exc) from exc

    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> str:
        bucket, key = self.split(uri)
        extra = {"ContentType": content_type} if content_type else {}
        self._call(uri, "put_object", Bucket=bucket, Key=key, Body=data, **extra)
        return uri

    def upload(self, path: Path, uri: str, content_type: str | None = None) -> str:
        bucket, key = self.split(uri)
        extra = {"ExtraArgs": {"ContentType": content_type}} if content_type else {}
        self._call(uri, "upload_file", Filename=str(path), Bucket=bucket, Key=key, **extra)
        return uri

    def get_bytes(self, uri: str) -> bytes:
        bucket, key = self.split(uri)
        body: bytes = self._call(uri, "get_object", Bucket=bucket, Key=key)["Body"].read()
        return body

    def download(self, uri: str, dest: Path) -> Path:
        bucket, key = self.split(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._call(uri, "download_file", Bucket=bucket, Key=key, Filename=str(dest))
        return dest

    def exists(self, uri: str) -> bool:
        try:
            self.size(uri)
        except ScanError as exc:  # not_found / access_denied both mean "not there"
            if exc.reason in (Reason.NOT_FOUND, Reason.ACCESS_DENIED):
                return False
            raise  # S3 down is not "absent"
        return True

    def list_dirs(self, uri: str) -> list[str]:
        bucket, key = self.split(uri)
        prefix = key.rstrip("/") + "/"
        out: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call(
                uri, "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **token
            )
            out += [
                f"s3://{bucket}/{p['Prefix'].rstrip('/')}" for p in page.get("CommonPrefixes", [])
            ]
            if not page.get("IsTruncated"):
                return sorted(out)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def list_files(self, uri: str) -> list[str]:
        """Every object under the prefix ``uri``: ListObjectsV2 only (s3:ListBucket, which
        the scan roles have on the results bucket; not the versioning calls list_objects
        makes)."""
        bucket, key = self.split(uri)
        prefix = key.rstrip("/") + "/"
        out: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self._call(uri, "list_objects_v2", Bucket=bucket, Prefix=prefix, **token)
            out += [f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(out)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def size(self, uri: str) -> int:
        bucket, key = self.split(uri)
        return int(self._call(uri, "head_object", Bucket=bucket, Key=key)["ContentLength"])

    def presign(self, uri: str, expires_s: int) -> str:
        """A URL anyone holding it may GET the object with, for ``expires_s`` seconds."""
        bucket, key = self.split(uri)
        return str(
            self._call(
                uri,
                "generate_presigned_url",
                ClientMethod="get_object",
                Params={"Bucket": bucket, "Key": key},
                ExpiresIn=expires_s,
            )
        )

    def list_objects(self, uri: str) -> Iterator[dict[str, Any]]:
        """Every object under ``uri`` (a bucket or a prefix), a page of 1000 at a time: its
        latest version's entry in a versioned bucket (with VersionId), else ListObjectsV2's
        (Key, ETag, LastModified, Size)."""
        bucket, prefix = self.split(uri)
        status = self._call(uri, "get_bucket_versioning", Bucket=bucket).get("Status")
        versioned = status in ("Enabled", "Suspended")
        fn = "list_object_versions" if versioned else "list_objects_v2"
        token: dict[str, str] = {}
        while True:
            page = self._call(uri, fn, Bucket=bucket, Prefix=prefix, **token)
            if versioned:
                yield from (v for v in page.get("Versions", []) if v.get("IsLatest"))
            else:
                yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            if versioned:
                token = {
                    "KeyMarker": page["NextKeyMarker"],
                    "VersionIdMarker": page["NextVersionIdMarker"],
                }
            else:
                token = {"ContinuationToken": page["NextContinuationToken"]}


_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden"})
_WRITES = frozenset({"put_object", "upload_file"})


def _s3_error(uri: str, fn: str, exc: Exception) -> ScanError:
    """The scan reason for a boto3 error that outlived the client's retries.

    upload_file wraps S3's answer in S3UploadFailedError and download_file a broken stream
    in RetriesExceededError: the answer is found in the exception's chain. A missing or
    forbidden object is the upload's problem when reading; when writing results it is ours.
    """
    from botocore.exceptions import ClientError

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = getattr(seen, "last_exception", None) or seen.__cause__ or seen.__context__
    answer = next((e for e in chain if isinstance(e, ClientError)), None)
    if answer is None:
        root = chain[-1]
        return ProcessingError(
            Reason.STORAGE_ERROR,
            f"S3 {fn} on {uri} failed after retries ({type(root).__name__}).",
        )
    code = str(answer.response.get("Error", {}).get("Code", "")) or "error"
    meta = answer.response.get("ResponseMetadata", {})
    if fn not in _WRITES:
        if code in _NOT_FOUND:
            return scan_error(Reason.NOT_FOUND, f"{uri} does not exist.")
        if code in _DENIED:
            return scan_error(Reason.ACCESS_DENIED, f"access to {uri} was denied.")
    attempts = int(meta.get("RetryAttempts", 0)) + 1
    status = meta.get("HTTPStatusCode", "?")
    return ProcessingError(
        Reason.STORAGE_ERROR,
        f"S3 answered {code} (HTTP {status}) to {fn} on {uri}"
        f"{f' after {attempts} attempts' if attempts > 1 else ''}.",
    )


_STORES: dict[str, Store] = {"file": FileStore(), "s3": S3Store()}


def store_for(uri: str) -> Store:
    """The store that serves ``uri``'s scheme."""
    scheme = urlparse(uri).scheme
    try:
        return _STORES[scheme]
    except KeyError:
        raise ProcessingError(
            Reason.STORAGE_ERROR, f"unsupported URI scheme in {uri!r}; use file:// or s3://."
        ) from None
