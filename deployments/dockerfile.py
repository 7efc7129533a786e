"""Reads the Dockerfile and .dockerignore the way Docker does, where Docker cannot build
(the tests, the production rehearsal)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Image:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    copies: list[str] = field(default_factory=list)  # COPY sources from the build context


def parse_dockerfile(path: Path) -> Image:
    """The final image's ENTRYPOINT, CMD, ENV, WORKDIR, USER and the COPY sources."""
    text = re.sub(r"\\\n", " ", path.read_text())
    image = Image()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word, rest = word.upper(), rest.strip()
        if word in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            setattr(image, word.lower(), value)
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                image.env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: image.env.get(m[1], ""), value)
        elif word == "WORKDIR":
            image.workdir = rest
        elif word == "USER":
            image.user = rest
        elif word == "COPY" and "--from" not in rest:
            image.copies += shlex.split(rest)[:-1]
    return image


def build_context(root: Path) -> list[Path]:
    """The files ``docker build root`` sends, per root/.dockerignore (last match wins)."""
    rules = []
    for raw in (root / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            negate = raw.startswith("!")
            rules.append((raw.lstrip("!").rstrip("/"), negate))

    def kept(rel: str) -> bool:
        keep = True
        for pattern, negate in rules:
            if _matches(rel, pattern):
                keep = negate
        return keep

    def may_hold_kept(rel: str) -> bool:  # an excluded folder can hold a re-included file
        return kept(rel) or any(
            negate and (p.startswith(rel + "/") or p.startswith("*")) for p, negate in rules
        )

    included = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = sorted(d for d in dirs if may_hold_kept(prefix + d))
        included += [Path(folder) / f for f in sorted(files) if kept(prefix + f)]
    return included


def _matches(rel: str, pattern: str) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(p, tail) for p in parts)
    # a pattern matching a folder matches everything under it
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
