"""``scanflow model …``: build a dataset, train, publish, promote and list model packages.

scanflow model dataset OUT [--train-scans N --heldout-scans N --width W --height H]
scanflow model train DATA_DIR [--out PACKAGE.zip] [--name N] [--version V]
                              [--publish [REGISTRY]] [--replace]
scanflow model publish PACKAGE.zip [--registry URI] [--replace]
scanflow model promote URI [--sha256 HEX]
scanflow model list [--registry URI] [--json]
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from cv.model.viewdata import SyntheticDatasetSpec, build_synthetic_dataset
from scanflow.cli.local import is_local_api
from scanflow.local.stack import LocalStack
from scanflow.models.cache import cpu_threads
from scanflow.models.gate import may_promote
from scanflow.models.registry import (
    DEFAULT_PACKAGE,
    PRODUCTION_VARIABLE,
    REPO_MODELS,
    describe,
    list_models,
    load_package,
    model_history,
    production_model,
    publish_package,
    rollback_target,
    set_production_model,
)
from scanflow.settings import Settings
from scanflow.storage import to_uri


def cmd_model(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    handler = {
        "dataset": _dataset,
        "train": _train,
        "publish": _publish,
        "evaluate": _evaluate,
        "shadow": _shadow,
        "promote": _promote,
        "rollback": _rollback,
        "list": _list,
    }[args.model_command]
    try:
        return handler(args, settings, stack)
    except ValueError as exc:  # a bad dataset or argument: one line, not a traceback
        print(f"scanflow model {args.model_command}: {exc}", file=sys.stderr)
        return 2


def _registry(settings: Settings, given: str | None) -> str:
    return to_uri(given or settings.model_registry_uri or str(REPO_MODELS))


def _reachable(settings: Settings, stack: LocalStack, start: bool) -> bool:
    """Does the Prefect API answer? With ``start``, start the local server if it is ours."""
    if start and is_local_api(settings):
        stack.start_server()
    try:
        url = os.environ["PREFECT_API_URL"].rstrip("/")
        return httpx.get(f"{url}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


def _dataset(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
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
    """The train-view-model flow, here and now (its run and artifacts in the Prefect UI)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.train_view_model import train_view_model

    if not Path(args.data_dir).is_dir():
        raise ValueError(f"{args.data_dir} is not a folder")
    if not _reachable(settings, stack, start=True):
        print("scanflow model train: the Prefect API does not answer", file=sys.stderr)
        return 1
    out = Path(args.out or f"{args.name}-{args.version}.zip").resolve()
    registry = _registry(settings, args.publish or None) if args.publish is not None else None
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        trained = train_view_model(
            str(Path(args.data_dir).resolve()),
            name=args.name,
            version=args.version,
            out=str(out),
            epochs=args.epochs,
            seed=args.seed,
            heldout_fraction=args.heldout_fraction,
            threads=settings.cpu_threads or cpu_threads(),
            publish=registry,
            replace=args.replace,
        )
    ev = trained["evaluation"]
    print(f"package:  {trained['path']}")
    print(f"sha256:   {trained['sha256']}")
    print(f"labels:   {', '.join(trained['labels'])}")
    print(f"frames:   {trained['train_frames']} trained on, {ev['frames']} held out")
    print(f"held-out accuracy: {ev['accuracy']:.1%}")
    for label, recall in ev["per_class_recall"].items():
        print(f"  {label:16s} recall {'-' if recall is None else f'{recall:.1%}'}")
    if "published" in trained:
        print(f"published: {trained['published']}")
    return 0


