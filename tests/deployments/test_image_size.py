"""The image-size estimate (deployments/image_size.py), measured on this environment's real
installed distributions (the same torch wheel the image installs): the dependency closure,
the files a layer keeps, the gzip figure, and the printed table, with no Docker at all."""

from __future__ import annotations

import gzip
import os
import re
from importlib import metadata
from pathlib import Path

import pytest

from deployments import image_size


@pytest.fixture(scope="module")
def torch_layer() -> set[str]:
    return image_size.closure(["torch"], set())


def test_the_torch_closure_follows_requirements_but_not_extras(torch_layer: set[str]) -> None:
    assert "torch" in torch_layer
    # torch's unconditional requirements are in, names normalised as the layers use them
    assert {"sympy", "networkx", "filelock", "jinja2", "typing-extensions"} <= torch_layer
    assert "mpmath" in torch_layer  # sympy's own requirement: followed transitively
    # extras-only requirements (optree, opt-einsum, pyyaml) are left out
    assert not {"optree", "opt-einsum", "pyyaml"} & torch_layer


def test_a_skipped_distribution_and_what_only_it_needs_stay_out(torch_layer: set[str]) -> None:
    deps = image_size.closure(["jinja2"], torch_layer)
    assert deps == set()  # jinja2 and markupsafe ship in the torch layer already
    assert image_size.closure(["jinja2"], set()) == {"jinja2", "markupsafe"}
    # a requirement that is not installed here is an optional one: skipped, not an error
    assert image_size.closure(["no-such-distribution-xyz"], set()) == set()


def test_the_torch_layer_drops_what_the_dockerfile_deletes_and_is_mostly_torch(
    torch_layer: set[str],
) -> None:
    files = image_size.layer_files(torch_layer)
    names = [str(f) for f in files]
    assert not any(n.endswith(".pyc") for n in names)
    assert not any(re.search(r"/torch/(test|include)/", n) for n in names)
    recorded_headers = [
        f for f in metadata.distribution("torch").files or [] if str(f).startswith("torch/include/")
    ]
    assert recorded_headers, "torch's RECORD lists its headers: the filter has work to do"
    sizes = {f: f.stat().st_size for f in files}
    torch_dir = Path(str(metadata.distribution("torch").locate_file("torch")))
    torch_only = sum(size for f, size in sizes.items() if f.is_relative_to(torch_dir))
    assert torch_only > 0.8 * sum(sizes.values())  # torch itself is the bulk of its layer


def test_compressed_size_is_what_gzip_at_its_default_level_writes(tmp_path: Path) -> None:
    zeros, noise = tmp_path / "zeros", tmp_path / "noise"
    zeros.write_bytes(bytes(3 << 20))  # more than one 1 MiB read
    noise.write_bytes(os.urandom(300_000))
    for path in (zeros, noise):
        expected = len(gzip.compress(path.read_bytes(), compresslevel=6, mtime=0))
        assert image_size.compressed_size([path]) == expected
    assert image_size.compressed_size([zeros]) < 10_000
    assert image_size.compressed_size([zeros, noise]) == image_size.compressed_size(
        [zeros]
    ) + image_size.compressed_size([noise])


def test_the_printed_layers_add_up_to_the_total_without_docker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker (nor anything else) to call
    assert image_size.main(["--no-compress"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        label, figures = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        rows[label] = [float(x) for x in figures.split()]
    assert list(rows) == [
        "base (assumed)",
        "torch (+ its requirements)",
        "other runtime dependencies",
        "model weights",
        "scanflow",
        "total",
    ]
    assert rows["base (assumed)"] == [
        image_size.BASE_UNCOMPRESSED_MB,
        image_size.BASE_COMPRESSED_MB,
    ]
    on_disk = {label: r[-2] for label, r in rows.items()}
    parts = sum(v for label, v in on_disk.items() if label != "total")
    assert abs(parts - on_disk["total"]) <= 3  # each figure is rounded to 1 MB
    assert on_disk["torch (+ its requirements)"] > on_disk["other runtime dependencies"]
    assert rows["model weights"][0] == 1 and rows["scanflow"][0] == 1  # package counts
    assert 5 <= on_disk["model weights"] <= 30  # MobileNetV2's weights, ~14 MB
