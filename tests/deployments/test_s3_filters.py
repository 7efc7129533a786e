"""S3's notification key filters as deployments/s3_filters.py evaluates them (prefix and
suffix rules by ``startswith``/``endswith``, case-sensitive; event families), and the
uploads a bucket's notifications would lose, for Lambda, queue, topic and EventBridge
destinations. Pure functions on S3's own configuration shapes: no endpoint needed."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.s3_filters import case_variants, delivering, matches, missed_uploads, sample_keys

LAMBDA = "arn:aws:lambda:eu-west-1:1:function:t"
QUEUE = "arn:aws:sqs:eu-west-1:1:uploads"
TOPIC = "arn:aws:sns:eu-west-1:1:uploads"


def _config(
    arn_key: str = "LambdaFunctionArn",
    arn: str = LAMBDA,
    *,
    events: tuple[str, ...] = ("s3:ObjectCreated:*",),
    prefix: str | None = None,
    suffix: str | None = None,
) -> dict[str, Any]:
    rules = [
        {"Name": name, "Value": value}
        for name, value in (("Prefix", prefix), ("Suffix", suffix))
        if value is not None
    ]
    config: dict[str, Any] = {arn_key: arn, "Events": list(events)}
    if rules:
        config["Filter"] = {"Key": {"FilterRules": rules}}
    return config


def test_prefix_and_suffix_rules_match_by_case() -> None:
    config = _config(prefix="patients/", suffix=".mp4")
    assert matches(config, "patients/p/scans/s.mp4")
    assert not matches(config, "patients/p/scans/s.MP4")  # suffix: case-sensitive
    assert not matches(config, "Patients/p/scans/s.mp4")  # prefix: case-sensitive too
    assert not matches(config, "uploads/patients/p/scans/s.mp4")  # a prefix, not a substring
    assert not matches(config, "patients/p/scans/s.mp4.txt")
    # rule names are matched whatever their case ("prefix" as CloudFormation writes it)
    lower = {
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".mov"}]}},
    }
    assert matches(lower, "x.mov") and not matches(lower, "x.MOV")
    assert matches(_config(), "anything/at/all.bin")  # no filter: every key


def test_events_match_exactly_or_by_family() -> None:
    put_only = _config(events=("s3:ObjectCreated:Put",))
    assert matches(put_only, "k")  # the default event is a Put
    assert not matches(put_only, "k", "s3:ObjectCreated:CompleteMultipartUpload")
    family = _config(events=("s3:ObjectCreated:*",))
    assert matches(family, "k", "s3:ObjectCreated:CompleteMultipartUpload")
    assert matches(family, "k", "s3:ObjectCreated:Copy")
    removed = _config(events=("s3:ObjectRemoved:*",))
    assert not matches(removed, "k")
    assert matches(removed, "k", "s3:ObjectRemoved:Delete")
    assert not matches({"LambdaFunctionArn": LAMBDA}, "k")  # no events: nothing delivered


def test_case_variants_are_every_mix_of_case_once() -> None:
    variants = case_variants("mov")
    assert len(variants) == 8 == len(set(variants))
    assert variants[0] == "mov" and variants[-1] == "MOV" and "mOv" in variants
    # digits and dots have one spelling
    assert case_variants("mp4") == ["mp4", "mP4", "Mp4", "MP4"]
    assert case_variants("3g2") == ["3g2", "3G2"]
    assert case_variants("") == [""]


def test_sample_keys_are_one_per_prefix_and_spelling() -> None:
    keys = sample_keys(["patients/", "region=eu/patients/"], ["mp4", "m4v"])
    assert len(keys) == 2 * (4 + 4)
    assert keys[0] == "patients/patient-1/scans/scan-1.mp4"
    assert "region=eu/patients/patient-1/scans/scan-1.M4V" in keys


def test_the_old_suffix_filters_lose_iphone_uploads() -> None:
    """What the template had: a .mp4 and a .mov suffix rule. S3 matches suffixes by case."""
    old = {
        "LambdaFunctionConfigurations": [
            _config(prefix="patients/", suffix=".mp4"),
            _config(prefix="patients/", suffix=".mov"),
        ]
    }
    missed = missed_uploads(old, ["patients/"], ["mp4", "mov", "m4v"])
    assert "patients/patient-1/scans/scan-1.MOV" in missed
    assert "patients/patient-1/scans/scan-1.m4v" in missed
    assert "patients/patient-1/scans/scan-1.mov" not in missed
    # every m4v (4 spellings); every other spelling of mp4 (3) and mov (7)
    assert len(missed) == 4 + 3 + 7


@pytest.mark.parametrize(
    ("kind", "arn_key", "arn"),
    [
        ("LambdaFunctionConfigurations", "LambdaFunctionArn", LAMBDA),
        ("QueueConfigurations", "QueueArn", QUEUE),
        ("TopicConfigurations", "TopicArn", TOPIC),
    ],
)
def test_a_prefix_only_rule_of_any_destination_loses_nothing(
    kind: str, arn_key: str, arn: str
) -> None:
    notification = {kind: [_config(arn_key, arn, prefix="patients/")]}
    assert missed_uploads(notification, ["patients/"], ["mp4", "mov", "m4v"]) == []
    # ... but a second allowed prefix outside the rule is lost, every spelling of it
    missed = missed_uploads(notification, ["patients/", "region=eu/patients/"], ["mp4"])
    assert missed == [
        f"region=eu/patients/patient-1/scans/scan-1.{v}" for v in case_variants("mp4")
    ]
    assert delivering(notification, "patients/p/scans/s.MOV") == [arn]


def test_destinations_limit_which_configurations_count() -> None:
    notification = {
        "QueueConfigurations": [_config("QueueArn", QUEUE, prefix="patients/")],
        "TopicConfigurations": [_config("TopicArn", TOPIC, prefix="patients/")],
    }
    key = "patients/p/scans/s.mp4"
    assert delivering(notification, key) == [QUEUE, TOPIC]
    assert delivering(notification, key, [TOPIC]) == [TOPIC]
    # uploads delivered only somewhere else are missed for the trigger's queue
    elsewhere = {"TopicConfigurations": notification["TopicConfigurations"]}
    assert missed_uploads(elsewhere, ["patients/"], ["mp4"], destinations=[QUEUE]) == sample_keys(
        ["patients/"], ["mp4"]
    )
    assert missed_uploads(elsewhere, ["patients/"], ["mp4"], destinations=[TOPIC]) == []
    assert missed_uploads(elsewhere, ["patients/"], ["mp4"], destinations=[]) == sample_keys(
        ["patients/"], ["mp4"]
    )


def test_eventbridge_delivers_every_key_when_it_is_a_wanted_destination() -> None:
    notification = {
        "EventBridgeConfiguration": {},
        "QueueConfigurations": [_config("QueueArn", QUEUE, suffix=".mp4")],
    }
    assert delivering(notification, "patients/p/scans/s.MOV") == ["EventBridge"]
    assert delivering(notification, "patients/p/scans/s.mp4") == [QUEUE, "EventBridge"]
    assert missed_uploads(notification, ["patients/"], ["mov"]) == []
    # the trigger listens on the queue only: EventBridge's delivery does not count
    missed = missed_uploads(notification, ["patients/"], ["mov", "mp4"], destinations=[QUEUE])
    assert len(missed) == 8 + 3  # every .mov spelling, and .mp4 but for its lower case
    assert missed_uploads(notification, ["patients/"], ["mov"], destinations=["EventBridge"]) == []
    assert missed_uploads({}, ["patients/"], ["mp4"]) == sample_keys(["patients/"], ["mp4"])
