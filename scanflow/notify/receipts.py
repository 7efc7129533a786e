"""Receipts: the platform's acknowledgement of an event, kept beside the scan's results.

When the platform answers 2xx to an event, the delivering path writes
``<results root>/<patient_id>/<scan_id>/receipts/<event_id>.json`` (the event's type, the
answer's status, when, by which path). The reconciler (flows/reconcile.py) sends again
every final outcome without a receipt, with the same ``event_id``: the platform
deduplicates on it, so a receipt lost after a 2xx costs one duplicate, never a lost event.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from scanflow.contracts.events import WebhookEvent
from scanflow.storage import join, store_for

FOLDER = "receipts"


def receipt_uri(results_root: str, patient_id: str, scan_id: str, event_id: uuid.UUID) -> str:
    return join(results_root, patient_id, scan_id, FOLDER, f"{event_id}.json")


def record_receipt(results_root: str, event: WebhookEvent, status: int) -> str | None:
    """Write the receipt of a delivered event; None when the event names no scan."""
    if not event.patient_id or not event.scan_id:
        return None
    uri = receipt_uri(results_root, event.patient_id, event.scan_id, event.event_id)
    body = {
        "event_id": str(event.event_id),
        "type": event.type.value,
        "flow_run_id": str(event.flow_run_id),
        "status": status,
        "source": event.source,
        "acknowledged_at": datetime.now(UTC).isoformat(),
    }
    return store_for(uri).put_bytes(uri, json.dumps(body).encode(), "application/json")


def has_receipt(results_root: str, patient_id: str, scan_id: str, event_id: uuid.UUID) -> bool:
    uri = receipt_uri(results_root, patient_id, scan_id, event_id)
    return store_for(uri).exists(uri)
