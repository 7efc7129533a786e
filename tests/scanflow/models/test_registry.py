"""The registry (file:// and s3:// on moto's real S3 server), the local cache, and the
production model as a Prefect Variable on a real Prefect server, through the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
import torch
from prefect.variables import Variable

from cv.errors import ProcessingError, Reason
from cv.model.network import sha256_file
from scanflow.cli.main import main
from scanflow.contracts.options import ModelRef
from scanflow.models.registry import (
    DEFAULT_PACKAGE,
    PRODUCTION_VARIABLE,
    choose_model,
    fetch_package,
    list_models,
    load_package,
    production_model,
    publish_package,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def no_production_model(prefect_server: str) -> Iterator[None]:
    """Nothing promoted before the test, and nothing left promoted after it."""
    Variable.unset(PRODUCTION_VARIABLE)
    yield
    Variable.unset(PRODUCTION_VARIABLE)


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    name = f"models-{request.node.name.lower().replace('_', '-')}"[:60].rstrip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def test_publish_and_list_a_file_registry(package: Path, tmp_path: Path) -> None:
    registry = (tmp_path / "registry").as_uri()
    entry = publish_package(package, registry)
    assert entry.uri == f"{registry}/test-views/0.1.0/model.zip"
    assert (tmp_path / "registry/test-views/0.1.0/MODEL_CARD.md").is_file()
    listed = list_models(registry)
    assert [(e.name, e.version, e.sha256) for e in listed] == [
        ("test-views", "0.1.0", sha256_file(package))
    ]
    assert listed[0].synthetic and listed[0].heldout_accuracy is not None
    # publishing the same bytes again is fine; other bytes under the same version are not
    publish_package(package, registry)
    other = tmp_path / "other.zip"
    other.write_bytes(package.read_bytes() + b"\0")  # a zip tolerates trailing bytes
    with pytest.raises(ProcessingError, match="already published"):
        publish_package(other, registry)


def test_s3_package_is_fetched_once_verified_and_cached(
    package: Path, bucket: str, tmp_path: Path
) -> None:
    entry = publish_package(package, f"s3://{bucket}/registry")
    assert entry.uri == f"s3://{bucket}/registry/test-views/0.1.0/model.zip"
    assert [e.version for e in list_models(f"s3://{bucket}/registry")] == ["0.1.0"]
    cache = tmp_path / "cache"
    ref = entry.ref()
    local, spec = fetch_package(ref, cache)
    assert (cache / entry.sha256 / "model.zip").is_file()
    assert spec.name == "test-views" and local.sha256 == entry.sha256
    # the cached copy serves the next run, even with the bucket gone
    boto3.client("s3").delete_object(Bucket=bucket, Key="registry/test-views/0.1.0/model.zip")
    model = load_package(ref, cache, torch.device("cpu"))
    assert model.identity.name == "test-views"
    # a reference with another name or version than the package's is refused
    with pytest.raises(ProcessingError, match="asks for version"):
        fetch_package(ref.model_copy(update={"version": "9.9.9"}), cache)


def test_missing_s3_package_is_a_model_error(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(ProcessingError) as err:
        fetch_package(ModelRef(uri=f"s3://{bucket}/none.zip", sha256="a" * 64), tmp_path)
    assert err.value.reason is Reason.MODEL_ERROR and "none.zip" in err.value.message


def test_promote_switches_the_production_variable_and_list_shows_it(
    package: Path, tmp_path: Path, no_production_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = (tmp_path / "registry").as_uri()
    assert main(["model", "publish", str(package), "--registry", registry]) == 0
    assert choose_model(ModelRef())[0] == DEFAULT_PACKAGE
    uri = f"{registry}/test-views/0.1.0/model.zip"
    assert main(["model", "promote", uri]) == 1  # never shadowed: the gate refuses
    assert "never shadowed" in capsys.readouterr().err
    assert main(["model", "promote", uri, "--force"]) == 0
    value = Variable.get(PRODUCTION_VARIABLE)
    assert isinstance(value, dict)
    assert (value["uri"], value["sha256"]) == (uri, sha256_file(package))
    assert production_model() == ModelRef(
        uri=uri, name="test-views", version="0.1.0", sha256=sha256_file(package)
    )
    ref, why = choose_model(ModelRef())
    assert ref.name == "test-views" and "production" in why
    capsys.readouterr()
    assert main(["model", "list", "--registry", registry, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["production"]["sha256"] == sha256_file(package)
    assert [m["name"] for m in listing["models"]] == ["test-views"]
    assert main(["model", "list", "--registry", registry]) == 0
    text = capsys.readouterr().out
    assert "* test-views" in text and "production: test-views 0.1.0" in text


def test_promote_refuses_a_bad_package_and_keeps_production(
    make_package, tmp_path: Path, no_production_model: None, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    bad = make_package("nolabels", lambda d: (d / "labels.json").unlink())
    assert main(["model", "promote", str(bad)]) == 1
    assert "[model_error]" in capsys.readouterr().err
    assert Variable.get(PRODUCTION_VARIABLE) is None


def test_a_malformed_production_variable_is_a_model_error(no_production_model: None) -> None:
    Variable.set(PRODUCTION_VARIABLE, "view-classifier:latest", overwrite=True)
    with pytest.raises(ProcessingError) as err:
        production_model()
    assert err.value.reason is Reason.MODEL_ERROR and PRODUCTION_VARIABLE in err.value.message


def test_the_repository_registry_lists_the_default_model() -> None:
    from scanflow.models.registry import REPO_MODELS

    entries = list_models(REPO_MODELS.as_uri())
    default = [e for e in entries if e.sha256 == DEFAULT_PACKAGE.sha256]
    assert len(default) == 1 and default[0].synthetic


@pytest.fixture
def no_model_history(no_production_model: None) -> Iterator[None]:
    """No promotion or rollback on record before the test (other tests promote too)."""
    from prefect.client.orchestration import get_client

    from scanflow.models.registry import HISTORY_PREFIX

    def clear() -> None:
        with get_client(sync_client=True) as client:
            for v in client.read_variables(limit=None):
                if v.name.startswith(HISTORY_PREFIX):
                    client.delete_variable_by_name(v.name)

    clear()
    yield
    clear()


def test_rollback_unwinds_promotions_one_at_a_time_recording_who_and_why(
    package: Path,
    make_package: Callable[..., Path],
    no_model_history: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from scanflow.models.registry import model_history

    monkeypatch.setenv("SCANFLOW_OPERATOR", "dr-ops")
    assert main(["model", "rollback"]) == 2  # nothing promoted: nothing to roll back
    assert "no promotion to roll back" in capsys.readouterr().err
    second = make_package("second", lambda d: (d / "MODEL_CARD.md").write_text("v2\n"))
    assert sha256_file(second) != sha256_file(package)
    promote = ["model", "promote", "--force", "--reason"]
    assert main([*promote, "first trained", str(package)]) == 0
    assert main([*promote, "a better card", str(second)]) == 0
    production = production_model()
    assert production is not None and production.sha256 == sha256_file(second)

    assert main(["model", "rollback", "--reason", "the new one misbehaves"]) == 0
    production = production_model()
    assert production is not None and production.sha256 == sha256_file(package)
    assert "back to test-views 0.1.0" in capsys.readouterr().out
    assert main(["model", "rollback", "--reason", "back to the shipped one"]) == 0
    assert production_model() is None and choose_model(ModelRef())[0] == DEFAULT_PACKAGE
    assert main(["model", "rollback"]) == 2  # every promotion unwound

    history = model_history()
    assert [(h["action"], h["by"], h["reason"].split(" [")[0]) for h in history] == [
        ("promote", "dr-ops", "first trained"),
        ("promote", "dr-ops", "a better card"),
        ("rollback", "dr-ops", "the new one misbehaves"),
        ("rollback", "dr-ops", "back to the shipped one"),
    ]
    assert history[1]["previous"]["sha256"] == sha256_file(package)
    assert history[3]["model"] is None  # the shipped default
    capsys.readouterr()
    assert main(["model", "list"]) == 0
    listed = capsys.readouterr().out
    assert "promotions and rollbacks (latest last):" in listed
    assert "rollback test-views (default)" not in listed
    assert "by dr-ops: the new one misbehaves" in listed


def test_evaluate_measures_candidate_and_another_on_the_same_frames(
    package: Path,
    view_dataset: Path,
    make_package: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A package whose labels are shuffled (a worse candidate) measures worse than the one
    trained honestly, on the held-out frames of the dataset both saw."""

    def shuffle(folder: Path) -> None:
        labels = json.loads((folder / "labels.json").read_text())
        names = labels["labels"] if isinstance(labels, dict) else labels
        rotated = names[1:] + names[:1]
        if isinstance(labels, dict):
            labels["labels"] = rotated
        else:
            labels = rotated
        (folder / "labels.json").write_text(json.dumps(labels))

    shuffled = make_package("shuffled", shuffle)
    heldout = sum(1 for f in (view_dataset / "heldout").rglob("*") if f.is_file())
    args = ["model", "evaluate", str(package), str(view_dataset), "--against", str(shuffled)]
    assert main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    good, bad = got["candidate"], got["against"]
    assert got["frames"] == good["frames"] == bad["frames"] == heldout
    assert good["accuracy"] > bad["accuracy"] + 0.3
    assert 0.0 <= good["ece"] <= 1.0 and 0.0 <= bad["ece"] <= 1.0
    assert bad["ece"] > good["ece"]  # just as sure, and wrong
    assert sum(map(sum, good["confusion"])) == heldout
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "calibration error (ECE)" in text and "confusion, candidate" in text
    assert main(["model", "evaluate", str(package), str(view_dataset / "none")]) == 2