def _publish(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    entry = publish_package(
        Path(args.package), _registry(settings, args.registry), replace=args.replace
    )
    print(f"published {entry.name} {entry.version} ({entry.sha256})")
    print(entry.uri)
    return 0


def _promote(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    _reachable(settings, stack, start=True)
    import torch  # loads the package for real before any run can pick it up

    uri = to_uri(args.uri)
    entry = describe(uri, settings.models_dir, args.sha256)
    # Load it for real (backbone, head, a test frame) before any run can pick it up.
    load_package(entry.ref(), settings.models_dir, torch.device("cpu"))
    passed, verdict = may_promote(settings.results_root, entry.sha256)
    if not passed and not args.force:
        print(f"scanflow model promote: refused: {verdict}", file=sys.stderr)
        return 1
    reason = args.reason if passed else f"{args.reason} [forced past the gate: {verdict}]"
    set_production_model(entry.ref(), action="promote", by=operator(), reason=reason.strip())
    print(f"gate:   {'passed' if passed else 'FORCED'}: {verdict}")
    print(f"production model ({PRODUCTION_VARIABLE}): {entry.name} {entry.version}")
    print(f"  uri:    {entry.uri}")
    print(f"  sha256: {entry.sha256}")
    return 0


def labelled_frames(root: Path) -> list[tuple[Path, str]]:
    """The frames to measure on: ``heldout/`` (or test/, val/) when the folder is split,
    else every ``<label>/`` folder's images."""
    from cv.model.viewdata import HELDOUT_NAMES, IMAGE_SUFFIXES

    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    base = next((root / n for n in HELDOUT_NAMES if (root / n).is_dir()), root)
    frames = [
        (f, d.name)
        for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
        for f in sorted(d.iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not frames:
        raise ValueError(f"{base} holds no labelled frames (<label>/ folders of images)")
    return frames


def _evaluate(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    import torch

    from cv.model.evaluation import measure

    frames = labelled_frames(Path(args.data_dir))
    if args.against:
        other, other_is = describe(to_uri(args.against), settings.models_dir).ref(), "against"
    else:
        promoted = production_model() if _reachable(settings, stack, start=False) else None
        other, other_is = promoted or DEFAULT_PACKAGE, "production"
    candidate = describe(to_uri(args.package), settings.models_dir).ref()
    threads = settings.cpu_threads or cpu_threads()
    results = {}
    for role, ref in (("candidate", candidate), (other_is, other)):
        model = load_package(ref, settings.models_dir, torch.device("cpu"))
        results[role] = {
            "model": ref.model_dump(),
            **measure(model, frames, threads=threads).as_dict(),
        }
    if args.json:
        print(json.dumps({"frames": len(frames), **results}, indent=2))
        return 0
    print("\n".join(comparison_lines(results, len(frames), args.data_dir)))
    return 0


def comparison_lines(results: dict[str, dict[str, Any]], frames: int, where: str) -> list[str]:
    """Two models side by side: accuracy, calibration, per-view precision and recall, and
    each one's confusion matrix."""
    roles = list(results)
    a, b = (results[r] for r in roles)
    lines = [f"{frames} labelled frames from {where}", ""]
    lines.append(f"{'':24s}" + "".join(f"{r:>22s}" for r in roles))
    lines.append(
        f"{'model':24s}"
        + "".join(f"{x['model']['name'] + ' ' + x['model']['version']:>22s}" for x in (a, b))
    )
    lines.append(f"{'accuracy':24s}" + "".join(f"{x['accuracy']:>22.1%}" for x in (a, b)))
    lines.append(f"{'calibration error (ECE)':24s}" + "".join(f"{x['ece']:>22.3f}" for x in (a, b)))
    views = list(dict.fromkeys([*a["labels"], *b["labels"]]))

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    for view in views:
        cells = [
            f"{pct(x['per_class_precision'].get(view))} / {pct(x['per_class_recall'].get(view))}"
            for x in (a, b)
        ]
        lines.append(f"{view + ' prec/recall':24s}" + "".join(f"{c:>22s}" for c in cells))
    for role in roles:
        x = results[role]
        lines += ["", f"confusion, {role} (rows: truth, columns: prediction)"]
        lines.append(f"{'':18s}" + "".join(f"{lab[:8]:>9s}" for lab in x["labels"]))
        for lab, row in zip(x["labels"], x["confusion"], strict=True):
            lines.append(f"{lab[:18]:18s}" + "".join(f"{v:>9d}" for v in row))
    return lines


def _shadow(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    """The shadow-model flow, here and now; exit 1 when the candidate fails the gate."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.shadow_model import shadow_model

    if not _reachable(settings, stack, start=True):
        print("scanflow model shadow: the Prefect API does not answer", file=sys.stderr)
        return 1
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        report = shadow_model(to_uri(args.package), last=args.last, since=args.since)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for s in report["scans"]:
            lost = ", ".join(s["views_lost"]) or "-"
            found = ", ".join(s["views_found"]) or "-"
            tracking = ", ".join(t["view"] for t in s["tracking_changed"]) or "-"
            print(
                f"{s['scan'].rstrip('/').rsplit('/', 1)[-1]:24s} agreement {s['agreement']:6.1%}"
                f"  lost {lost:20s} found {found:20s} tracking changed {tracking:20s}"
                f" {s['seconds']:.1f} s"
            )
        gate = report["gate"]
        print(f"gate: {'passed' if gate['passed'] else 'FAILED'}: {gate['why']}")
        print(f"report: {report['report']}")
    return 0 if report["gate"]["passed"] else 1


def operator() -> str:
    """Who is changing production: SCANFLOW_OPERATOR, else the login name."""
    return os.environ.get("SCANFLOW_OPERATOR") or getpass.getuser()


def _rollback(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    if not _reachable(settings, stack, start=True):
        print("scanflow model rollback: the Prefect API does not answer", file=sys.stderr)
        return 1
    target, what = rollback_target(model_history())
    if target is not None:
        import torch

        load_package(target, settings.models_dir, torch.device("cpu"))  # it still loads
    set_production_model(target, action="rollback", by=operator(), reason=args.reason)
    print(f"production model: back to {what}")
    return 0


def _history_lines(history: list[dict[str, Any]], last: int = 10) -> list[str]:
    lines = []
    for h in history[-last:]:
        model = h.get("model") or {"name": DEFAULT_PACKAGE.name, "version": "(default)"}
        why = f": {h['reason']}" if h.get("reason") else ""
        lines.append(
            f"  {str(h.get('at'))[:19]}  {h.get('action'):8s} {model['name']} "
            f"{model['version']}  by {h.get('by') or '?'}{why}"
        )
    return lines


def _list(args: argparse.Namespace, settings: Settings, stack: LocalStack) -> int:
    registry = _registry(settings, args.registry)
    entries = list_models(registry)
    production: Any = None
    history: list[dict[str, Any]] = []
    reachable = _reachable(settings, stack, start=False)
    if reachable:
        production = production_model()
        history = model_history()
    current = production or DEFAULT_PACKAGE
    if args.json:
        print(
            json.dumps(
                {
                    "registry": registry,
                    "production": production.model_dump() if production else None,
                    "default": DEFAULT_PACKAGE.model_dump(),
                    "models": [e.model_dump() for e in entries],
                    "history": history,
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
    if history:
        print("promotions and rollbacks (latest last):")
        print("\n".join(_history_lines(history)))
    return 0
