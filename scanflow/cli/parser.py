"""Every ``scanflow`` command and its arguments, in one place: the command line's table of
contents. Only argparse here; the handlers live in ``local.py`` (the embedded default and
scans), ``models.py`` (model packages) and ``production.py`` (AWS and Prefect Cloud), and
each command names its handler as ``group`` and ``command``."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from deployments.work_pools import POOLS
from scanflow.settings import NOTIFICATION_SECRETS

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DESCRIPTION = """\
Turns patients' home video scans of their teeth into insights for their orthodontist.

    scanflow up | down | demo                       the local stack; demo also processes a sample
    scanflow server start|stop|status [--database sqlite|postgres]
                                      [--messaging memory|redis] [--replicas N]
    scanflow process VIDEO_OR_URI [--patient-id P] [--scan-id S] [--options JSON]
    scanflow submit  VIDEO_OR_URI [--patient-id P] [--scan-id S] [--wait] [--rerun]
    scanflow sample  PATH [--seconds N] [--width W --height H]
    scanflow reconcile [--since T] [--until T] [--dry-run] [--json]
    scanflow ops-report [--since T] [--until T] [--json]
    scanflow report PATIENT                         a patient's page across their scans
    scanflow backfill [--since T] [--patient P] [--model NAME@VERSION|URI] [--json]
    scanflow model dataset|train|publish|evaluate|shadow|promote|rollback|list ...
    scanflow pools apply [NAME] [--replace-template] [--credential-secret-arn ARN]
    scanflow pools templates
    scanflow deploy NAME [NAME ...]
    scanflow automations apply [--dry-run] | show
    scanflow secrets set platform-signing-secret|slack-webhook-url < value-file
    scanflow doctor [--json]

Commands that talk to Prefect use the API PREFECT_API_URL names, or the local server."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scanflow",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    _local(sub)
    _model(sub)
    _production(sub)
    return p


