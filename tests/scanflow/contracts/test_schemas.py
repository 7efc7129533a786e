"""The JSON Schemas in schemas/ are the published contracts: they must match the models."""

from __future__ import annotations

import json

from scanflow.contracts.manifest import Manifest
from scanflow.settings import REPO_ROOT

SCHEMAS = REPO_ROOT / "schemas"


def test_manifest_schema_file_matches_the_model() -> None:
    on_disk = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    assert on_disk == Manifest.model_json_schema(), (
        "regenerate with: python -m scanflow.contracts.manifest > schemas/manifest.schema.json"
    )


def test_per_run_limits_cannot_switch_off_the_bomb_protection() -> None:
    import pytest
    from pydantic import ValidationError

    from scanflow.contracts.options import ScanOptions

    for field, value in (
        ("max_pixels", 16000 * 16000),
        ("max_duration_s", 7200),
        ("max_bytes", 10**10),
        ("max_fps", 1000),
    ):
        with pytest.raises(ValidationError):
            ScanOptions.model_validate({"limits": {field: value}})
    assert ScanOptions.model_validate({"limits": {"max_duration_s": 3600}})
