"""``scanflow model dataset | list`` (scanflow/cli/models.py) run in-process through
``scanflow.cli.main.main``: the dataset a command renders, counted on disk; the registry
listing with the shipped package, and the production state it prints when the Prefect API
does not answer (a closed loopback port) and, against the session's real server, when
nothing is promoted. ``train``, ``publish`` and ``promote`` are run by
tests/scanflow/models/test_registry.py and tests/support/models.py."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanflow.cli.main import main
from scanflow.local.loopback import free_port
from scanflow.models.registry import DEFAULT_PACKAGE, PRODUCTION_VARIABLE, REPO_MODELS


def test_dataset_prints_the_frames_it_wrote_per_split_and_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "views"
    argv = ["model", "dataset", str(out), "--train-scans", "1", "--heldout-scans", "1"]
    assert main([*argv, "--width", "96", "--height", "64", "--fps", "2", "--seconds", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == str(out.resolve())
    for split, line in zip(("train", "heldout"), lines[:2], strict=True):
        on_disk = Counter(p.parent.name for p in (out / split).glob("*/*.jpg"))
        total, *pairs = line.removeprefix(f"{split}: ").split("  ")
        assert total == f"{sum(on_disk.values())} frames"
        assert dict(p.split("=") for p in pairs) == {k: str(v) for k, v in on_disk.items()}
        assert on_disk["other"] >= 8  # the off-target frames of each scan
    provenance = json.loads((out / "dataset.json").read_text())
    assert provenance["synthetic"] is True


def test_a_bad_dataset_argument_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["model", "dataset", str(tmp_path / "odd"), "--width", "95", "--height", "64"]
    assert main([*argv, "--train-scans", "1", "--heldout-scans", "0", "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "scanflow model dataset: yuv420p needs even sides, got 95x64"


def test_publishing_something_that_is_no_package_is_a_model_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    registry = tmp_path / "registry"
    assert main(["model", "publish", str(junk), "--registry", registry.as_uri()]) == 1
    err = capsys.readouterr().err
    assert err.startswith("scanflow model: [model_error] model package junk.zip")
    assert not registry.exists() or not any(registry.iterdir())


def _listing(out: str) -> dict[str, str]:
    """The rows of ``model list`` under its header: name -> the whole line."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["name", "version"])
    return {line.split()[1]: line for line in lines[header + 1 :] if line[:2] in ("* ", "  ")}


def test_list_shows_the_shipped_package_and_says_when_production_is_unknown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")  # nobody
    monkeypatch.delenv("SCANFLOW_MODEL_REGISTRY_URI", raising=False)
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"registry: {REPO_MODELS.as_uri()}"
    row = _listing(out)[DEFAULT_PACKAGE.name]
    assert row.split()[2:4] == [DEFAULT_PACKAGE.version, DEFAULT_PACKAGE.sha256[:12]]
    assert row.split()[-1] == "synthetic"
    assert out.splitlines()[-1] == "production: unknown (the Prefect API does not answer)"


def test_list_of_an_empty_registry_still_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    monkeypatch.setenv("SCANFLOW_MODEL_REGISTRY_URI", (tmp_path / "from-settings").as_uri())
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"registry: {(tmp_path / 'from-settings').as_uri()}"
    assert _listing(out) == {}  # the header only
    assert main(["model", "list", "--json", "--registry", str(tmp_path / "given")]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["registry"] == (tmp_path / "given").as_uri()  # a path becomes a URI
    assert listing["models"] == [] and listing["production"] is None


@pytest.fixture
def nothing_promoted(prefect_server: str) -> Iterator[None]:
    from prefect.variables import Variable

    Variable.unset(PRODUCTION_VARIABLE)
    yield
    Variable.unset(PRODUCTION_VARIABLE)


@pytest.mark.integration
def test_list_says_the_default_serves_when_nothing_is_promoted(
    nothing_promoted: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SCANFLOW_MODEL_REGISTRY_URI", raising=False)
    assert main(["model", "list"]) == 0
    out = capsys.readouterr().out
    assert _listing(out)[DEFAULT_PACKAGE.name].startswith("* ")  # what runs use
    assert (  # followed by the promotions and rollbacks other tests left on record, if any
        f"production: nothing promoted; runs use the default {DEFAULT_PACKAGE.name} "
        f"{DEFAULT_PACKAGE.version}"
    ) in out.splitlines()
    assert main(["model", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["production"] is None
    assert listing["default"] == DEFAULT_PACKAGE.model_dump()
    shipped = [m for m in listing["models"] if m["sha256"] == DEFAULT_PACKAGE.sha256]
    assert len(shipped) == 1 and shipped[0]["synthetic"] is True
