"""scanflow's settings: one typed object, read from the environment (prefix ``SCANFLOW_``)
at the edge (the command line, the start of a flow run) and passed down as values."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCANFLOW_", extra="ignore")

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
    work_pool: str = Field("process", description="Local work pool name.")
    pool_concurrency: int = Field(2, ge=1, description="Runs the local pool runs at once.")
    deployment: str = Field("process-scan/local", description="flow/deployment to submit to.")
    worker_query_seconds: float = Field(
        1.0, gt=0, le=30, description="How often the worker polls for runs."
    )
    code_version: str | None = Field(
        None, description="Recorded in manifests; default: package version and git commit."
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
        description="Event types posted to Slack (JSON list in the environment).",
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

    def resolved_code_version(self) -> str:
        return self.code_version or _code_version()


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
