"""scanflow.contracts.options: the per-run options of process-scan. The id pattern, the
bounds a run may set (never past the ceilings that guard against decompression bombs), and
what the options hand to cv (VideoLimits, QualityThresholds). Pure pydantic; no server."""

from __future__ import annotations

import re
from typing import Annotated, Any

import pytest
from pydantic import Field, TypeAdapter, ValidationError

from cv.quality.analysis import QualityThresholds
from cv.video.frames import VideoLimits
from scanflow.contracts.options import ID_PATTERN, Limits, ModelRef, ScanOptions

AN_ID = TypeAdapter(Annotated[str, Field(pattern=ID_PATTERN)])  # as process-scan declares ids


@pytest.mark.parametrize("value", ["s", "7", "scan-2024.05_01", "A" * 64, "pt-4417"])
def test_ids_of_letters_digits_dots_dashes_underscores_are_accepted(value: str) -> None:
    assert re.fullmatch(ID_PATTERN, value)
    assert AN_ID.validate_python(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "A" * 65,  # longer than 64
        "-scan",  # must start with a letter or digit
        ".hidden",
        "_x",
        "../pt-2",
        "pt/1",
        "scan 1",
        "scan-1\n",
        "scän",  # ASCII only
        "scan%2F1",
        "scan:1",
    ],
)
def test_ids_that_could_escape_a_path_or_a_key_are_refused(value: str) -> None:
    assert not re.fullmatch(ID_PATTERN, value)
    with pytest.raises(ValidationError):
        AN_ID.validate_python(value)


def test_per_run_limits_cannot_switch_off_the_bomb_protection() -> None:
    for field, value in (
        ("max_pixels", 16000 * 16000),
        ("max_duration_s", 7200),
        ("max_bytes", 10**10),
        ("max_fps", 1000),
    ):
        with pytest.raises(ValidationError):
            ScanOptions.model_validate({"limits": {field: value}})
    assert ScanOptions.model_validate({"limits": {"max_duration_s": 3600}})


@pytest.mark.parametrize(
    "limits",
    [
        {"max_bytes": 0},
        {"max_duration_s": 0},
        {"min_duration_s": -1},
        {"min_pixels": 0},
        {"max_fps": -30},
        {"max_pixel": 100},  # a typo is not ignored
    ],
)
def test_nonsense_limits_are_refused_naming_the_field(limits: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(limits))):
        Limits.model_validate(limits)


def test_the_limits_reach_cv_field_by_field() -> None:
    limits = Limits(
        max_bytes=1234, max_duration_s=56.0, max_pixels=7890, min_pixels=12, max_fps=34.0
    )
    assert limits.video_limits() == VideoLimits(
        max_bytes=1234, max_duration_s=56.0, max_pixels=7890, min_pixels=12, max_fps=34.0
    )
    assert Limits().video_limits() == VideoLimits()  # the same defaults on both sides


def test_the_thresholds_take_the_runs_minimum_duration_and_frames() -> None:
    options = ScanOptions(min_usable_frames=20, limits=Limits(min_duration_s=1.5))
    assert options.thresholds() == QualityThresholds(min_duration_s=1.5, min_usable_frames=20)
    defaults = ScanOptions().thresholds()
    assert (defaults.min_duration_s, defaults.min_usable_frames) == (3.0, 8)
    assert defaults == QualityThresholds()


@pytest.mark.parametrize(
    "options",
    [
        {"sample_fps": 0},
        {"sample_fps": 31},
        {"max_side": 63},
        {"max_side": 2161},
        {"summary_max_s": 61},
        {"keyframes": 0},
        {"keyframes": 65},
        {"batch_size": 513},
        {"min_usable_frames": 0},
        {"decode": "keyframes"},
        {"colour": "blue"},
    ],
)
def test_options_out_of_bounds_are_refused_naming_them(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=next(iter(options))):
        ScanOptions.model_validate(options)


def test_options_round_trip_as_the_ui_and_the_api_send_them() -> None:
    sent = {
        "sample_fps": 4,
        "device": "cuda:1",
        "limits": {"max_duration_s": 120},
        "model": {"uri": "s3://models/views/2.0.0/model.zip", "sha256": "ab" * 32},
    }
    options = ScanOptions.model_validate(sent)
    assert options.limits.max_duration_s == 120 and options.limits.max_bytes == 1_000_000_000
    assert options.model.sha256 == "ab" * 32 and options.model.name is None
    assert ScanOptions.model_validate_json(options.model_dump_json()) == options
    assert ScanOptions().model == ModelRef()  # empty: the production model
    assert ScanOptions().decode == "reference"
    assert ScanOptions.model_validate({"decode": "all"}).decode == "all"


@pytest.mark.parametrize("sha256", ["AB" * 32, "ab" * 31, "ab" * 33, "xy" * 32])
def test_a_model_sha256_must_be_64_lowercase_hex(sha256: str) -> None:
    with pytest.raises(ValidationError, match="sha256"):
        ModelRef(uri="file:///m/model.zip", sha256=sha256)
