"""``scanflow model …``: build a dataset, train, publish, promote and list model packages
(a flows.cli extension).

    scanflow model dataset OUT [--train-scans N --heldout-scans N --width W --height H]
    scanflow model train DATA_DIR [--out PACKAGE.zip] [--name N] [--version V]
                                  [--publish [REGISTRY]] [--replace]
    scanflow model publish PACKAGE.zip [--registry URI] [--replace]
    scanflow model promote URI [--sha256 HEX]
    scanflow model list [--registry URI] [--json]

Prefect is imported only once the environment points at the right server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from flows.server import LocalStack
from flows.settings import Settings


def register(sub: Any) -> dict[str, Any]:
    p = sub.add_parser("model", help="model packages: dataset, train, publish, promote, list")
    msub = p.add_subparsers(dest="model_command", required=True)

    d = msub.add_parser("dataset", help="render a folder-per-class view dataset (synthetic)")
    d.add_argument("out", help="folder to write train/<view>/ and heldout/<view>/ into")
    d.add_argument("--train-scans", type=int, default=8, help="synthetic scans for training")
    d.add_argument("--heldout-scans", type=int, default=3, help="other scans, held out")
    d.add_argument("--width", type=int, default=480)
    d.add_argument("--height", type=int, default=360)
    d.add_argument("--fps", type=float, default=6.0, help="frames per second rendered")
    d.add_argument("--seconds", type=float, default=10.0, help="length of each scan")

    t = msub.add_parser("train", help="train the view head on DATA_DIR, write a package")
    t.add_argument("data_dir", help="folder-per-class dataset (see cv/viewdata.py)")
    t.add_argument("--out", default=None, help="package to write; default ./<name>-<version>.zip")
    t.add_argument("--name", default="view-classifier")
    t.add_argument("--version", default="1.0.0")
    t.add_argument("--epochs", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--heldout-fraction", type=float, default=0.2, help="without split folders")
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument(
        "--publish",
        nargs="?",
        const="",
        default=None,
        metavar="REGISTRY",
        help="also publish it (default registry: SCANFLOW_MODEL_REGISTRY_URI or models/)",
    )
    t.add_argument("--replace", action="store_true", help="with --publish: overwrite")

    pub = msub.add_parser("publish", help="put a package in a registry under name/version")
    pub.add_argument("package", help="the package .zip")
    pub.add_argument("--registry", default=None, help="file:// or s3:// registry URI")
    pub.add_argument("--replace", action="store_true", help="overwrite a published version")

    pro = msub.add_parser("promote", help="check a package and make it the production model")
    pro.add_argument("uri", help="file:// or s3:// URI (or path) of a package .zip")
    pro.add_argument("--sha256", default=None, help="the sha256 it must have")

    ls = msub.add_parser("list", help="published packages, and which one is in production")
    ls.add_argument("--registry", default=None, help="file:// or s3:// registry URI")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    return {"model": cmd_model}


def cmd_model(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    handler = {
        "dataset": _dataset,
        "train": _train,
        "publish": _publish,
        "promote": _promote,
        "list": _list,
    }[args.model_command]
    try:
        return handler(args, settings, stack)
    except ValueError as exc:  # a bad dataset or argument: one line, not a traceback
        print(f"scanflow model {args.model_command}: {exc}", file=sys.stderr)
        return 2


def _registry(settings: Settings, given: str | None) -> str:
    from tasks.registry import REPO_MODELS
    from tasks.storage import to_uri

    return to_uri(given or settings.model_registry_uri or str(REPO_MODELS))


def _point_at_prefect(stack: LocalStack, start: bool) -> bool:
    """PREFECT_* for this process; start the local server if it is ours. True if reachable."""
    import httpx

    ours = "PREFECT_API_URL" not in os.environ
    for key, value in stack.client_env().items():
        if key.startswith("PREFECT_") or key == "DO_NOT_TRACK":
            os.environ.setdefault(key, value)
    if ours and start:
        stack.start_server()
    try:
        url = os.environ["PREFECT_API_URL"].rstrip("/")
        return httpx.get(f"{url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _dataset(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    from cv.viewdata import SyntheticDatasetSpec, build_synthetic_dataset

    spec = SyntheticDatasetSpec(
        train_seeds=tuple(range(args.train_scans)),
        heldout_seeds=tuple(range(100, 100 + args.heldout_scans)),
        width=args.width,
        height=args.height,
        fps=args.fps,
        seconds=args.seconds,
    )
    counts = build_synthetic_dataset(Path(args.out), spec)
    for split, c in counts.items():
        print(
            f"{split}: {sum(c.values())} frames  "
            + "  ".join(f"{k}={v}" for k, v in sorted(c.items()))
        )
    print(Path(args.out).resolve())
    return 0


def _train(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    import torch

    from cv.heads import TrainConfig
    from cv.model import load_backbone
    from cv.training import train_view_package
    from tasks.inference import cpu_threads
    from tasks.registry import BACKBONE, BACKBONE_IDENTITY, installed_backbone

    data = Path(args.data_dir)
    out = Path(args.out or f"{args.name}-{args.version}.zip")
    backbone = load_backbone(installed_backbone(), BACKBONE_IDENTITY, torch.device("cpu"))

    def progress(done: int, total: int) -> None:
        print(f"\rembedding frames: {done}/{total}", end="", file=sys.stderr, flush=True)

    trained = train_view_package(
        data,
        out,
        name=args.name,
        version=args.version,
        backbone_model=backbone,
        backbone=BACKBONE,
        config=TrainConfig(epochs=args.epochs, seed=args.seed),
        heldout_fraction=args.heldout_fraction,
        threads=settings.cpu_threads or cpu_threads(),
        progress=progress,
    )
    print(file=sys.stderr)
    ev = trained.evaluation
    print(f"package:  {trained.path.resolve()}")
    print(f"sha256:   {trained.sha256}")
    print(f"labels:   {', '.join(trained.labels)}")
    print(f"frames:   {trained.train_frames} trained on, {ev.frames} held out")
    print(f"held-out accuracy: {ev.accuracy:.1%}")
    for label, recall in ev.per_class_recall.items():
        print(f"  {label:16s} recall {'-' if recall is None else f'{recall:.1%}'}")
    if args.publish is not None:
        from tasks.registry import publish_package

        entry = publish_package(
            out, _registry(settings, args.publish or None), replace=args.replace
        )
        print(f"published: {entry.uri}")
    return 0


def _publish(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    from tasks.registry import publish_package

    entry = publish_package(
        Path(args.package), _registry(settings, args.registry), replace=args.replace
    )
    print(f"published {entry.name} {entry.version} ({entry.sha256})")
    print(entry.uri)
    return 0


def _promote(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    _point_at_prefect(stack, start=True)
    import torch

    from tasks.registry import PRODUCTION_VARIABLE, describe, load_package, set_production_model
    from tasks.storage import to_uri

    uri = to_uri(args.uri)
    entry = describe(uri, settings.models_dir, args.sha256)
    # Load it for real (backbone, head, a test frame) before any run can pick it up.
    load_package(entry.ref(), settings.models_dir, torch.device("cpu"))
    set_production_model(entry.ref())
    print(f"production model ({PRODUCTION_VARIABLE}): {entry.name} {entry.version}")
    print(f"  uri:    {entry.uri}")
    print(f"  sha256: {entry.sha256}")
    return 0


def _list(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    from tasks.registry import DEFAULT_PACKAGE, list_models

    registry = _registry(settings, args.registry)
    entries = list_models(registry)
    production: Any = None
    reachable = _point_at_prefect(stack, start=False)
    if reachable:
        from tasks.registry import production_model

        production = production_model()
    current = production or DEFAULT_PACKAGE
    if args.json:
        print(
            json.dumps(
                {
                    "registry": registry,
                    "production": production.model_dump() if production else None,
                    "default": DEFAULT_PACKAGE.model_dump(),
                    "models": [e.model_dump() for e in entries],
                },
                indent=2,
            )
        )
        return 0
    print(f"registry: {registry}")
    print(f"  {'name':20s} {'version':10s} {'sha256':14s} {'held-out':9s} {'data':10s}")
    for e in entries:
        mark = "*" if e.sha256 == current.sha256 else " "
        acc = "-" if e.heldout_accuracy is None else f"{e.heldout_accuracy:.1%}"
        data = "synthetic" if e.synthetic else "labelled"
        print(f"{mark} {e.name:20s} {e.version:10s} {e.sha256[:12]:14s} {acc:9s} {data:10s}")
    if not reachable:
        print("production: unknown (the Prefect API does not answer)")
    elif production is None:
        print(
            f"production: nothing promoted; runs use the default {DEFAULT_PACKAGE.name} "
            f"{DEFAULT_PACKAGE.version}"
        )
    else:
        print(f"production: {production.name} {production.version} ({production.uri})")
    return 0
