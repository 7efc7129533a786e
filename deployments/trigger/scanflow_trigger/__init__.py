"""scanflow's upload trigger: an AWS Lambda that turns S3 ObjectCreated events (and direct
JSON invocations) into runs of the ``process-scan`` deployment through the Prefect REST API.

Standard library only, so the deployment package is a zip of a few dozen kilobytes and a
cold start imports nothing heavy. The entry point is ``scanflow_trigger.handler.handler``.

Errors form a small tree (``errors.py``)::

    TriggerError
    ├── ConfigError        the function is misconfigured (environment, secret, deployment name)
    ├── RejectedInput      an event or record is invalid: reported, never retried
    └── PrefectAPIError    the Prefect API answered with an error
        ├── AuthError      401/403: wrong or missing credentials
        └── UnavailableError  503s or dropped connections until the time budget ran out
"""

__version__ = "1.0.0"
