"""The two Prefect REST calls the trigger makes: find the deployment, create a flow run.

One ``PrefectAPI`` lives as long as the Lambda's execution environment, so the deployment's
id and the credential read from Secrets Manager are fetched once, not per invocation.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .aws_secrets import get_secret_string
from .config import TriggerConfig
from .errors import AuthError, ConfigError, PrefectAPIError, RejectedInput
from .events import ScanRequest
from .transport import Deadline, Response, RetryPolicy, request


@dataclass(frozen=True)
class FlowRun:
    id: str
    name: str
    state: str | None
    created: bool  # False: the idempotency key matched an existing run

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow_run_id": self.id,
            "flow_run_name": self.name,
            "state": self.state,
            "created": self.created,
        }


class PrefectAPI:
    def __init__(
        self,
        config: TriggerConfig,
        env: Mapping[str, str] | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self._env = env if env is not None else os.environ
        self._policy = policy or RetryPolicy()
        self._lock = threading.Lock()
        self._authorization: str | None = None
        self._deployment_id: str | None = None

    # -- credentials -------------------------------------------------------------------
    def _auth_header(self, deadline: Deadline) -> dict[str, str]:
        credential = self.config.credential
        if credential is None:
            return {}
        with self._lock:
            if self._authorization is None:
                value = credential.value or get_secret_string(
                    credential.secret_arn or "", self._env, deadline=deadline, policy=self._policy
                )
                if credential.kind == "api_key":
                    self._authorization = f"Bearer {value}"
                else:  # the server compares base64-decoded "user:password" to its setting
                    token = base64.b64encode(value.encode()).decode()
                    self._authorization = f"Basic {token}"
            return {"Authorization": self._authorization}

    def _call(
        self, method: str, path: str, deadline: Deadline, payload: object | None = None
    ) -> Response:
        headers = self._auth_header(deadline)
        body = None
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(payload).encode()
        response = request(
            method,
            f"{self.config.api_url}{path}",
            deadline=deadline,
            timeout_s=self.config.http_timeout_s,
            headers=headers,
            body=body,
            policy=self._policy,
        )
        if response.status in (401, 403):
            if self.config.credential is not None and self.config.credential.secret_arn:
                with self._lock:
                    self._authorization = None  # the secret may have been rotated
            raise AuthError(
                f"{method} {path}: HTTP {response.status} from {self.config.api_url}; check "
                "the Prefect API key or auth string the function is given",
                status=response.status,
            )
        return response

    # -- deployment --------------------------------------------------------------------
    def deployment_id(self, deadline: Deadline) -> str:
        if self._deployment_id is None:
            flow, name = self.config.deployment.split("/", 1)
            path = f"/deployments/name/{quote(flow, safe='')}/{quote(name, safe='')}"
            response = self._call("GET", path, deadline)
            if response.status == 404:
                raise ConfigError(
                    f"deployment {self.config.deployment!r} not found at {self.config.api_url}; "
                    "deploy it (prefect deploy --name ...) or fix SCANFLOW_DEPLOYMENT"
                )
            if response.status != 200:
                raise PrefectAPIError(
                    f"GET {path}: HTTP {response.status} {response.text()}", response.status
                )
            self._deployment_id = str(response.json()["id"])
        return self._deployment_id

    # -- flow runs ---------------------------------------------------------------------
    def create_flow_run(self, scan: ScanRequest, deadline: Deadline) -> FlowRun:
        """Create (or find, by idempotency key) the run for one scan."""
        body: dict[str, Any] = {
            "name": scan.scan_id,
            "parameters": scan.parameters(),
            "idempotency_key": scan.idempotency_key,
            "tags": list(self.config.run_tags),
        }
        if self.config.work_queue:
            body["work_queue_name"] = self.config.work_queue
        for attempt in range(2):
            deployment_id = self.deployment_id(deadline)
            path = f"/deployments/{deployment_id}/create_flow_run"
            response = self._call("POST", path, deadline, body)
            if response.status == 404 and attempt == 0:
                self._deployment_id = None  # redeployed under a new id: look it up again
                continue
            break
        if response.status in (200, 201):
            data = response.json()
            state = (data.get("state") or {}).get("type")
            return FlowRun(str(data["id"]), data["name"], state, response.status == 201)
        if response.status in (400, 409, 422):
            # e.g. parameters that fail the deployment's schema: the input is at fault
            raise RejectedInput(
                f"Prefect refused the run: HTTP {response.status} {response.text()}"
            )
        raise PrefectAPIError(
            f"POST {path}: HTTP {response.status} {response.text()}", response.status
        )
