"""The model package: one zip archive that is a versioned, self-describing model.

    <name>-<version>.zip
     ├── package.json     name, version, format, architecture, backbone (name, version,
     │                    sha256, provenance, licence), preprocessing, training, evaluation,
     │                    and the sha256 of every other member
     ├── labels.json      the class names, by output index
     ├── head.pt          the view head's state dict
     ├── backbone.pth     optional: backbone weights; without it the package names the
     │                    installed backbone by sha256
     ├── evaluation.json  held-out figures (accuracy, per-class recall/precision, confusion)
     ├── confusion.png    the confusion matrix as a figure
     └── MODEL_CARD.md    what it is, what it was trained on, how well it did, its licence

The archive's own sha256 is its identity: references (run options, the production
Variable, the registry) carry it, and it is checked before anything inside is read. Every
way a package can be bad (wrong hash, truncated, a member missing or altered, labels
missing, weights that do not fit the architecture) is a ProcessingError with reason
model_error that names the package and the cause.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from cv.errors import ProcessingError, Reason
from cv.model.card import model_card, render_confusion
from cv.model.heads import Classifier, Evaluation, ViewHead, classify_frames
from cv.model.network import (
    INPUT_SIZE,
    MEAN,
    STD,
    Backbone,
    LoadedModel,
    ModelIdentity,
    load_backbone,
    sha256_file,
)
from cv.model.predictions import EMBEDDING_DIM

FORMAT = "scanflow-model/1"
ARCHITECTURE = {"backbone": "mobilenet_v2", "head": "linear", "embedding_dim": EMBEDDING_DIM}
# What cv.model.network.preprocess and to_input do; a package that asks for anything else
# is refused.
PREPROCESSING: dict[str, Any] = {
    "color": "RGB",
    "crop": "centre square",
    "resize": INPUT_SIZE,
    "interpolation": "area",
    "scale": "0..255",
    "mean": [round(m, 4) for m in MEAN],
    "std": [round(s, 4) for s in STD],
}
PACKAGE_JSON = "package.json"
LABELS_JSON = "labels.json"
HEAD_FILE = "head.pt"
BACKBONE_FILE = "backbone.pth"


@dataclass(frozen=True)
class PackageSpec:
    """What package.json says, checked."""

    name: str
    version: str
    labels: tuple[str, ...]
    backbone: Backbone
    bundles_backbone: bool
    created_at: str
    training: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)


def _model_error(where: str, cause: str) -> ProcessingError:
    return ProcessingError(Reason.MODEL_ERROR, f"model package {where}: {cause}")


# -- writing --------------------------------------------------------------------------------


def write_package(
    path: Path,
    *,
    name: str,
    version: str,
    labels: Sequence[str],
    head: ViewHead,
    backbone: Backbone,
    training: Mapping[str, Any],
    evaluation: Evaluation,
    backbone_weights: Path | None = None,
) -> str:
    """Write a model package archive.

    Args:
        path: the .zip to write (replaced atomically).
        name: the model's name (``[a-z0-9_.-]``).
        version: its version.
        labels: class names by the head's output index.
        head: the trained head.
        backbone: the backbone it was trained on.
        training: what it was trained on and how (recorded and shown in the card).
        evaluation: held-out figures.
        backbone_weights: bundle this backbone file in the package (default: refer to the
            installed backbone by sha256).
    Returns:
        The archive's sha256.
    """
    if head.n_classes != len(labels):
        raise ValueError(f"head predicts {head.n_classes} classes, {len(labels)} labels given")
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    with tempfile.TemporaryDirectory(prefix="scanflow-package-") as tmp:
        d = Path(tmp)
        torch.save(head.state_dict(), d / HEAD_FILE)
        (d / LABELS_JSON).write_text(json.dumps(list(labels), indent=2) + "\n")
        (d / "evaluation.json").write_text(json.dumps(evaluation.as_dict(), indent=2) + "\n")
        (d / "confusion.png").write_bytes(render_confusion(evaluation))
        card = model_card(
            name, version, backbone, labels, training, evaluation, created, FORMAT, PREPROCESSING
        )
        (d / "MODEL_CARD.md").write_text(card)
        if backbone_weights is not None:
            shutil.copyfile(backbone_weights, d / BACKBONE_FILE)
        members = sorted(p.name for p in d.iterdir())
        meta = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "created_at": created,
            "task": "view-classification",
            "architecture": ARCHITECTURE,
            "backbone": {
                "name": backbone.name,
                "version": backbone.version,
                "sha256": backbone.sha256,
                "source": backbone.source,
                "licence": backbone.licence,
                "bundled": backbone_weights is not None,
            },
            "preprocessing": PREPROCESSING,
            "labels_file": LABELS_JSON,
            "head_file": HEAD_FILE,
            "training": dict(training),
            "evaluation": {"accuracy": evaluation.accuracy, "frames": evaluation.frames},
            "files": {m: sha256_file(d / m) for m in members},
        }
        (d / PACKAGE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.part")
        with zipfile.ZipFile(part, "w", zipfile.ZIP_DEFLATED) as zf:
            for m in [PACKAGE_JSON, *members]:
                # A fixed timestamp: the bytes depend on the contents only.
                info = zipfile.ZipInfo(m, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, (d / m).read_bytes())
        part.replace(path)
    return sha256_file(path)


# -- reading --------------------------------------------------------------------------------


def open_package(archive: Path, sha256: str, dest: Path) -> PackageSpec:
    """Verify a package archive and unpack it.

    Args:
        archive: the local .zip.
        sha256: the sha256 the archive must have.
        dest: an empty or missing folder to unpack into (a complete unpack is reused).
    Returns:
        The checked contents of package.json.
    Raises:
        ProcessingError: model_error when the hash differs, the archive is truncated or
            not a zip, a member is missing or altered, or package.json or labels.json are
            missing or malformed.
    """
    where = archive.name
    if not archive.is_file():
        raise _model_error(where, "the file does not exist.")
    digest = sha256_file(archive)
    if digest != sha256:
        raise _model_error(
            where,
            f"sha256 is {digest[:12]}…, expected {sha256[:12]}…; the file is damaged, "
            "truncated or not the model that was asked for.",
        )
    done = dest / ".complete"
    if not done.is_file():
        _unpack(archive, dest)
    return read_spec(dest, where)


def _unpack(archive: Path, dest: Path) -> None:
    where = archive.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = PurePosixPath(info.filename)
                    if rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 1:
                        raise _model_error(where, f"unexpected member {info.filename!r}.")
                    (tmp / rel.name).write_bytes(zf.read(info))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
            raise _model_error(
                where, f"not a readable package archive ({type(exc).__name__}: {exc})."
            ) from exc
        (tmp / ".complete").write_text("")
        try:
            tmp.rename(dest)
        except OSError:
            # Another run unpacked the same archive first; its copy is as good as ours.
            if not (dest / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_spec(folder: Path, where: str) -> PackageSpec:
    """Check an unpacked package's package.json, member hashes and labels."""
    meta_path = folder / PACKAGE_JSON
    if not meta_path.is_file():
        raise _model_error(where, f"has no {PACKAGE_JSON}; it is not a scanflow model package.")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _model_error(where, f"{PACKAGE_JSON} is not valid JSON ({exc}).") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise _model_error(where, f"format {found!r} is not {FORMAT!r}.")
    if meta.get("architecture") != ARCHITECTURE:
        raise _model_error(
            where,
            f"architecture {meta.get('architecture')} is not the one this code runs "
            f"({ARCHITECTURE}).",
        )
    if meta.get("preprocessing") != PREPROCESSING:
        raise _model_error(
            where, f"preprocessing {meta.get('preprocessing')} is not {PREPROCESSING}."
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise _model_error(where, f"{PACKAGE_JSON} lists no files.")
    for required in (LABELS_JSON, HEAD_FILE):
        if required not in files or not (folder / required).is_file():
            what = "labels" if required == LABELS_JSON else "head weights"
            raise _model_error(where, f"has no {what} ({required}).")
    for member, expected in files.items():
        p = folder / str(member)
        if not p.is_file():
            raise _model_error(where, f"member {member} is missing.")
        if sha256_file(p) != expected:
            raise _model_error(where, f"member {member} does not match its recorded sha256.")
    try:
        labels = json.loads((folder / LABELS_JSON).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _model_error(where, f"{LABELS_JSON} is not valid JSON ({exc}).") from exc
    if (
        not isinstance(labels, list)
        or len(labels) < 2
        or not all(isinstance(x, str) and x for x in labels)
        or len(set(labels)) != len(labels)
    ):
        raise _model_error(where, f"{LABELS_JSON} must list two or more distinct class names.")
    bb = meta.get("backbone") or {}
    try:
        backbone = Backbone(
            str(bb["name"]),
            str(bb["version"]),
            str(bb["sha256"]),
            str(bb.get("source", "")),
            str(bb.get("licence", "")),
        )
    except KeyError as exc:
        raise _model_error(where, f"the backbone entry lacks {exc}.") from exc
    bundled = bool(bb.get("bundled"))
    if bundled and BACKBONE_FILE not in files:
        raise _model_error(where, f"says it bundles its backbone but has no {BACKBONE_FILE}.")
    return PackageSpec(
        name=str(meta.get("name")),
        version=str(meta.get("version")),
        labels=tuple(labels),
        backbone=backbone,
        bundles_backbone=bundled,
        created_at=str(meta.get("created_at", "")),
        training=meta.get("training") or {},
        evaluation=meta.get("evaluation") or {},
    )


def load_classifier(
    folder: Path,
    spec: PackageSpec,
    identity: ModelIdentity,
    device: torch.device,
    installed_backbone: Path | None,
) -> Classifier:
    """Load an unpacked, checked package onto a device and prove it runs.

    Args:
        folder: where ``open_package`` unpacked it.
        spec: what ``open_package`` returned.
        identity: the package's name, version and archive sha256 (for messages and the
            manifest).
        device: where to run.
        installed_backbone: the installed backbone weights, used when the package does not
            bundle its own; their sha256 must be the one the package names.
    Returns:
        The backbone and head on ``device``, with labels.
    Raises:
        ProcessingError: model_error when the backbone is missing or not the one named, or
            the head does not fit the labels or the embedding size.
    """
    where = f"{identity.name} {identity.version}"
    weights = folder / BACKBONE_FILE if spec.bundles_backbone else installed_backbone
    if weights is None:
        raise _model_error(where, "names an installed backbone, but none is installed.")
    backbone: LoadedModel = load_backbone(
        weights,
        ModelIdentity(spec.backbone.name, spec.backbone.version, spec.backbone.sha256),
        device,
    )
    head = ViewHead(len(spec.labels))
    try:
        state = torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True)
        head.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any load failure is a model error
        raise _model_error(
            where,
            f"the head in {HEAD_FILE} does not fit {len(spec.labels)} labels on a "
            f"{EMBEDDING_DIM}-d embedding ({type(exc).__name__}: {str(exc)[:200]}).",
        ) from exc
    head.eval().to(device)
    model = Classifier(identity, backbone, head, spec.labels)
    _smoke_test(model, where)
    return model


def _smoke_test(model: Classifier, where: str) -> None:
    """One grey frame through backbone and head: finite outputs, or the package is refused."""
    grey = np.full((INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)
    out = classify_frames(model, [grey], batch_size=1)
    if not (np.isfinite(out.embeddings).all() and np.isfinite(out.confidence).all()):
        raise _model_error(where, "produces non-finite outputs on a plain grey frame.")
