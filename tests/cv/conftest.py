from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cv.model import LoadedModel, load_backbone
from tasks.inference import DEFAULT_MODEL, _default_weights


@pytest.fixture(scope="session")
def weights() -> Path:
    return _default_weights()


@pytest.fixture(scope="session")
def model(weights: Path) -> LoadedModel:
    return load_backbone(weights, DEFAULT_MODEL, torch.device("cpu"))
