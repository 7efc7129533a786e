"""Which uploads an S3 bucket's event notifications deliver, by S3's own rules.

S3 matches a notification's key filter against the object key as stored (not URL-encoded):
a ``prefix`` rule with ``startswith`` and a ``suffix`` rule with ``endswith``, both
case-sensitive. So a ``.mov`` suffix misses an iPhone's ``.MOV``, and an upload nobody is
notified of vanishes without a log line. :func:`missed_uploads` lists, for the trigger's
allowed prefixes and extensions in every mix of case, the sample keys no configuration
delivers; ``scanflow doctor`` runs it on the live bucket and the rehearsal on the template.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

DESTINATIONS = ("LambdaFunctionConfigurations", "QueueConfigurations", "TopicConfigurations")


def rules_of(configuration: Mapping[str, Any]) -> dict[str, str]:
    """A notification configuration's key filter rules, names in lower case."""
    rules = configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return {str(r["Name"]).lower(): str(r["Value"]) for r in rules}


def matches(
    configuration: Mapping[str, Any], key: str, event: str = "s3:ObjectCreated:Put"
) -> bool:
    """Does S3 deliver ``event`` for ``key`` through this configuration?"""
    events = configuration.get("Events", [])
    family = event.rsplit(":", 1)[0] + ":*"
    if event not in events and family not in events:
        return False
    rules = rules_of(configuration)
    return key.startswith(rules.get("prefix", "")) and key.endswith(rules.get("suffix", ""))


def case_variants(extension: str) -> list[str]:
    """``mov`` -> ``mov``, ``moV``, ... ``MOV``: every mix of case a device might write."""
    pairs = [(c.lower(), c.upper()) if c.isalpha() else (c,) for c in extension]
    return ["".join(p) for p in itertools.product(*pairs)]


def sample_keys(prefixes: Iterable[str], extensions: Iterable[str]) -> list[str]:
    """One upload key per prefix and per spelling of each extension."""
    return [
        f"{prefix}patient-1/scans/scan-1.{variant}"
        for prefix in prefixes
        for extension in extensions
        for variant in case_variants(extension)
    ]


def delivering(
    notification: Mapping[str, Any], key: str, destinations: Iterable[str] | None = None
) -> list[str]:
    """The destination ARNs that get an ObjectCreated event for ``key``: Lambda functions,
    queues and topics, optionally only those in ``destinations``; ``EventBridge`` when the
    bucket sends every event to EventBridge."""
    wanted = set(destinations) if destinations is not None else None
    out = []
    for kind in DESTINATIONS:
        for configuration in notification.get(kind, []):
            arn = str(
                configuration.get("LambdaFunctionArn")
                or configuration.get("QueueArn")
                or configuration.get("TopicArn")
            )
            if (wanted is None or arn in wanted) and matches(configuration, key):
                out.append(arn)
    if "EventBridgeConfiguration" in notification and (wanted is None or "EventBridge" in wanted):
        out.append("EventBridge")
    return out


def missed_uploads(
    notification: Mapping[str, Any],
    prefixes: Iterable[str],
    extensions: Iterable[str],
    destinations: Iterable[str] | None = None,
) -> list[str]:
    """Sample upload keys the bucket's notifications would not deliver to ``destinations``
    (any destination when None)."""
    wanted = list(destinations) if destinations is not None else None
    return [
        key
        for key in sample_keys(prefixes, extensions)
        if not delivering(notification, key, wanted)
    ]
