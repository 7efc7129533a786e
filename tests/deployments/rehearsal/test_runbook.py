"""The runbook reader and its shell (deployments/rehearsal/runbook.py): steps read from a small
markdown file written here, and commands run by a :class:`Shell` whose handlers are plain
functions recording what they were given (the words, the environment, standard input)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from deployments.rehearsal.runbook import RunbookError, Shell, Step, one, options, read_steps
from scanflow.settings import REPO_ROOT

RUNBOOK = """\
# A runbook

Intro text, with a block outside any numbered section:

```bash
never-read
```

## 0. Point at things

```bash
export A=1
# a comment line
aws s3 mb s3://bucket  # a trailing comment
```

Prose between blocks.

```text
not a command
```

```
nor this
```

## 1. Continued lines

```bash
aws cloudformation deploy \\
  --stack-name s \\
  --template t.yaml
scanflow pools apply
```

### A subsection stays in step 1

```bash
scanflow doctor
```

## Self-hosted server

```bash
unnumbered-section-command
```

## 2. Empty step

## 3. Last
```bash
prefect work-pool create p
```
"""


def test_read_steps_takes_numbered_sections_and_their_bash_blocks(tmp_path: Path) -> None:
    path = tmp_path / "runbook.md"
    path.write_text(RUNBOOK)
    steps = read_steps(path)
    # a continued line is one command (its whitespace does not matter to the shell)
    steps[1] = Step(1, steps[1].title, tuple(" ".join(c.split()) for c in steps[1].commands))
    assert steps == [
        Step(0, "Point at things", ("export A=1", "aws s3 mb s3://bucket")),
        Step(
            1,
            "Continued lines",
            (
                "aws cloudformation deploy --stack-name s --template t.yaml",
                "scanflow pools apply",
                "scanflow doctor",
            ),
        ),
        Step(2, "Empty step", ()),
        Step(3, "Last", ("prefect work-pool create p",)),
    ]


def test_the_production_runbook_has_its_steps_in_order() -> None:
    steps = read_steps(REPO_ROOT / "docs" / "production.md")
    assert [s.number for s in steps] == list(range(len(steps)))
    assert all(s.commands for s in steps)
    assert steps[0].commands[0].startswith("export PREFECT_API_URL=")


@pytest.fixture
def shell(tmp_path: Path) -> tuple[Shell, list[tuple[list[str], dict[str, str], str | None]]]:
    calls: list[tuple[list[str], dict[str, str], str | None]] = []

    def record(words: list[str], env: dict[str, str], stdin: str | None) -> str:
        calls.append((words, env, stdin))
        return "ok"

    sh = Shell(env={"HOME": "/home/x"}, workdir=tmp_path)
    sh.handlers.update(
        {
            "echo": lambda w, e, i: " ".join(w[1:]) + "\n",
            "upper": lambda w, e, i: (i or "").upper(),
            "aws s3 mb": record,
            "aws secretsmanager create-secret": record,
            "scanflow": record,
            "scanflow secrets set": record,
        }
    )
    return sh, calls


def test_export_sets_variables_and_the_site_fills_placeholders(shell) -> None:  # type: ignore[no-untyped-def]
    sh, _ = shell
    sh.site["ACCOUNT_URL"] = "https://real.example/api"
    assert sh.run("export A=1 B=two ACCOUNT_URL=<your-url>") == ""
    assert (sh.env["A"], sh.env["B"]) == ("1", "two")
    assert sh.env["ACCOUNT_URL"] == "https://real.example/api"  # what the reader fills in
    sh.run("C=3")  # a bare assignment stays in the shell
    assert sh.env["C"] == "3"
    with pytest.raises(RunbookError, match="cannot export 'B'"):
        sh.run("export B")
    assert sh.log == []  # nothing ran a command


def test_a_prefixed_assignment_reaches_only_that_command(shell) -> None:  # type: ignore[no-untyped-def]
    sh, calls = shell
    sh.run("export REGION=eu-west-1")
    sh.run("BUCKET=b1 EMPTY= aws s3 mb s3://$REGION-x")
    words, env, stdin = calls[-1]
    assert words == ["aws", "s3", "mb", "s3://eu-west-1-x"]
    assert sh.log[-1] == "aws s3 mb s3://eu-west-1-x"  # the prefix is not part of the command
    assert env["EMPTY"] == ""
    assert env["BUCKET"] == "b1" and env["REGION"] == "eu-west-1" and env["HOME"] == "/home/x"
    assert "BUCKET" not in sh.env and stdin is None


def test_variables_in_both_forms_and_a_missing_one_named(shell) -> None:  # type: ignore[no-untyped-def]
    sh, _ = shell
    sh.run("export NAME=scan ACCOUNT=123")
    assert sh.run("echo $NAME-${ACCOUNT}_x ${NAME}s") == "scan-123_x scans\n"
    with pytest.raises(RunbookError, match=r"\$UNSET is not set at this point of the runbook"):
        sh.run("echo ${UNSET}")


def test_command_substitution_runs_first_and_stays_one_word(shell) -> None:  # type: ignore[no-untyped-def]
    sh, calls = shell
    sh.run("export ARN=$(echo arn:aws:secret x)")
    assert sh.env["ARN"] == "arn:aws:secret x"  # trailing newline stripped, spaces kept
    sh.run("scanflow pools apply --credential-secret-arn $(echo a b) --x $(echo $(echo n))")
    assert calls[-1][0] == ["scanflow", "pools", "apply", "--credential-secret-arn", "a b"] + [
        "--x",
        "n",
    ]
    with pytest.raises(RunbookError, match="unbalanced"):
        sh.run("echo $(echo x")


def test_and_runs_in_order_and_a_pipe_feeds_the_next_command(shell) -> None:  # type: ignore[no-untyped-def]
    sh, calls = shell
    assert sh.run("aws s3 mb s3://a && echo done") == "done\n"
    assert calls[-1][0][-1] == "s3://a"
    assert sh.run("echo quiet | upper") == "QUIET\n"
    # operators inside quotes or $(...) do not split the line
    assert sh.run("echo 'a && b | c'") == "a && b | c\n"
    assert sh.run("echo $(echo x | upper) && echo y") == "y\n"
    assert sh.log[-2:] == ["echo X", "echo y"]


def test_input_from_a_file_and_tmp_paths_live_in_the_workdir(shell, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sh, calls = shell
    (tmp_path / "secret.txt").write_text("s3cr3t\n")
    (tmp_path / "plain.txt").write_text("from a relative path")
    sh.run("scanflow secrets set platform-signing-secret < /tmp/secret.txt")
    words, _, stdin = calls[-1]
    assert words == ["scanflow", "secrets", "set", "platform-signing-secret"]
    assert stdin == "s3cr3t\n"
    assert sh.run("upper < plain.txt") == "FROM A RELATIVE PATH"
    assert sh.path("/tmp/deep/x.json") == tmp_path / "x.json"


def test_a_command_without_a_stand_in_fails_the_rehearsal(shell) -> None:  # type: ignore[no-untyped-def]
    sh, calls = shell
    with pytest.raises(RunbookError, match="no stand-in for 'aws s3 rm'"):
        sh.run("aws s3 rm s3://b --recursive")
    with pytest.raises(RunbookError, match="'terraform apply'"):
        sh.run("terraform apply")
    # the longest registered command wins, and a path to the program is its name
    sh.run(".venv/bin/scanflow secrets set slack-webhook-url")
    sh.run("/usr/local/bin/scanflow doctor --json")
    assert [c[0][:2] for c in calls] == [
        [".venv/bin/scanflow", "secrets"],
        ["/usr/local/bin/scanflow", "doctor"],
    ]
    assert sh.handler(["scanflow", "secrets", "set"]) is sh.handlers["scanflow secrets set"]
    assert sh.handler(["scanflow", "doctor"]) is sh.handlers["scanflow"]


def test_a_secret_given_on_the_command_line_is_masked_in_the_log(shell) -> None:  # type: ignore[no-untyped-def]
    sh, calls = shell
    sh.run("export KEY=pnb_topsecret")
    sh.run('aws secretsmanager create-secret --name n --secret-string "$KEY"')
    assert calls[-1][0][-1] == "pnb_topsecret"  # the handler gets the value
    assert sh.log[-1] == "aws secretsmanager create-secret --name n --secret-string '****'"
    assert "pnb_topsecret" not in "\n".join(sh.log)


def test_options_parse_an_aws_command_line() -> None:
    words = shlex.split(
        "aws cloudformation deploy --stack-name s --parameter-overrides A=1 B=2 --x"
    )
    opts = options(words)
    assert opts == {"stack-name": ["s"], "parameter-overrides": ["A=1", "B=2"], "x": []}
    assert one(opts, "stack-name") == "s"
    with pytest.raises(RunbookError, match="--x is missing"):
        one(opts, "x")
    with pytest.raises(RunbookError, match="--template-file is missing"):
        one(opts, "template-file")
