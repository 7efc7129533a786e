"""scanflow's settings: one typed object, read from the environment (prefix ``SCANFLOW_``)
at the edge (the command line, the start of a flow run) and passed down as values."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Literal

from pydantic import Field
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
