"""Input URIs are checked against the allowed roots before anything is read: the pure check
(scanflow/access.py), the setting that configures it, and refusals through the real flow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cv.errors import ProcessingError, Reason, reason_from_message
from cv.synthetic import SyntheticScan
from flows.process_scan import process_scan
from scanflow.access import check_input_uri, local_name, parse_root
from scanflow.settings import Settings

ROOTS = [parse_root("s3://uploads/patients/"), parse_root("file:///srv/scans")]
P = "pt-1"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://uploads/patients/pt-1/scans/s-1.mp4",
        "s3://uploads/patients/pt-1/scans/s%201.mp4",  # encoded once, as keys may be
        "s3://uploads/patients/pt-1/other/s-1.mp4",
        "file:///srv/scans/a.mp4",
        "file://localhost/srv/scans/a.mp4",
        "file:///srv/scans/patients/pt-1/scans/s.mp4",
        "file:///srv/scans/100%.mp4",  # a bare % is a character
    ],
)
def test_uris_under_a_root_are_allowed(uri: str) -> None:
    check_input_uri(uri, P, ROOTS)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        # traversal, plain and percent-encoded (the stores decode once)
        ("s3://uploads/patients/pt-1/scans/../../pt-2/scans/x.mp4", "'..'"),
        ("s3://uploads/patients/pt-1/scans/..%2F..%2Fpt-2%2Fscans%2Fx.mp4", "'..'"),
        ("s3://uploads/patients/pt-1/scans/%2e%2e/x.mp4", "'..'"),
        ("s3://uploads/patients/pt-1/scans/%252e%252e/x.mp4", "twice"),
        ("s3://uploads/patients/pt-1/./scans/x.mp4", "'.'"),
        ("s3://uploads/patients//pt-1/scans/x.mp4", "empty"),
        ("file:///srv/scans/../../etc/passwd", "'..'"),
        ("file:///srv/scans/%2e%2e/%2E%2E/etc/passwd", "'..'"),
        ("file:///srv/scans/a%5c..%5c..%5cetc", "backslash"),
        ("file:///srv/scans/a\\b.mp4", "backslash"),
        ("file:///srv/scans/a%00.mp4", "control"),
        ("file:///srv/scans/a\n.mp4", "control"),
        # another patient's prefix, however it is spelt
        ("s3://uploads/patients/pt-2/scans/x.mp4", "another patient"),
        ("s3://uploads/patients%2Fpt-2%2Fscans%2Fx.mp4", "another patient"),
        ("s3://uploads/patients/Pt-1/scans/x.mp4", "another patient"),
        ("file:///srv/scans/Patients/pt-2/scans/x.mp4", "another patient"),
        # outside the roots
        ("s3://other-bucket/patients/pt-1/scans/x.mp4", "outside"),
        ("s3://uploads/patients-old/pt-1/x.mp4", "outside"),
        ("s3://uploads/tmp/x.mp4", "outside"),
        ("s3://uploads/patients", "outside"),
        ("file:///etc/passwd", "outside"),
        ("file:///srv/scansx/a.mp4", "outside"),
        ("file:///srv/scans", "outside"),
        # not an object name at all
        ("s3://uploads/patients/pt-1/scans/x.mp4?versionId=1", "query"),
        ("s3://uploads/patients/pt-1/scans/x.mp4#t=3", "query or fragment"),
        ("s3://someone@uploads/patients/pt-1/scans/x.mp4", "bucket"),
        ("s3://uploads:9000/patients/pt-1/scans/x.mp4", "bucket"),
        ("file://evil.example/srv/scans/a.mp4", "another host"),
        ("file:srv/scans/a.mp4", "absolute"),
        # other schemes
        ("http://127.0.0.1:9/x.mp4", "scheme 'http'"),
        ("https://uploads.s3.amazonaws.com/patients/pt-1/scans/x.mp4", "scheme 'https'"),
        ("gs://uploads/patients/pt-1/scans/x.mp4", "scheme 'gs'"),
        ("ftp://host/x.mp4", "scheme 'ftp'"),
        ("data:video/mp4;base64,AAAA", "scheme 'data'"),
        ("/srv/scans/a.mp4", "scheme 'none'"),
        ("", "scheme 'none'"),
        ("s3://uploads/patients/pt-1/scans/" + "a" * 3000 + ".mp4", "longer"),
    ],
)
def test_refused_uris_name_why(uri: str, why: str) -> None:
    with pytest.raises(ProcessingError) as err:
        check_input_uri(uri, P, ROOTS)
    assert err.value.reason is Reason.ACCESS_DENIED
    assert why in err.value.message, err.value.message


def test_no_roots_allow_nothing() -> None:
    with pytest.raises(ProcessingError, match="allowed input roots \\(none\\)"):
        check_input_uri("s3://uploads/patients/pt-1/scans/x.mp4", P, [])


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("s3://uploads", "s3://uploads"),
        ("s3://uploads/patients/", "s3://uploads/patients"),
        ("file:///srv/scans/", "file:///srv/scans"),
        ("file://localhost/srv/scans", "file:///srv/scans"),
    ],
)
def test_roots_parse(text: str, normal: str) -> None:
    assert str(parse_root(text)) == normal


@pytest.mark.parametrize(
    "text",
    [
        "http://uploads/x",
        "s3://Bad_Bucket/x",
        "file:///",
        "file://host/srv",
        "file:relative/dir",
        "s3://uploads/a/../b",
        "s3://uploads/x?y=1",
        "",
    ],
)
def test_bad_roots_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_root(text)


def test_the_local_copy_is_named_after_the_scan() -> None:
    assert local_name("file:///up/Jane%20Roe%201984.MOV", "scan-7") == "scan-7.mov"
    assert local_name("s3://b/patients/p/scans/s.mp4", "s") == "s.mp4"
    assert local_name("s3://b/k/no-extension", "s") == "s.mp4"
    assert local_name("s3://b/k/x.%2F..%2Fetc", "s") == "s.mp4"


# -- the setting ---------------------------------------------------------------------------


def test_default_roots_are_the_samples_and_uploads_folders_of_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SCANFLOW_INPUT_ROOTS", raising=False)
    monkeypatch.setenv("SCANFLOW_HOME", str(tmp_path))
    roots = Settings().allowed_input_roots
    assert roots == [(tmp_path / "samples").as_uri(), (tmp_path / "uploads").as_uri()]
    parsed = [parse_root(r) for r in roots]
    # `make run` (scanflow demo) submits <home>/samples/sample-scan.mp4
    check_input_uri((tmp_path / "samples" / "sample-scan.mp4").as_uri(), "demo-patient", parsed)
    for elsewhere in ("/etc/passwd", str(tmp_path / "results" / "x.mp4")):
        with pytest.raises(ProcessingError):
            check_input_uri(Path(elsewhere).as_uri(), "demo-patient", parsed)


def test_roots_come_as_json_or_a_list_and_typos_fail_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", json.dumps(["s3://a-bucket/patients"]))
    assert Settings().allowed_input_roots == ["s3://a-bucket/patients"]
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", "s3://a-bucket/patients/, s3://b-bucket")
    assert Settings().allowed_input_roots == ["s3://a-bucket/patients/", "s3://b-bucket"]
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", "s3://a-bucket/patients https://x")
    with pytest.raises(ValidationError, match="https://x"):
        Settings()


def test_a_linked_root_is_also_allowed_by_its_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.setenv("SCANFLOW_INPUT_ROOTS", (tmp_path / "link").as_uri())
    roots = Settings().allowed_input_roots
    assert roots == [(tmp_path / "link").as_uri(), (tmp_path / "real").resolve().as_uri()]


# -- through the flow ----------------------------------------------------------------------


def _run(scan_id: str, patient: str, uri: str) -> tuple[object, str]:
    state = process_scan(scan_id, patient, uri, return_state=True)
    return state, state.message or ""


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server", "results_dir")
def test_refused_uris_fail_the_run_before_anything_is_read(
    tmp_path: Path,
    good_scan: SyntheticScan,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    allowed = tmp_path / "uploads"
    outside = tmp_path / "elsewhere"
    allowed.mkdir()
    outside.mkdir()
    (outside / "scan.mp4").write_bytes(good_scan.path.read_bytes())
    (allowed / "link.mp4").symlink_to(outside / "scan.mp4")  # a link leading out of the root
    (allowed / "patients" / "pt-2" / "scans").mkdir(parents=True)
    (allowed / "patients" / "pt-2" / "scans" / "s.mp4").write_bytes(b"x")
    # moto has no bucket "uploads-missing": had anything been read, the run would end
    # not_found, not access_denied
    monkeypatch.setenv(
        "SCANFLOW_INPUT_ROOTS", json.dumps([allowed.as_uri(), "s3://uploads-missing/patients"])
    )
    refused = {
        "other-patient-s3": "s3://uploads-missing/patients/pt-2/scans/s.mp4",
        "other-patient-file": (allowed / "patients" / "pt-2" / "scans" / "s.mp4").as_uri(),
        "outside-file": (outside / "scan.mp4").as_uri(),
        "system-file": "file:///etc/passwd",
        "encoded-traversal": allowed.as_uri() + "/%2e%2e/elsewhere/scan.mp4",
        "link-out": (allowed / "link.mp4").as_uri(),
        "http": "http://127.0.0.1:9/scan.mp4",
    }
    for case, uri in refused.items():
        state, message = _run(f"denied-{case}", "pt-1", uri)
        assert reason_from_message(message) is Reason.ACCESS_DENIED, (case, message)
        assert "is not allowed" in message
    # the same check lets the right patient's key through (and then finds nothing there)
    _, message = _run("allowed-missing", "pt-1", "s3://uploads-missing/patients/pt-1/scans/s.mp4")
    assert reason_from_message(message) is Reason.NOT_FOUND, message


@pytest.mark.integration
@pytest.mark.usefixtures("prefect_server")
def test_scanflow_process_reads_the_file_it_is_given(
    tmp_path: Path,
    good_scan: SyntheticScan,
    results_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The default roots are <home>/samples and <home>/uploads; `scanflow process PATH`
    allows PATH's folder for its own run, since its user named the file."""
    from scanflow.cli.main import main

    monkeypatch.delenv("SCANFLOW_INPUT_ROOTS")  # restored after the test
    elsewhere = tmp_path / "Downloads" / "my-scan.mp4"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(good_scan.path.read_bytes())
    assert main(["process", str(elsewhere), "--patient-id", "cli-patient"]) == 0
    assert capsys.readouterr().out.strip().endswith("cli-patient/my-scan/manifest.json")
    assert (results_dir / "cli-patient" / "my-scan" / "manifest.json").is_file()
    roots = json.loads(os.environ["SCANFLOW_INPUT_ROOTS"])
    assert roots[-1] == elsewhere.parent.resolve().as_uri()
