"""The tables system tests print at the end of a run (the figures they measured), also when
the suite runs in several processes (pytest-xdist, as ``make test`` does).

A conftest registers a section: a title, a function that returns what its process measured
(JSON; empty: nothing) and one that renders the list of those (one per process) as lines; by
default the measurements are lines, rendered one after the other. In a single process the
sections are printed by the terminal summary. Under xdist the measurements live in the
workers while the summary is printed by the controller, so each worker writes them to a
folder the controller gave it, at the end of its session, with where its renderer lives
(the controller does not import the conftests that register them), and the controller
renders them.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Render = Callable[[list[Any]], list[str]]


def _lines(parts: list[Any]) -> list[str]:
    return [line for part in parts for line in part]


_SECTIONS: dict[str, tuple[Callable[[], Any], Render]] = {}
_KEY = "scanflow_reports"


def register(title: str, measured: Callable[[], Any], render: Render = _lines) -> None:
    _SECTIONS[title] = (measured, render)


def _ours() -> dict[str, Any]:
    return {title: found for title, (measured, _) in _SECTIONS.items() if (found := measured())}


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(controller, xdist) The folder the workers write their sections to."""
    config = node.config
    folder = getattr(config, "_scanflow_reports", None)
    if folder is None:
        folder = tempfile.mkdtemp(prefix="scanflow-reports-")
        config._scanflow_reports = folder
    node.workerinput[_KEY] = folder


def pytest_sessionfinish(session: pytest.Session) -> None:
    workerinput = getattr(session.config, "workerinput", None)
    if workerinput is None or _KEY not in workerinput:
        return
    sections = {
        title: {"found": found, "render": _where(_SECTIONS[title][1])}
        for title, found in _ours().items()
    }
    if sections:
        path = Path(workerinput[_KEY]) / f"{workerinput['workerid']}.json"
        path.write_text(json.dumps(sections, default=str))


def _where(render: Render) -> str:
    return f"{render.__module__}:{render.__qualname__}"


def _renderer(where: str) -> Render:
    module, name = where.split(":")
    found: Render = getattr(importlib.import_module(module), name)
    return found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    parts: dict[str, list[Any]] = {title: [found] for title, found in _ours().items()}
    renders = {title: render for title, (_, render) in _SECTIONS.items()}
    folder = getattr(terminalreporter.config, "_scanflow_reports", None)
    if folder is not None:
        for path in sorted(Path(folder).glob("*.json")):
            for title, section in json.loads(path.read_text()).items():
                parts.setdefault(title, []).append(section["found"])
                renders.setdefault(title, _renderer(section["render"]))
            os.unlink(path)
        os.rmdir(folder)
    for title, found in parts.items():
        terminalreporter.section(title)
        for line in renders[title](found):
            terminalreporter.write_line(line)
