"""The trigger's exceptions (the tree is drawn in the package docstring)."""

from __future__ import annotations


class TriggerError(Exception):
    """Base of every error the trigger raises on purpose."""


class ConfigError(TriggerError):
    """The function's configuration is wrong; every invocation will fail the same way."""


class RejectedInput(TriggerError):
    """An event or one of its records is not a scan upload we accept."""


class PrefectAPIError(TriggerError):
    """The Prefect API answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(PrefectAPIError, ConfigError):
    """401 or 403: the API key or auth string is wrong, missing or lacks permission."""


class UnavailableError(PrefectAPIError):
    """The API stayed unavailable (503, 502, 504, 429, dropped connections) within the
    invocation's time budget. Lambda retries the event; the idempotency key makes that safe."""
