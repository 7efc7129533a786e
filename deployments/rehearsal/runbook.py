"""The production runbook (docs/production.md) as a list of steps, and an executor for its
commands on loopback.

A step is a numbered section (``## 3. Build and push the image``) and the commands of its
``bash`` blocks, in order. :class:`Shell` runs each command the way the runbook's reader
would, with the few shapes the runbook uses: ``export``, ``VAR=value command``, ``$VAR`` and
``${VAR}``, ``$(...)``, ``&&``, ``< file``, line continuations and comments. The commands
themselves are carried out by :class:`~deployments.rehearsal.production.Rehearsal`'s
handlers (``aws ...``, ``prefect ...``, ``scanflow ...``, ``docker ...``); a command no
handler knows fails the rehearsal, so the runbook cannot hold a step nobody rehearsed.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_SECTION = re.compile(r"^## (\d+)\. (.+?)\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class RunbookError(Exception):
    """A runbook command failed, or cannot be rehearsed."""


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    commands: tuple[str, ...]


def read_steps(path: Path) -> list[Step]:
    """The numbered sections of the runbook and the commands of their bash blocks."""
    steps: list[Step] = []
    number, title, commands = -1, "", []
    in_bash = in_block = False
    pending = ""
    for raw in path.read_text().splitlines():
        fence = _FENCE.match(raw)
        if fence:
            in_block = not in_block
            in_bash = in_block and fence[1] == "bash"
            continue
        if in_bash and number >= 0:
            line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = (pending + line).strip()
            pending = ""
            if line:
                commands.append(line)
            continue
        if in_block:
            continue
        section = _SECTION.match(raw)
        if section or raw.startswith("## "):
            if number >= 0:
                steps.append(Step(number, title, tuple(commands)))
            number, title, commands = -1, "", []
            if section:
                number, title = int(section[1]), section[2]
    if number >= 0:
        steps.append(Step(number, title, tuple(commands)))
    return steps


Handler = Callable[[list[str], dict[str, str], "str | None"], str]


@dataclass
class Shell:
    """Runs runbook commands: expands variables and substitutions, then hands the words to
    the handler registered for the command's first word(s)."""

    env: dict[str, str]
    workdir: Path
    handlers: dict[str, Handler] = field(default_factory=dict)
    site: dict[str, str] = field(default_factory=dict)  # what the reader fills in (step 0)
    log: list[str] = field(default_factory=list)  # every command as run, expanded

    def path(self, name: str) -> Path:
        """A file the runbook names: relative ones and /tmp/ ones live in the workdir."""
        return self.workdir / Path(name).name if name.startswith("/tmp/") else self.workdir / name

    def read_file(self, name: str) -> str:
        return self.path(name).read_text()

    def run(self, line: str) -> str:
        out = ""
        for part in _split_and(line, "&&"):
            out = ""
            for piece in _split_and(part, "|"):  # a pipe: each command's output is the next's input
                out = self._one(piece, out or None)
        return out

    def _one(self, line: str, stdin: str | None = None) -> str:
        text = self._substitute(line)
        words = shlex.split(text)
        if "<" in words:
            at = words.index("<")
            stdin = self.read_file(words[at + 1])
            words = words[:at] + words[at + 2 :]
        prefix: dict[str, str] = {}
        while words and _ASSIGNMENT.match(words[0]) and words[0] != "export":
            name, value = _ASSIGNMENT.match(words.pop(0)).groups()  # type: ignore[union-attr]
            prefix[name] = value
        if not words:  # a bare assignment: the shell keeps it
            self.env.update(prefix)
            return ""
        if words[0] == "export":
            for word in words[1:]:
                match = _ASSIGNMENT.match(word)
                if not match:
                    raise RunbookError(f"cannot export {word!r}")
                self.env[match[1]] = self.site.get(match[1], match[2])
            return ""
        self.log.append(" ".join(shlex.quote(w) for w in _masked(words)))
        return self.handler(words)(words, {**self.env, **prefix}, stdin)

    def handler(self, words: list[str]) -> Handler:
        program = Path(words[0]).name
        for length in (3, 2, 1):
            key = " ".join([program, *words[1:length]])
            if key in self.handlers:
                return self.handlers[key]
        raise RunbookError(f"the rehearsal has no stand-in for {' '.join(words[:3])!r}")

    def _substitute(self, line: str) -> str:
        """``$(...)`` first (each run through :meth:`run`), then variables; values are
        quoted so that shlex keeps each one a single word."""
        out, i = [], 0
        while i < len(line):
            if line.startswith("$(", i):
                depth, j = 1, i + 2
                while j < len(line) and depth:
                    depth += {"(": 1, ")": -1}.get(line[j], 0)
                    j += 1
                if depth:
                    raise RunbookError(f"unbalanced $( in {line!r}")
                out.append(shlex.quote(self.run(line[i + 2 : j - 1]).strip()))
                i = j
                continue
            out.append(line[i])
            i += 1
        return _VARIABLE.sub(lambda m: self._value(m[1] or m[2]), "".join(out))

    def _value(self, name: str) -> str:
        if name not in self.env:
            raise RunbookError(f"${name} is not set at this point of the runbook")
        return self.env[name]


def _split_and(line: str, operator: str) -> list[str]:
    """``line`` split at ``operator`` (``&&`` or ``|``) outside quotes and ``$(...)``."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(line):
        ch = line[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif (
            depth == 0
            and line.startswith(operator, i)
            and not (operator == "|" and (line.startswith("||", i) or line[i - 1 : i] == "|"))
        ):
            parts.append(line[start:i])
            start = i + len(operator)
            i = start
            continue
        i += 1
    parts.append(line[start:])
    return [p.strip() for p in parts if p.strip()]


def _masked(words: list[str]) -> list[str]:
    """The words with secret values (``--secret-string X``) replaced, for the log."""
    return ["****" if i and words[i - 1] == "--secret-string" else w for i, w in enumerate(words)]


def options(words: list[str]) -> dict[str, list[str]]:
    """``--name value [value ...]`` pairs of an AWS CLI command line."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for word in words:
        if word.startswith("--"):
            current = found.setdefault(word[2:], [])
        elif current is not None:
            current.append(word)
    return found


def one(opts: dict[str, list[str]], name: str) -> str:
    values = opts.get(name)
    if not values:
        raise RunbookError(f"--{name} is missing")
    return values[0]
