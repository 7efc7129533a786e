"""shadow-model (flows/shadow_model.py) and the promotion gate, as `scanflow model shadow` and
`scanflow model promote` run them, on the session's server: two scans processed for real by
production (the shipped default), then candidates over their stored kept frames.

The shipped model shadowing itself agrees everywhere and passes the gate; a candidate with
its labels shuffled (a worse model) fails it and cannot be promoted without --force; and
shadow results never touch production's files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cv.synthetic import SyntheticScan
from flows.process_scan import process_scan
from scanflow.cli.main import main
from scanflow.models.registry import DEFAULT_PACKAGE, PRODUCTION_VARIABLE

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_server")]


def _files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _shuffle(folder: Path) -> None:
    names = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps(names[1:] + names[:1]))


def test_shadow_runs_beside_production_and_gates_promotion(
    good_scan: SyntheticScan,
    later_scan: SyntheticScan,
    results_dir: Path,
    make_package: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from prefect.variables import Variable

    Variable.unset(PRODUCTION_VARIABLE)
    for scan_id, scan in (("sh-1", good_scan), ("sh-2", later_scan)):
        state = process_scan(scan_id, "pt-shadow", scan.path.as_uri(), return_state=True)
        assert state.is_completed(), state.message
    before = _files(results_dir)

    default = DEFAULT_PACKAGE.uri
    assert default is not None
    assert main(["model", "shadow", default, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert [s["scan"].rsplit("/", 1)[-1] for s in same["scans"]] == ["sh-2", "sh-1"]
    assert all(s["agreement"] == 1.0 and not s["views_lost"] for s in same["scans"])
    # the same views choose the same frames: tracking unchanged, nothing registered again
    assert [s["tracking_compared_with"] for s in same["scans"]] == ["sh-1", None]
    assert same["tracking_verdicts_changed"] == 0
    assert same["gate"]["passed"] and same["seconds_per_scan"] > 0

    worse = make_package("shuffled-shadow", _shuffle)
    assert main(["model", "shadow", str(worse)]) == 1  # fails the gate
    printed = capsys.readouterr().out
    assert "gate: FAILED" in printed and "tracking changed" in printed
    sha = hashlib.sha256(worse.read_bytes()).hexdigest()
    shuffled = json.loads((results_dir / "_shadow" / f"{sha}.json").read_text())
    # views renamed: the second scan's views now rest on other frames (or none), and its
    # verdicts against the first scan are not production's
    assert shuffled["tracking_verdicts_changed"] > 0
    changed = shuffled["scans"][0]["tracking_changed"]
    assert changed and all(c["production"] != c["candidate"] for c in changed)
    after = _files(results_dir)
    changed = {p for p in before if after.get(p) != before[p]}
    assert not changed, changed  # production's files untouched
    added = set(after) - set(before)
    assert added and all("/shadow/" in p or p.startswith("_shadow/") for p in added), added

    assert main(["model", "promote", str(worse), "--reason", "try it"]) == 1
    assert "refused" in capsys.readouterr().err
    assert Variable.get(PRODUCTION_VARIABLE) is None
    assert main(["model", "promote", str(worse), "--force", "--reason", "on purpose"]) == 0
    assert "FORCED" in capsys.readouterr().out
    promoted = Variable.get(PRODUCTION_VARIABLE)
    assert isinstance(promoted, dict) and "forced past the gate" in promoted["reason"]
    # production back to the shipped default by a rollback, then the candidate that passed
    # the gate is promoted without --force, new runs use it, and a rollback undoes it
    assert main(["model", "rollback", "--reason", "the forced one was worse"]) == 0
    assert Variable.get(PRODUCTION_VARIABLE) is None
    good = make_package("good-shadow", lambda folder: None)
    assert main(["model", "shadow", str(good)]) == 0
    capsys.readouterr()
    assert main(["model", "promote", str(good), "--reason", "passed its shadow run"]) == 0
    assert "FORCED" not in capsys.readouterr().out
    state = process_scan("sh-3", "pt-shadow", later_scan.path.as_uri(), return_state=True)
    assert state.is_completed(), state.message
    used = json.loads((results_dir / "pt-shadow" / "sh-3" / "manifest.json").read_text())
    assert used["model"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert "production" in used["model"]["source"]
    assert main(["model", "rollback", "--reason", "back to the default"]) == 0
    assert Variable.get(PRODUCTION_VARIABLE) is None
