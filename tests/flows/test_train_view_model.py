"""train-view-model (flows/train_view_model.py) as `scanflow model train` runs it, on the
session's Prefect server and the small synthetic view dataset: the package is written and
published, and the run's page holds loss and accuracy per epoch and the package's figures,
confusion matrix and model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cv.model.network import sha256_file
from scanflow.cli.main import main
from scanflow.models.registry import list_models

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def test_training_runs_as_a_flow_with_its_figures_in_the_ui(
    view_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    registry = (tmp_path / "registry").as_uri()
    out = tmp_path / "flow-views.zip"
    args = ["model", "train", str(view_dataset), "--out", str(out), "--name", "flow-views"]
    args += ["--version", "0.2.0", "--epochs", "100", "--publish", registry]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"sha256:   {sha256_file(out)}" in printed and "published: " in printed
    assert [e.version for e in list_models(registry)] == ["0.2.0"]

    def latest(key: str) -> object:
        with get_client(sync_client=True) as client:
            [artifact] = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        return artifact

    table = latest("training-flow-views-0-2-0")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data  # type: ignore[attr-defined]
    epochs = [r["epoch"] for r in rows]
    assert epochs == sorted(epochs) and epochs[-1] == 100 and len(rows) >= 20
    assert all(r["held-out accuracy"] is not None for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learned
    card = str(latest("training-flow-views-0-2-0-card").data)  # type: ignore[attr-defined]
    assert "data:image/png;base64," in card and "dataset sha256" in card
    assert "synthetic" in card.lower()  # the model card says what it was trained on
