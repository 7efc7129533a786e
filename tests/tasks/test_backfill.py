"""Which past scans a backfill takes, and when one is done (tasks/backfill.py), in a file://
results store; the runs themselves: tests/system/test_backfill.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from scanflow.contracts.manifest import Manifest
from tasks.backfill import past_scans, run_key
from tests.support.manifests import sample_manifest

NOW = datetime.now(UTC)


def _write(root: Path, m: Manifest) -> None:
    folder = root / m.patient_id / m.scan_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(m.model_dump_json())


def _results(root: Path) -> None:
    _write(root, sample_manifest("b-new", "pt-1", NOW - timedelta(days=1)))
    # processed again yesterday, scanned 40 days ago: it keeps its place
    old = sample_manifest("a-old", "pt-1", NOW - timedelta(days=1))
    _write(root, old.model_copy(update={"scanned_at": NOW - timedelta(days=40)}))
    _write(root, sample_manifest("c-only", "pt-0", NOW - timedelta(days=5)))
    (root / "pt-1" / "d-unfinished" / "frames").mkdir(parents=True)  # no manifest
    (root / "_backfill").mkdir()  # reports, not a patient
    (root / "_backfill" / "x.json").write_text("{}")


def test_past_scans_go_by_patient_then_by_when_they_were_scanned(tmp_path: Path) -> None:
    _results(tmp_path)
    scans = past_scans(tmp_path.as_uri())
    assert [(s.patient_id, s.scan_id) for s in scans] == [
        ("pt-0", "c-only"),
        ("pt-1", "a-old"),
        ("pt-1", "b-new"),
    ]
    assert scans[1].scan_uri == (tmp_path / "pt-1" / "a-old").as_uri()


def test_since_and_patient_narrow_the_selection(tmp_path: Path) -> None:
    _results(tmp_path)
    recent = past_scans(tmp_path.as_uri(), since=NOW - timedelta(days=10))
    assert [s.scan_id for s in recent] == ["c-only", "b-new"]  # a-old was scanned before
    theirs = past_scans(tmp_path.as_uri(), patient_id="pt-0")
    assert [s.scan_id for s in theirs] == ["c-only"]
    assert past_scans(tmp_path.as_uri(), patient_id="nobody") == []


def test_a_scan_is_done_when_its_manifest_names_the_model_and_the_code(tmp_path: Path) -> None:
    _results(tmp_path)
    scan = past_scans(tmp_path.as_uri(), patient_id="pt-0")[0]
    assert scan.done(scan.model_sha256, scan.code_version)
    assert not scan.done("f" * 64, scan.code_version)
    assert not scan.done(scan.model_sha256, "another-commit")
    key = run_key(scan, "f" * 64, "0.1.0+g1")
    assert key == "backfill/pt-0/c-only/ffffffffffffffff/0.1.0+g1"
    assert run_key(scan, "f" * 64, "0.1.0+g2") != key
