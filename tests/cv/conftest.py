from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cv.model import LoadedModel, load_backbone
from tasks.registry import BACKBONE_IDENTITY, installed_backbone


@pytest.fixture(scope="session")
def weights() -> Path:
    return installed_backbone()


@pytest.fixture(scope="session")
def model(weights: Path) -> LoadedModel:
    return load_backbone(weights, BACKBONE_IDENTITY, torch.device("cpu"))
