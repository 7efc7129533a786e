"""The Lambda entry point: ``scanflow_trigger.handler.handler``.

For each accepted upload it creates a run of the configured deployment and answers::

    {"status": "accepted" | "partial" | "rejected" | "ignored",
     "runs": [{"flow_run_id", "flow_run_name", "created", "idempotency_key", ...}],
     "rejected": [{"source": "Records[1]", "reason": "..."}]}

or, for an SQS batch (the event source mapping has ``ReportBatchItemFailures``), just::

    {"batchItemFailures": [{"itemIdentifier": "<messageId>"}, ...]}

with the summary in the log line. What is raised and what is answered decides what Lambda
retries:

- a bad event or record is *answered* (in ``rejected``) and logged: retrying cannot fix it,
  and one bad record does not hold back the good ones (in a batch, its message is deleted);
- a misconfigured function (ConfigError, AuthError) *raises* at once (a batch goes back to
  the queue whole, and to its dead-letter queue after ``maxReceiveCount`` receives);
- a Prefect API still unavailable at the time budget's end: after every record was tried,
  an asynchronous invocation *raises*, so Lambda retries the event (twice, then the
  on-failure destination); a batch *answers* the messages whose scans were not submitted as
  ``batchItemFailures``, so only those are received again. Runs already created are found
  again by their idempotency keys.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Protocol

from .config import TriggerConfig
from .errors import PrefectAPIError, RejectedInput, UnavailableError
from .events import parse_event
from .prefect_api import PrefectAPI
from .transport import Deadline

logger = logging.getLogger("scanflow_trigger")
logger.setLevel(logging.INFO)

DEFAULT_BUDGET_S = 30.0  # when invoked without a Lambda context (locally)

# One client per configuration for the execution environment's life: the deployment id and
# the secret are fetched once, on the first invocation that needs them.
_APIS: dict[TriggerConfig, PrefectAPI] = {}


class LambdaContext(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


def handler(event: Any, context: LambdaContext | None = None) -> dict[str, Any]:
    config = TriggerConfig.from_env(os.environ)
    api = _APIS.get(config)
    if api is None:
        api = _APIS.setdefault(config, PrefectAPI(config))
    budget = (
        context.get_remaining_time_in_millis() / 1000 if context is not None else DEFAULT_BUDGET_S
    )
    deadline = Deadline.within(budget - config.time_reserve_s)

    parsed = parse_event(event, config)
    runs: list[dict[str, Any]] = []
    rejected = [r.as_dict() for r in parsed.rejections]
    failed: list[str] = []
    unsent: list[str] = []  # SQS message ids whose scans were not submitted
    for scan in parsed.requests:
        try:
            run = api.create_flow_run(scan, deadline)
        except RejectedInput as exc:
            rejected.append({"source": scan.source, "reason": str(exc)})
        except PrefectAPIError as exc:
            client_error = exc.status is not None and exc.status < 500
            if client_error and not isinstance(exc, UnavailableError):
                raise  # the API refuses our requests: a configuration or version problem
            failed.append(f"{scan.source} ({scan.idempotency_key}): {exc}")
            unsent.extend(scan.batch_items)
        else:
            runs.append(
                {
                    "source": scan.source,
                    "scan_id": scan.scan_id,
                    "patient_id": scan.patient_id,
                    "video_uri": scan.video_uri,
                    "idempotency_key": scan.idempotency_key,
                    **run.as_dict(),
                }
            )

    status = _status(parsed.kind, runs, rejected, failed)
    logger.info(
        json.dumps(
            {
                "event": "scanflow.trigger",
                "status": status,
                "kind": parsed.kind,
                "runs": [
                    {k: r[k] for k in ("scan_id", "flow_run_id", "created", "idempotency_key")}
                    for r in runs
                ],
                "rejected": rejected,
                "failed": failed,
                **({"batch_size": len(parsed.batch_items)} if parsed.kind == "sqs" else {}),
            }
        )
    )
    if parsed.kind == "sqs":
        retry = set(unsent)  # in the batch's order, each message once
        items = dict.fromkeys(i for i in parsed.batch_items if i in retry)
        return {"batchItemFailures": [{"itemIdentifier": i} for i in items]}
    if failed:
        raise UnavailableError(
            f"{len(failed)} of {len(parsed.requests)} scans not submitted; "
            f"Lambda will retry the event: {'; '.join(failed)}"
        )
    return {"status": status, "runs": runs, "rejected": rejected}


def _status(kind: str, runs: list[Any], rejected: list[Any], failed: list[str]) -> str:
    if kind == "s3-test":
        return "ignored"
    if runs and (rejected or failed):
        return "partial"
    if runs:
        return "accepted"
    # nothing refused or failed either: only s3:TestEvents, e.g. one delivered through SNS
    return "rejected" if rejected or failed else "ignored"
