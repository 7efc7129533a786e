"""Result versions: a scan processed again (a backfill, a platform re-run) keeps what the
previous processing produced, so that every manifest says which model and code made the
files it names.

    <scan>/manifest.json                            the current result
    <scan>/versions/<completed>-<model sha12>-<run>/ an earlier one: its files, and a
                                                    manifest whose URIs point there

Before the flow writes anything for a scan that already has a manifest, archive_previous
copies the scan's files into a version folder (idempotent: a retried run finds it done);
the new manifest lists it in ``previous_versions`` and keeps the scan's place in the
patient's history (``scanned_at``). A re-processing that fails puts the previous files back
(restore_previous), so the live manifest never names files another run wrote. (Files that
run added and the previous result did not have stay, named by no manifest: the scan task
roles may write results, not delete them.)
"""

from __future__ import annotations

import mimetypes
from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from scanflow.contracts.manifest import MANIFEST_NAME, Manifest, manifest_uri, read_manifest
from scanflow.storage import join, store_for

VERSIONS = "versions"
NOT_VERSIONED = frozenset({VERSIONS, "shadow"})  # a scan's history and its shadow results


class PreviousResult(BaseModel):
    """What the scan's previous processing left, once archived."""

    scanned_at: datetime
    version_uri: str
    manifest_uri: str
    previous_versions: list[str]
    model_sha256: str
    code_version: str


def version_name(manifest: Manifest) -> str:
    """Unique to the processing that wrote the manifest: two of one scan can complete in
    the same second (a small scan re-run at once) and must not share a folder (the second
    would find it "done" and never be archived)."""
    done = manifest.completed_at
    run = f"-{manifest.flow_run_id[:8]}" if manifest.flow_run_id else ""
    return f"{done:%Y%m%dT%H%M%S}.{done.microsecond // 1000:03d}Z-{manifest.model.sha256[:12]}{run}"


def _rewrite(data: bytes, rel: str, old: str, new: str) -> bytes:
    """A JSON file's URIs under ``old`` moved under ``new`` (the manifest's own list of
    versions is kept as it is)."""
    if rel == MANIFEST_NAME:
        manifest = Manifest.model_validate_json(data)
        moved = Manifest.model_validate_json(data.decode().replace(old, new))
        moved.previous_versions = manifest.previous_versions
        return moved.model_dump_json(indent=2).encode()
    if rel.endswith(".json"):
        return data.decode().replace(old, new).encode()
    return data


def copy_result(src: str, dst: str) -> int:
    """Copy a scan's result files from ``src`` to ``dst`` (not its versions or shadow
    results), the manifest last; returns how many files were copied."""
    store = store_for(src)
    prefix = src.rstrip("/") + "/"
    rels = [
        u[len(prefix) :]
        for u in store.list_files(src)
        if u.startswith(prefix) and u[len(prefix) :].split("/", 1)[0] not in NOT_VERSIONED
    ]
    rels.sort(key=lambda r: r == MANIFEST_NAME)  # written last: it marks the copy complete
    for rel in rels:
        data = _rewrite(store.get_bytes(prefix + rel), rel, prefix, dst.rstrip("/") + "/")
        store.put_bytes(join(dst, rel), data, mimetypes.guess_type(rel)[0])
    return len(rels)


@task(name="archive-previous", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def archive_previous(scan_uri: str) -> PreviousResult | None:
    """Archive the scan's current result, if it has one, before it is processed again."""
    current = manifest_uri(scan_uri)
    if not store_for(current).exists(current):
        return None  # a new scan: the usual case
    manifest = read_manifest(current)
    version_uri = join(scan_uri, VERSIONS, version_name(manifest))
    if not store_for(version_uri).exists(manifest_uri(version_uri)):
        copy_result(scan_uri, version_uri)
    return PreviousResult(
        scanned_at=manifest.scanned,
        version_uri=version_uri,
        manifest_uri=manifest_uri(version_uri),
        previous_versions=[*manifest.previous_versions, manifest_uri(version_uri)],
        model_sha256=manifest.model.sha256,
        code_version=manifest.code_version,
    )


@task(name="restore-previous", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def restore_previous(scan_uri: str, previous: PreviousResult) -> int:
    """Put the archived result back where it was (after a re-processing failed)."""
    return copy_result(previous.version_uri, scan_uri)
