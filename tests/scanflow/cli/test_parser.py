"""The command line's table of contents (scanflow/cli/parser.py): every command documented in
its description parses as documented, names a handler group and a handler, and each handler
exists as ``cmd_<name>`` in the group's module; help and refusals come from argparse itself.
No handler runs here."""

from __future__ import annotations

import argparse
import importlib
import shlex

import pytest

from deployments.work_pools import POOLS
from scanflow.cli.parser import DESCRIPTION, build_parser
from scanflow.settings import NOTIFICATION_SECRETS

GROUPS = {"local": "scanflow.cli.local", "models": "scanflow.cli.models"} | {
    "production": "scanflow.cli.production"
}


def _parse(line: str) -> argparse.Namespace:
    return build_parser().parse_args(shlex.split(line))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_names_a_handler_that_exists_in_its_group() -> None:
    commands = _subcommands(build_parser())
    assert sorted(commands) == sorted(
        [
            "up",
            "down",
            "demo",
            "server",
            "process",
            "submit",
            "sample",
            "reconcile",
            "ops-report",
            "backfill",
            "report",
            "model",
            "pools",
            "deploy",
            "automations",
            "secrets",
            "doctor",
        ]
    )
    for name, sub in commands.items():
        group, handler = sub.get_default("group"), sub.get_default("handler")
        assert handler == name.replace("-", "_")
        module = importlib.import_module(GROUPS[group])
        assert callable(getattr(module, f"cmd_{handler}", None)), f"{module.__name__}.cmd_{name}"


def test_every_command_in_the_description_is_a_command() -> None:
    documented = {
        line.split()[1] for line in DESCRIPTION.splitlines() if line.strip().startswith("scanflow ")
    }
    # "scanflow up | down | demo": the first of each such line
    assert documented | {"down", "demo"} == set(_subcommands(build_parser()))


@pytest.mark.parametrize(
    ("line", "group", "expected"),
    [
        ("up", "local", {}),
        ("down", "local", {}),
        ("demo", "local", {"timeout": 600}),
        ("demo --timeout 30", "local", {"timeout": 30.0}),
        ("server status", "local", {"action": "status", "database": None}),
        ("server start --database postgres", "local", {"database": "postgres"}),
        (
            "process scan.mp4",
            "local",
            {"video": "scan.mp4", "patient_id": "anonymous", "scan_id": None, "options": None},
        ),
        (
            "process s3://b/k.mov --patient-id p --scan-id s --options '{\"a\": 1}'",
            "local",
            {"video": "s3://b/k.mov", "patient_id": "p", "scan_id": "s", "options": '{"a": 1}'},
        ),
        (
            "submit file:///x.mp4 --wait --rerun --timeout 5",
            "local",
            {"video": "file:///x.mp4", "wait": True, "rerun": True, "timeout": 5.0},
        ),
        ("submit x.mp4", "local", {"wait": False, "rerun": False, "timeout": 600}),
        (
            "sample out.mp4",
            "local",
            {"path": "out.mp4", "seconds": 20.0, "width": 640, "height": 480, "fps": 30.0},
        ),
        (
            "sample o.mp4 --seconds 2 --width 64 --height 48 --fps 5 --seed 3",
            "local",
            {"seconds": 2.0, "width": 64, "height": 48, "fps": 5.0, "seed": 3},
        ),
        (
            "model dataset out --train-scans 2 --heldout-scans 1 --fps 2 --seconds 3",
            "models",
            {"model_command": "dataset", "out": "out", "train_scans": 2, "heldout_scans": 1},
        ),
        (
            "model train data --epochs 5 --publish",
            "models",
            {"model_command": "train", "data_dir": "data", "epochs": 5, "publish": ""},
        ),
        ("model train data", "models", {"publish": None, "version": "1.0.0", "out": None}),
        (
            "model train data --publish s3://r/models --replace",
            "models",
            {"publish": "s3://r/models", "replace": True},
        ),
        (
            "model publish p.zip --registry file:///r",
            "models",
            {"model_command": "publish", "package": "p.zip", "registry": "file:///r"},
        ),
        (
            "model promote s3://r/m.zip --sha256 ab",
            "models",
            {"model_command": "promote", "uri": "s3://r/m.zip", "sha256": "ab"},
        ),
        ("model list --json", "models", {"model_command": "list", "json": True}),
        ("reconcile --dry-run --json", "local", {"dry_run": True, "json": True, "since": None}),
        ("ops-report --json", "local", {"json": True, "until": None}),
        ("pools templates", "production", {"action": "templates", "name": None}),
        (
            "pools apply scanflow-gpu --replace-template --credential-secret-arn arn:x",
            "production",
            {
                "action": "apply",
                "name": "scanflow-gpu",
                "replace_template": True,
                "credential_secret_arn": "arn:x",
            },
        ),
        ("deploy ecs-cpu ecs-gpu", "production", {"names": ["ecs-cpu", "ecs-gpu"]}),
        ("automations apply --dry-run", "production", {"action": "apply", "dry_run": True}),
        ("automations show", "production", {"action": "show", "dry_run": False}),
        (
            "secrets set slack-webhook-url",
            "production",
            {"action": "set", "name": "slack-webhook-url"},
        ),
        ("doctor --json", "production", {"json": True}),
    ],
)
def test_a_documented_command_line_parses(
    line: str, group: str, expected: dict[str, object]
) -> None:
    args = _parse(line)
    assert args.group == group
    assert args.command == line.split()[0] == args.handler.replace("_", "-")
    assert {k: getattr(args, k) for k in expected} == expected


