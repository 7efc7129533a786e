"""The JSON Schemas in schemas/ are the published contracts: they must match the models."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.manifest import Manifest

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def test_manifest_schema_file_matches_the_model() -> None:
    on_disk = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    assert on_disk == Manifest.model_json_schema(), (
        "regenerate with: python -m tasks.manifest > schemas/manifest.schema.json"
    )
