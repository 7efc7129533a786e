"""No secret and no patient identifier beyond the pseudonymous ids reaches the logs, Slack or
the Prefect UI.

What counts (docs/security.md): the pseudonymous patient id and scan id are allowed
everywhere except Slack (which gets the scan id only); so is a ``video_uri`` in the upload
layout ``patients/<patient>/scans/<scan>.<ext>``, made of those ids. Anything else that an
upload carries is a patient identifier: a name, a birth date or a place in its file name,
its container tags or its S3 metadata. Secrets: the webhook signing key, the Slack webhook
URL, AWS credentials.

The stack (hostile_stack.py) runs four scans through its deployment and worker; then this
greps its server and worker log files, everything its API serves the UI (flow and task runs
with their parameters and states, run logs, artifacts, events, deployments, work pools,
blocks, variables), and every Slack message received.
"""

from __future__ import annotations

import pytest

from tests.system.hostile.leak_world import (
    NAMED_FILE,
    OTHER_PATIENT,
    PATIENT,
    PERSONAL,
    SECRETS,
    LeakWorld,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _where(texts: dict[str, str], needle: str) -> list[str]:
    return [name for name, text in texts.items() if needle.lower() in text.lower()]


def test_the_runs_ended_as_expected(leak_world: LeakWorld) -> None:
    states = {case: run.state for case, run in leak_world.finals.items()}
    assert states["ok"].is_completed(), states["ok"].message
    assert "[unreadable_video]" in states["bad"].message
    assert "[unreadable_video]" in states["named"].message
    assert "scan-leak-named.mp4" in states["named"].message  # the scan, not the file's name
    assert "[access_denied]" in states["denied"].message
    assert OTHER_PATIENT in states["denied"].message  # says why: another patient's prefix
    # each outcome reached the platform, signed, and Slack
    platform = {r.json["scan_id"]: r for r in leak_world.platform.records if r.status == 200}
    assert set(platform) >= {f"scan-leak-{c}" for c in leak_world.runs}
    assert all(r.verified == "ok" for r in leak_world.platform.records)
    assert len(leak_world.slack.records) >= len(leak_world.runs)


def test_no_secret_anywhere(leak_world: LeakWorld) -> None:
    texts = {**leak_world.log_files(), **leak_world.ui_texts()}
    texts |= {f"slack {i}": r.body.decode() for i, r in enumerate(leak_world.slack.records)}
    texts |= {f"platform {i}": r.body.decode() for i, r in enumerate(leak_world.platform.records)}
    assert any("platform 127.0.0.1" in t for t in texts.values())  # the logs do say what was sent
    assert any("scan-leak-ok" in t for name, t in texts.items() if name.startswith("log file"))
    for secret in SECRETS:
        assert not _where(texts, secret), f"a secret is shown in {_where(texts, secret)}"


def test_no_personal_data_in_logs_ui_or_slack(leak_world: LeakWorld) -> None:
    ui = leak_world.ui_texts()
    named_uri = str(leak_world.finals["named"].parameters["video_uri"])
    assert NAMED_FILE in named_uri
    # The one place a local file's name may show is the run's own video_uri parameter,
    # which its caller chose (production keys are made of pseudonymous ids, enforced by
    # the trigger): read everything else with that URI taken out.
    texts = {
        name: text.replace(named_uri, "<video_uri>")
        for name, text in {**leak_world.log_files(), **ui}.items()
    }
    slack = {f"slack {i}": r.body.decode() for i, r in enumerate(leak_world.slack.records)}
    texts |= slack
    for needle in PERSONAL:
        assert not _where(texts, needle), f"{needle!r} is shown in {_where(texts, needle)}"
    # Slack gets scan ids only: no patient id, no URI, no path
    for text in slack.values():
        assert PATIENT not in text and OTHER_PATIENT not in text
        assert "s3://" not in text and "file://" not in text and "/tmp/" not in text
        assert "scan-leak-" in text