def test_pool_and_secret_names_are_the_registries_own() -> None:
    pools = _subcommands(build_parser())["pools"]
    (name,) = [a for a in pools._actions if a.dest == "name"]
    assert sorted(name.choices or []) == sorted(POOLS)
    secrets = _subcommands(build_parser())["secrets"]
    (secret,) = [a for a in secrets._actions if a.dest == "name"]
    assert sorted(secret.choices or []) == sorted(NOTIFICATION_SECRETS)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("", "the following arguments are required: command"),
        ("fly", "invalid choice: 'fly'"),
        ("model", "the following arguments are required: model_command"),
        ("pools apply scanflow-tpu", "invalid choice: 'scanflow-tpu'"),
        ("secrets set aws-key", "invalid choice: 'aws-key'"),
        ("deploy", "the following arguments are required: names"),
        ("server restart", "invalid choice: 'restart'"),
        ("sample x.mp4 --width wide", "invalid int value: 'wide'"),
        ("submit", "the following arguments are required: video"),
    ],
)
def test_a_bad_command_line_is_refused_with_argparses_message(
    line: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse(line)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_help_prints_the_description_and_each_commands_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parse("--help")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: scanflow ")
    assert "scanflow pools apply [NAME] [--replace-template]" in out  # kept as written
    for command in _subcommands(build_parser()):
        with pytest.raises(SystemExit) as exit_:
            _parse(f"{command} --help")
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: scanflow {command}")
    with pytest.raises(SystemExit):
        _parse("pools --help")
    assert "--credential-secret-arn" in capsys.readouterr().out


def test_a_point_in_time_is_iso_or_a_duration_ago() -> None:
    from datetime import UTC, datetime, timedelta

    from scanflow.cli.parser import when

    assert when("2026-11-30T08:00") == datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert when("2026-11-30T08:00+01:00").utcoffset() == timedelta(hours=1)
    ago = when("2h")
    assert timedelta(hours=2) <= datetime.now(UTC) - ago < timedelta(hours=2, seconds=5)
    ago = when("90s")
    assert datetime.now(UTC) - ago >= timedelta(seconds=90)
    with pytest.raises(argparse.ArgumentTypeError, match="neither an ISO time"):
        when("yesterday")
    args = _parse("reconcile --since 30m")
    assert timedelta(minutes=30) <= datetime.now(UTC) - args.since < timedelta(minutes=31)


def test_backfill_takes_a_window_a_patient_and_a_model() -> None:
    args = _parse("backfill --since 30d --patient pt-1 --model view-classifier@1.1.0 --json")
    assert (args.group, args.handler, args.patient, args.model, args.json) == (
        "local",
        "backfill",
        "pt-1",
        "view-classifier@1.1.0",
        True,
    )
    assert args.since is not None and args.timeout == 3600
    plain = _parse("backfill")
    assert (plain.since, plain.patient, plain.model) == (None, None, None)