def _command(sub: Subparsers, group: str, name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002
    parser = sub.add_parser(name, help=help)
    parser.set_defaults(group=group, handler=name.replace("-", "_"))
    return parser


_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def when(text: str) -> datetime:
    """A point in time: ISO 8601 (UTC unless it says), or a duration ago (90s, 30m, 2h, 7d)."""
    ago = _AGO.match(text.strip())
    if ago:
        seconds = float(ago[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[ago[2]]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO time nor a duration ago (90s, 30m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _replicas(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 32:
        raise argparse.ArgumentTypeError(f"{text!r}: replicas are 1 to 32")
    return int(text)


def _local(sub: Subparsers) -> None:
    _command(sub, "local", "up", help="start the local server, pool, deployment and worker")
    _command(sub, "local", "down", help="stop the local worker and server")
    demo = _command(
        sub, "local", "demo", help="up, then process a sample scan through the deployment"
    )
    demo.add_argument("--timeout", type=float, default=600)
    srv = _command(sub, "local", "server", help="the local Prefect server")
    srv.add_argument("action", choices=["start", "stop", "status"])
    srv.add_argument("--database", choices=["sqlite", "postgres"])
    srv.add_argument(
        "--messaging",
        choices=["memory", "redis"],
        help="redis (PostgreSQL only): the API and Prefect's services in processes of their "
        "own, sharing events through SCANFLOW_REDIS_URL",
    )
    srv.add_argument(
        "--replicas",
        type=_replicas,
        help="API replicas on the one port, 1-32 (above 1: --messaging redis)",
    )
    for name, help_ in (
        ("process", "run the flow here, now"),
        ("submit", "create a run of the deployment through the API"),
    ):
        c = _command(sub, "local", name, help=help_)
        c.add_argument("video", help="local path, file:// or s3:// URI")
        c.add_argument("--patient-id", default="anonymous")
        c.add_argument("--scan-id", default=None, help="default: from the file name")
        c.add_argument("--options", default=None, help="ScanOptions as JSON")
        if name == "submit":
            c.add_argument("--wait", action="store_true", help="wait and print the outcome")
            c.add_argument("--rerun", action="store_true", help="a new run even if submitted")
            c.add_argument("--timeout", type=float, default=600)
    r = _command(
        sub, "local", "reconcile", help="one reconcile pass: uploads, runs, outcomes, healed"
    )
    r.add_argument("--since", type=when, default=None, help="window start: ISO time or 2h, 30m")
    r.add_argument("--until", type=when, default=None, help="window end (default: settled now)")
    r.add_argument("--dry-run", action="store_true", help="find the gaps, heal nothing")
    r.add_argument("--json", action="store_true", help="print the ledger as JSON")
    o = _command(sub, "local", "ops-report", help="a day of scans: outcomes, causes, latencies")
    o.add_argument("--since", type=when, default=None, help="default: 24 h before --until")
    o.add_argument("--until", type=when, default=None, help="default: now")
    o.add_argument("--json", action="store_true", help="print the report as JSON")
    rp = _command(sub, "local", "report", help="write a patient's page across their scans")
    rp.add_argument("patient", help="the pseudonymous patient id")
    b = _command(sub, "local", "backfill", help="past scans processed again on the backfill queue")
    b.add_argument("--since", type=when, default=None, help="scans scanned since: ISO time or 30d")
    b.add_argument("--patient", default=None, help="only this patient's scans")
    b.add_argument(
        "--model",
        default=None,
        help="NAME@VERSION in the registry, or a package URI; default: production's",
    )
    b.add_argument("--timeout", type=float, default=3600, help="seconds to wait for one scan")
    b.add_argument("--json", action="store_true", help="print the ledger as JSON")
    s = _command(sub, "local", "sample", help="write a synthetic scan video")
    s.add_argument("path")
    s.add_argument("--seconds", type=float, default=20.0)
    s.add_argument("--width", type=int, default=640)
    s.add_argument("--height", type=int, default=480)
    s.add_argument("--fps", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=7)


def _model(sub: Subparsers) -> None:
    p = _command(
        sub, "models", "model", help="model packages: dataset, train, publish, promote, list"
    )
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
    t.add_argument("data_dir", help="folder-per-class dataset (see cv/model/viewdata.py)")
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
        help="also publish it (default registry: SCANFLOW_MODEL_REGISTRY_URI or the "
        "shipped scanflow/models/packages/)",
    )
    t.add_argument("--replace", action="store_true", help="with --publish: overwrite")

    pub = msub.add_parser("publish", help="put a package in a registry under name/version")
    pub.add_argument("package", help="the package .zip")
    pub.add_argument("--registry", default=None, help="file:// or s3:// registry URI")
    pub.add_argument("--replace", action="store_true", help="overwrite a published version")

    pro = msub.add_parser("promote", help="check a package and make it the production model")
    pro.add_argument("uri", help="file:// or s3:// URI (or path) of a package .zip")
    pro.add_argument("--sha256", default=None, help="the sha256 it must have")
    pro.add_argument("--reason", default="", help="why: recorded in the model history")
    pro.add_argument(
        "--force", action="store_true", help="promote without a passed shadow run (recorded)"
    )

    sh = msub.add_parser("shadow", help="a candidate over past scans, beside production")
    sh.add_argument("package", help="the candidate: a package .zip path or URI")
    sh.add_argument("--last", type=int, default=20, help="the newest N completed scans")
    sh.add_argument("--since", type=when, default=None, help="only scans completed since")
    sh.add_argument("--json", action="store_true", help="print the report as JSON")

    ev = msub.add_parser(
        "evaluate", help="a candidate and production measured on the same labelled frames"
    )
    ev.add_argument("package", help="the candidate: a package .zip path or URI")
    ev.add_argument("data_dir", help="labelled frames: <label>/ folders, or heldout/<label>/")
    ev.add_argument("--against", default=None, help="compare with this package, not production")
    ev.add_argument("--json", action="store_true", help="machine-readable output")

    rb = msub.add_parser("rollback", help="production back to the model before the last change")
    rb.add_argument("--reason", default="", help="why: recorded in the model history")

    ls = msub.add_parser("list", help="published packages, and which one is in production")
    ls.add_argument("--registry", default=None, help="file:// or s3:// registry URI")
    ls.add_argument("--json", action="store_true", help="machine-readable output")


def _production(sub: Subparsers) -> None:
    pools = _command(sub, "production", "pools", help="create or update the production pools")
    pools.add_argument("action", choices=["apply", "templates"])
    pools.add_argument(
        "name",
        nargs="?",
        choices=sorted(POOLS),
        help="default: the pools this workspace needs (Prefect Cloud's or a self-hosted one's)",
    )
    pools.add_argument(
        "--credential-secret-arn",
        default=None,
        help="scanflow-gpu: the Secrets Manager secret with the Prefect API key (or auth "
        "string); flow-run containers get it as an ECS secret, not in RunTask's environment",
    )
    pools.add_argument(
        "--replace-template",
        action="store_true",
        help="overwrite an existing pool's base job template (the workspace's own defaults "
        "are kept)",
    )
    deploy = _command(
        sub, "production", "deploy", help="apply prefect.yaml deployments (env checked first)"
    )
    deploy.add_argument("names", nargs="+", help="deployment names in prefect.yaml, e.g. ecs-gpu")
    automations = _command(
        sub, "production", "automations", help="scanflow's Prefect automations (notifications)"
    )
    automations.add_argument("action", choices=["apply", "show"])
    automations.add_argument("--dry-run", action="store_true", help="print the plan only")
    secrets = _command(
        sub, "production", "secrets", help="store a notification secret in its Secret block"
    )
    secrets.add_argument("action", choices=["set"])
    secrets.add_argument("name", choices=sorted(NOTIFICATION_SECRETS))
    doctor = _command(
        sub,
        "production",
        "doctor",
        help="check the live deployment (Prefect API and AWS) against the repository",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
