"""Estimate the Dockerfile's image size, layer by layer, without Docker.

    python -m deployments.image_size [--no-compress]

Each layer's packages are found by walking the installed distributions' requirements in
this environment (which holds the same CPU torch wheel and dependency versions the image
installs); their files are summed from the RECORD files, less what the Dockerfile deletes,
and compressed with gzip's default level as a registry stores layers. The base image
(python:3.11-slim-bookworm plus tini) is not measured here and is printed as a stated
assumption. A Fargate task pulls the compressed total on every start (Fargate caches no
layers); an EC2 GPU host pulls only the layers it does not have.
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

# python:3.11-slim-bookworm (amd64) as published, plus tini: an assumption, not a measurement.
BASE_COMPRESSED_MB = 45.0
BASE_UNCOMPRESSED_MB = 130.0

# What the Dockerfile's torch layer deletes after installing.
DROPPED = re.compile(r"^torch/(test|include)/|^torch/bin/(\w*Test|protoc)")


def _name(dist: metadata.Distribution) -> str:
    return re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()


def closure(roots: list[str], skip: set[str]) -> set[str]:
    """Distribution names needed at run time by ``roots`` (no extras), minus ``skip``."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen or name in skip:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here
        seen.add(name)
        todo += [Requirement(r) for r in dist.requires or []]
    return seen


def layer_files(names: set[str]) -> list[Path]:
    files = []
    for name in sorted(names):
        dist = metadata.distribution(name)
        for f in dist.files or []:
            if f.suffix == ".pyc" or DROPPED.search(str(f)):
                continue
            path = Path(str(f.locate()))
            if path.is_file():
                files.append(path)
    return files


def compressed_size(files: list[Path]) -> int:
    total = 0
    for path in files:
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip framing, default level
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(comp.compress(chunk))
        total += len(comp.flush())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-compress", action="store_true", help="skip the gzip estimate")
    args = parser.parse_args(argv)

    torch = closure(["torch"], set())
    scanflow_deps = [str(r) for r in (metadata.requires("scanflow") or []) if "extra ==" not in r]
    deps = closure(scanflow_deps, torch)
    model_req = (Path(__file__).resolve().parents[1] / "requirements-model.txt").read_text()
    model = {
        re.sub(r"[-_.]+", "-", line.split("==")[0].strip()).lower()
        for line in model_req.splitlines()
        if line.strip() and not line.startswith("#")
    }
    layers = {
        "torch (+ its requirements)": torch,
        "other runtime dependencies": deps,
        "model weights": model,
        "scanflow": {"scanflow"},
    }
    print(f"{'layer':<30} {'packages':>8} {'on disk MB':>11} {'gzip MB':>9}")
    print(
        f"{'base (assumed)':<30} {'':>8} {BASE_UNCOMPRESSED_MB:>11.0f} {BASE_COMPRESSED_MB:>9.0f}"
    )
    total_raw, total_gz = BASE_UNCOMPRESSED_MB, BASE_COMPRESSED_MB
    for label, names in layers.items():
        files = layer_files(names)
        raw = sum(f.stat().st_size for f in files) / 1e6
        gz = compressed_size(files) / 1e6 if not args.no_compress else float("nan")
        total_raw += raw
        total_gz += gz
        print(f"{label:<30} {len(names):>8} {raw:>11.0f} {gz:>9.0f}")
    print(f"{'total':<30} {'':>8} {total_raw:>11.0f} {total_gz:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
