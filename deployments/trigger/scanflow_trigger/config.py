"""The trigger's settings, read once from the function's environment (set by the template).

| variable | default | meaning |
| --- | --- | --- |
| ``PREFECT_API_URL`` | required | e.g. ``https://api.prefect.cloud/api/accounts/A/workspaces/W`` |
| ``SCANFLOW_DEPLOYMENT`` | required | ``<flow>/<deployment>``, e.g. ``process-scan/ecs-cpu`` |
| ``SCANFLOW_ALLOWED_BUCKETS`` | required | comma-separated bucket names |
| ``SCANFLOW_ALLOWED_PREFIXES`` | ``patients/`` | comma-separated key prefixes |
| ``SCANFLOW_ALLOWED_EXTENSIONS`` | ``mp4,mov,m4v`` | video file extensions |
| ``SCANFLOW_MAX_OBJECT_BYTES`` | ``1000000000`` | larger uploads are refused (``too_large``) |
| ``SCANFLOW_WORK_QUEUE`` | empty | work queue for the runs; empty: the deployment's |
| ``SCANFLOW_RUN_TAGS`` | ``scanflow,s3-upload`` | tags on every run |
| ``SCANFLOW_HTTP_TIMEOUT_S`` | ``10`` | one request's timeout |
| ``SCANFLOW_TIME_RESERVE_S`` | ``2`` | kept back from the invocation's remaining time |
| ``PREFECT_API_KEY`` or ``PREFECT_API_KEY_SECRET_ARN`` | | Prefect Cloud (Bearer) |
| ``PREFECT_API_AUTH_STRING`` or ``PREFECT_API_AUTH_STRING_SECRET_ARN`` | | self-hosted
  server with ``PREFECT_SERVER_API_AUTH_STRING`` (Basic) |

At most one credential source may be set; none means an unauthenticated server.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigError

# The same pattern as scanflow/contracts/options.py ID_PATTERN (a test keeps them equal): ids become
# path segments of the results store and flow-run names.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

_DEPLOYMENT = re.compile(r"^[^/\s]+/[^/\s]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

CredentialKind = Literal["api_key", "auth_string"]


@dataclass(frozen=True)
class Credential:
    """Where the Prefect credential comes from: the value itself, or a secret's ARN."""

    kind: CredentialKind
    value: str | None = field(default=None, repr=False)
    secret_arn: str | None = None


@dataclass(frozen=True)
class TriggerConfig:
    api_url: str
    deployment: str
    allowed_buckets: frozenset[str]
    allowed_prefixes: tuple[str, ...] = ("patients/",)
    allowed_extensions: frozenset[str] = frozenset({"mp4", "mov", "m4v"})
    max_object_bytes: int = 1_000_000_000
    work_queue: str | None = None
    run_tags: tuple[str, ...] = ("scanflow", "s3-upload")
    http_timeout_s: float = 10.0
    time_reserve_s: float = 2.0
    credential: Credential | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TriggerConfig:
        """Read and check the settings; raises ConfigError naming the variable at fault."""

        def get(name: str) -> str:
            return env.get(name, "").strip()

        def required(name: str) -> str:
            value = get(name)
            if not value:
                raise ConfigError(f"{name} is not set; the template sets it on the function.")
            return value

        def items(name: str, default: str) -> list[str]:
            return [v.strip() for v in (get(name) or default).split(",") if v.strip()]

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = get(name)
            try:
                value = float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number.") from None
            if not low <= value <= high:
                raise ConfigError(f"{name}={value} is outside [{low}, {high}].")
            return value

        api_url = required("PREFECT_API_URL").rstrip("/")
        if not api_url.startswith(("https://", "http://")):
            raise ConfigError(f"PREFECT_API_URL={api_url!r} is not an http(s) URL.")
        deployment = required("SCANFLOW_DEPLOYMENT")
        if not _DEPLOYMENT.match(deployment):
            raise ConfigError(
                f"SCANFLOW_DEPLOYMENT={deployment!r} is not '<flow>/<deployment>', "
                "e.g. 'process-scan/ecs-cpu'."
            )
        buckets = items("SCANFLOW_ALLOWED_BUCKETS", "")
        if not buckets:
            raise ConfigError("SCANFLOW_ALLOWED_BUCKETS is not set: no upload would be accepted.")
        bad = [b for b in buckets if not _BUCKET.match(b)]
        if bad:
            raise ConfigError(f"SCANFLOW_ALLOWED_BUCKETS has invalid bucket names: {bad}.")
        prefixes = items("SCANFLOW_ALLOWED_PREFIXES", "patients/")
        extensions = [e.lower().lstrip(".") for e in items("SCANFLOW_ALLOWED_EXTENSIONS", "")]
        return cls(
            api_url=api_url,
            deployment=deployment,
            allowed_buckets=frozenset(buckets),
            allowed_prefixes=tuple(prefixes),
            allowed_extensions=frozenset(extensions or ("mp4", "mov", "m4v")),
            max_object_bytes=int(number("SCANFLOW_MAX_OBJECT_BYTES", 1e9, 1, 5e12)),
            work_queue=get("SCANFLOW_WORK_QUEUE") or None,
            run_tags=tuple(items("SCANFLOW_RUN_TAGS", "scanflow,s3-upload")),
            http_timeout_s=number("SCANFLOW_HTTP_TIMEOUT_S", 10.0, 0.5, 120.0),
            time_reserve_s=number("SCANFLOW_TIME_RESERVE_S", 2.0, 0.0, 60.0),
            credential=_credential(env),
        )


def _credential(env: Mapping[str, str]) -> Credential | None:
    sources = {
        "PREFECT_API_KEY": Credential("api_key", value=env.get("PREFECT_API_KEY", "").strip()),
        "PREFECT_API_KEY_SECRET_ARN": Credential(
            "api_key", secret_arn=env.get("PREFECT_API_KEY_SECRET_ARN", "").strip()
        ),
        "PREFECT_API_AUTH_STRING": Credential(
            "auth_string", value=env.get("PREFECT_API_AUTH_STRING", "").strip()
        ),
        "PREFECT_API_AUTH_STRING_SECRET_ARN": Credential(
            "auth_string", secret_arn=env.get("PREFECT_API_AUTH_STRING_SECRET_ARN", "").strip()
        ),
    }
    given = {name: c for name, c in sources.items() if c.value or c.secret_arn}
    if len(given) > 1:
        raise ConfigError(f"Set one Prefect credential, not several: {sorted(given)}.")
    return next(iter(given.values()), None)
