"""scanflow's settings: one typed object, read from the environment (prefix ``SCANFLOW_``)
at the edge (the command line, the start of a flow run) and passed down as values."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cv.errors import Cause
from scanflow.access import parse_root

REPO_ROOT = Path(__file__).resolve().parents[1]
# `scanflow secrets set NAME`: the notification secrets kept in Prefect Secret blocks, and
# the setting that names each block.
NOTIFICATION_SECRETS = {
    "platform-signing-secret": "platform_signing_secret_block",
    "slack-webhook-url": "slack_webhook_block",
}


class Settings(BaseSettings):
    # hide_input_in_errors: a bad value of a secret (server_auth, signing secret) must not
    # be echoed into an error message or a log
    model_config = SettingsConfigDict(
        env_prefix="SCANFLOW_", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Field(
        REPO_ROOT / ".scanflow",
        description="Local state: server database, logs, pid files, results.",
    )
    results_uri: str | None = Field(
        None, description="Results root, file:// or s3://; default: file://<home>/results."
    )
    work_dir: Path | None = Field(None, description="Scratch space for runs; default <home>/work.")
    model_cache_dir: Path | None = Field(
        None, description="Downloaded models; default <home>/models."
    )
    input_roots: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Where scan videos may be read from: s3://bucket/prefix and file:///dir "
        "roots, a JSON list or separated by commas; default: <home>/samples and "
        "<home>/uploads, nothing else (scanflow/access.py).",
    )
    model_registry_uri: str | None = Field(
        None,
        description="Model registry, file:// or s3://; default: the repository's models/.",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Threads for CPU inference; default: the CPUs this process may use "
        "(affinity and cgroup quota).",
    )
    server_host: str = Field("127.0.0.1", description="Where the local Prefect server listens.")
    server_port: int = Field(4200, ge=1, le=65535)
    database: Literal["sqlite", "postgres"] = Field("sqlite", description="Local server DB.")
    postgres_url: str = Field(
        "postgresql+asyncpg://postgres@127.0.0.1:5432/scanflow",
        description="Used when database=postgres.",
    )
    messaging: Literal["memory", "redis"] = Field(
        "memory",
        description="How the local server's API and its background services share events, "
        "caches and leases: memory (one process, the default) or redis (redis_url; "
        "PostgreSQL only), which lets the API run as several replicas beside a services "
        "process of its own (docs/operations.md, 'The self-hosted server at scale').",
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis for messaging=redis (Prefect's broker, cache, causal ordering and "
        "concurrency leases); redis://[user:password@]host:port/db.",
    )
    server_replicas: int = Field(
        1,
        ge=1,
        le=32,
        description="API replicas of the local server, one port (the processes share its "
        "socket); above 1 needs messaging=redis.",
    )
    server_auth: SecretStr | None = Field(
        None,
        description="'user:password': the local server requires basic auth "
        "(PREFECT_SERVER_API_AUTH_STRING) and the stack's clients send it "
        "(PREFECT_API_AUTH_STRING); unset: no auth.",
    )
    work_pool: str = Field("process", description="Local work pool name.")
    pool_concurrency: int = Field(2, ge=1, description="Runs the local pool runs at once.")
    deployment: str = Field("process-scan/local", description="flow/deployment to submit to.")
    prefork: bool = Field(
        True,
        description="The local worker forks each flow run from a warm parent with Prefect, "
        "the flows and the model loaded (scanflow.local.prefork), instead of starting a "
        "fresh interpreter per run; false: Prefect's own command.",
    )
    worker_query_seconds: float = Field(
        1.0, gt=0, le=30, description="How often the worker polls for runs."
    )
    code_version: str | None = Field(
        None, description="Recorded in manifests; default: package version and git commit."
    )

    # -- production (docs/production.md) --------------------------------------------------
    prefect_platform: Literal["auto", "cloud", "server"] = Field(
        "auto",
        description="Where the Prefect API is: Prefect Cloud (push pools, API keys) or a "
        "self-hosted server; auto: Cloud when PREFECT_API_URL is on api.prefect.cloud.",
    )
    trigger_function: str = Field(
        "scanflow-trigger", description="The upload trigger's Lambda function (scanflow doctor)."
    )

    # -- notifications (docs/notifications.md) -------------------------------------------
    platform_webhook_url: str | None = Field(
        None, description="The platform's webhook endpoint; unset: no platform events."
    )
    platform_signing_secret: SecretStr | None = Field(
        None,
        description="HMAC key for X-Scanflow-Signature; unset: read the Secret block below.",
    )
    platform_signing_secret_block: str = Field(
        "scanflow-platform-signing-secret", description="Secret block holding the HMAC key."
    )
    slack_webhook_url: SecretStr | None = Field(
        None, description="Slack incoming-webhook URL; unset: read the Secret block below."
    )
    slack_webhook_block: str = Field(
        "scanflow-slack-webhook-url", description="Secret block holding the Slack webhook URL."
    )
    slack_events: list[str] = Field(
        ["scan.failed", "scan.crashed", "scan.stalled"],
        description="Event types posted to Slack (JSON list in the environment); a "
        "rejection is the platform's to tell the patient, not on-call's.",
    )
    slack_webhook_urls: dict[Cause, SecretStr] = Field(
        {},
        description="A Slack webhook per cause (JSON object, e.g. "
        '{"model": "https://hooks.slack.com/...", "internal": "..."}); a cause not named '
        "goes to slack_webhook_url.",
    )
    slack_oncall_mention: str | None = Field(
        None,
        description="Put first in Slack messages whose cause pages on-call (model, internal), "
        "e.g. <!subteam^S0123> or <!here>; unset: no mention.",
    )
    notify_timeout_s: float = Field(10.0, gt=0, le=120, description="Per HTTP request.")
    notify_pool: str = Field("notify", description="Work pool of the notify-outcome deployment.")
    notify_deployment: str = Field(
        "notify-outcome/notify", description="flow/deployment the automations run."
    )
    stall_after_s: float = Field(
        1800, ge=10, description="A run Running longer than this is reported stalled."
    )
    pending_after_s: float = Field(
        900, ge=10, description="A run Pending longer than this is reported (no capacity)."
    )
    heartbeat_grace_s: float = Field(
        75,
        ge=35,
        description="No heartbeat nor state change for this long marks a run Crashed "
        "(heartbeats every 30 s, prefect.yaml).",
    )
    ui_images: Literal["auto", "inline", "presigned", "links"] = Field(
        "auto",
        description="Pictures in a run's UI artifact: inline (small JPEGs as data: URIs, "
        "stored in the Prefect database), presigned (short-lived S3 URLs), links (the "
        "results' URIs, no picture); auto: inline for file:// results, links for s3://.",
    )
    presign_expiry_s: int = Field(
        900, ge=60, le=604800, description="Life of a presigned URL in a UI artifact."
    )
    backfill_queue: str = Field(
        "backfill",
        description="Work queue of backfill and shadow runs: served after uploads, with a "
        "concurrency limit that leaves uploads a slot (the local pool's: pool_concurrency-1).",
    )
    backfill_patients: int = Field(
        2, ge=1, le=64, description="Patients a backfill re-processes at once (each in order)."
    )
    shadow_min_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="The promotion gate: a candidate's views must agree with production's on "
        "at least this share of the shadowed scans' kept frames (and cost no scan a view).",
    )
    # -- the reconciler (flows/reconcile.py) ----------------------------------------------
    uploads_uri: str | None = Field(
        None,
        description="The upload bucket (s3://bucket[/prefix]) the reconciler lists; unset: it "
        "checks runs and their outcomes only.",
    )
    reconcile_lookback_s: float = Field(
        86400, gt=0, description="A pass's window, back from its end (--since overrides)."
    )
    reconcile_settle_s: float = Field(
        300,
        ge=0,
        description="What is younger than this is left to the trigger, the hooks and the "
        "automations: the window ends this long ago.",
    )
    reconcile_max_actions: int = Field(
        500, ge=0, description="Writes (runs created, events sent) a pass makes at most."
    )
    crash_retries: int = Field(
        1,
        ge=0,
        le=3,
        description="A scan whose process, worker or machine died (Crashed) on one of its "
        "first N attempts is rescheduled, same flow run (default 1: a crash is ours, not the "
        "scan's); 0: crashes are only reported.",
    )

    @field_validator("server_auth")
    @classmethod
    def _user_colon_password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            user, _, password = value.get_secret_value().partition(":")
            if not user or not password:
                # the value is a secret: the message must not echo it
                raise ValueError("expected 'user:password', both non-empty")
        return value

    @field_validator("input_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return None
        parts = json.loads(text) if text.startswith("[") else re.split(r"[,\s]+", text)
        # A trailing separator ("a,") leaves an empty part: not a root.
        return [p for p in parts if p] if isinstance(parts, list) else parts

    @field_validator("input_roots")
    @classmethod
    def _check_roots(cls, value: list[str] | None) -> list[str] | None:
        for root in value or []:
            parse_root(root)  # a typo fails at start-up, not as a refused scan
        return value

    @property
    def allowed_input_roots(self) -> list[str]:
        """The input roots, with file:// roots also as their real paths (links resolved)."""
        home = self.home.resolve()
        roots = self.input_roots or [(home / "samples").as_uri(), (home / "uploads").as_uri()]
        out: list[str] = []
        for root in roots:
            out.append(root)
            parsed = parse_root(root)
            if parsed.scheme == "file":
                real = Path("/", *parsed.parts).resolve().as_uri()
                if real != str(parsed):
                    out.append(real)
        return out

    @property
    def results_root(self) -> str:
        return self.results_uri or (self.home / "results").resolve().as_uri()

    @property
    def scratch_dir(self) -> Path:
        return self.work_dir or self.home / "work"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.home / "models"

    @property
    def api_url(self) -> str:
        return f"http://{self.server_host}:{self.server_port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.server_host}:{self.server_port}"

    @property
    def database_url(self) -> str:
        if self.database == "postgres":
            return self.postgres_url
        return f"sqlite+aiosqlite:///{(self.home / 'prefect' / 'prefect.db').resolve()}"

    def on_prefect_cloud(self, api_url: str) -> bool:
        """Is ``api_url`` Prefect Cloud (or, set so, a stand-in for it)?"""
        if self.prefect_platform != "auto":
            return self.prefect_platform == "cloud"
        return "api.prefect.cloud" in api_url

    def resolved_code_version(self) -> str:
        return self.code_version or _code_version()


def prefect_client_env(settings: Settings) -> dict[str, str]:
    """The environment of a process that talks to the local server of these settings (the
    command line, ``prefect deploy``, the workers): this process's, pointed at it."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = settings.api_url
    env.setdefault("PREFECT_HOME", str(settings.home.resolve() / "prefect"))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env["SCANFLOW_HOME"] = str(settings.home.resolve())
    if settings.server_auth is not None:
        # Prefect's client sends it as basic auth (in a header, never on a command line)
        env["PREFECT_API_AUTH_STRING"] = settings.server_auth.get_secret_value()
    return env


@functools.cache
def _code_version() -> str:
    try:
        version = metadata.version("scanflow")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return f"{version}+g{sha}{'.dirty' if dirty.strip() else ''}"
    except (OSError, subprocess.SubprocessError):
        return version
