"""Reads a secret from AWS Secrets Manager with the function's own credentials.

The call is one signed POST (``secretsmanager.GetSecretValue``, AWS JSON 1.1), so it is
written here with Signature Version 4 from the standard library instead of packaging boto3.
A test checks the signature against botocore's signer. ``AWS_ENDPOINT_URL_SECRETS_MANAGER``
(or ``AWS_ENDPOINT_URL``) points it at another endpoint, as boto3 does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import urlsplit

from .errors import ConfigError
from .transport import Deadline, RetryPolicy, request

SERVICE = "secretsmanager"
TARGET = "secretsmanager.GetSecretValue"
CONTENT_TYPE = "application/x-amz-json-1.1"


def get_secret_string(
    secret_id: str,
    env: Mapping[str, str],
    *,
    deadline: Deadline,
    timeout_s: float = 5.0,
    policy: RetryPolicy | None = None,
) -> str:
    """The SecretString of ``secret_id`` (an ARN or name); ConfigError if it cannot be read."""
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or _region_of(secret_id)
    access_key = env.get("AWS_ACCESS_KEY_ID", "")
    secret_key = env.get("AWS_SECRET_ACCESS_KEY", "")
    if not (region and access_key and secret_key):
        raise ConfigError(
            f"cannot read {secret_id}: AWS_REGION and the function's credentials "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) must be in the environment"
        )
    endpoint = (
        env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER")
        or env.get("AWS_ENDPOINT_URL")
        or f"https://secretsmanager.{region}.amazonaws.com"
    ).rstrip("/")
    body = json.dumps({"SecretId": secret_id}).encode()
    headers = sign_request(
        method="POST",
        url=endpoint + "/",
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": TARGET},
        body=body,
        region=region,
        service=SERVICE,
        access_key=access_key,
        secret_key=secret_key,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        now=datetime.now(UTC),
    )
    response = request(
        "POST",
        endpoint + "/",
        deadline=deadline,
        timeout_s=timeout_s,
        headers=headers,
        body=body,
        policy=policy,
    )
    if response.status != 200:
        raise ConfigError(
            f"cannot read secret {secret_id}: HTTP {response.status} {response.text()}"
        )
    value = (response.json() or {}).get("SecretString")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"secret {secret_id} has no SecretString (or it is empty)")
    return value.strip()


def sign_request(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    region: str,
    service: str,
    access_key: str,
    secret_key: str,
    session_token: str | None,
    now: datetime,
) -> dict[str, str]:
    """Return ``headers`` plus Host, X-Amz-Date, the token and a SigV4 Authorization."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    signed: dict[str, str] = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed["host"] = parts.netloc
    signed["x-amz-date"] = amz_date
    if session_token:
        signed["x-amz-security-token"] = session_token
    names = sorted(signed)
    canonical_request = "\n".join(
        [
            method,
            parts.path or "/",
            parts.query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out = dict(headers)
    out["X-Amz-Date"] = amz_date
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


def _region_of(arn: str) -> str:
    parts = arn.split(":")
    return parts[3] if arn.startswith("arn:") and len(parts) > 3 else ""
