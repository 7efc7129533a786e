"""The trigger's package and its template: small, standard library only, signed like AWS
signs, in step with the flow's id rules, and a template that cfn-lint accepts."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from deployments.trigger.scanflow_trigger import aws_secrets, config, events
from scanflow.settings import REPO_ROOT

TRIGGER_DIR = REPO_ROOT / "deployments" / "trigger"


def test_the_zip_is_small_reproducible_and_needs_only_the_standard_library(
    tmp_path: Path,
) -> None:
    out = tmp_path / "trigger.zip"
    build = [sys.executable, str(TRIGGER_DIR / "package.py"), "--out", str(out)]
    subprocess.run(build, check=True, capture_output=True)
    first = out.read_bytes()
    subprocess.run(build, check=True, capture_output=True)
    assert out.read_bytes() == first  # same source, same bytes, same CodeSha256
    assert len(first) < 64 * 1024
    names = zipfile.ZipFile(out).namelist()
    assert all(n.startswith("scanflow_trigger/") and n.endswith(".py") for n in names)
    assert "scanflow_trigger/handler.py" in names
    # Import the handler from the zip in an isolated interpreter without site-packages:
    # any third-party import would fail here.
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import scanflow_trigger.handler as h; "
        "mods = {m.split('.')[0] for m in sys.modules}; "
        "print(h.handler.__module__, sorted(mods & {'httpx', 'boto3', 'botocore', 'pydantic'}))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["scanflow_trigger.handler", "[]"]


def test_ids_follow_the_flows_rule() -> None:
    from scanflow.contracts.options import ID_PATTERN

    assert config.ID_PATTERN == ID_PATTERN


def test_the_secrets_manager_request_is_signed_as_botocore_signs_it() -> None:
    now = datetime(2025, 5, 1, 10, 0, 0, tzinfo=UTC)
    url = "https://secretsmanager.eu-west-1.amazonaws.com/"
    body = json.dumps({"SecretId": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}).encode()
    base = {"Content-Type": aws_secrets.CONTENT_TYPE, "X-Amz-Target": aws_secrets.TARGET}
    ours = aws_secrets.sign_request(
        method="POST",
        url=url,
        headers=base,
        body=body,
        region="eu-west-1",
        service="secretsmanager",
        access_key="AKIDEXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token="session-token",
        now=now,
    )
    # botocore's signer, given the same request and instant
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(base))
    request.headers["X-Amz-Date"] = ours["X-Amz-Date"]
    request.headers["X-Amz-Security-Token"] = "session-token"
    request.context["timestamp"] = ours["X-Amz-Date"]
    signer = SigV4Auth(
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token"),
        "secretsmanager",
        "eu-west-1",
    )
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    assert ours["Authorization"].endswith(f"Signature={signature}")
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
        in (ours["Authorization"])
    )


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("patients/p-1/scans/s-1.mp4", True),
        ("patients/p.1/scans/2025-05-01_a.b.mov", True),
        ("region=eu/patients/p/scans/s.mp4", True),
        ("patients/p/scans/s.MP4", True),
        ("patients/p/scans/sub/s.mp4", False),
        ("patients/../scans/s.mp4", False),
        ("patients/p/scans/.hidden.mp4", False),
        ("patients/p/scans/s.mp4.exe", False),
        ("patients/p/s.mp4", False),
        ("patients/p/scans/" + "a" * 65 + ".mp4", False),
    ],
)
def test_the_key_pattern(key: str, ok: bool) -> None:
    cfg = config.TriggerConfig(
        api_url="http://x/api",
        deployment="process-scan/x",
        allowed_buckets=frozenset({"b1"}),
        allowed_prefixes=("patients/", "region=eu/patients/"),
    )
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b1"}, "object": {"key": key, "size": 10, "eTag": "e"}},
    }
    parsed = events.parse_event({"Records": [record]}, cfg)
    assert bool(parsed.requests) == ok, parsed.rejections


def test_the_template_passes_cfn_lint_and_grants_least_privilege() -> None:
    from cfnlint.decode import decode

    template_path = TRIGGER_DIR / "template.yaml"
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(template_path)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    template, errors = decode(str(template_path))
    assert not errors and template is not None
    resources = template["Resources"]
    statements = []
    for policy in resources["FunctionRole"]["Properties"]["Policies"]:
        if "Fn::If" in policy:
            policy = policy["Fn::If"][1]
        statements += policy["PolicyDocument"]["Statement"]
    actions = sorted(a for s in statements for a in _as_list(s["Action"]))
    assert actions == [
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:GetSecretValue",
        "sqs:ChangeMessageVisibility",  # the upload queue (Delivery=sqs) ...
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:ReceiveMessage",
        "sqs:SendMessage",  # ... and the dead-letter queue
    ]
    assert all(s["Effect"] == "Allow" and s["Resource"] != "*" for s in statements)
    # No S3 permission at all: the trigger never reads the upload, the flow does.
    assert not any(a.startswith("s3:") for a in actions)

    function = resources["Function"]["Properties"]
    assert function["Handler"] == "scanflow_trigger.handler.handler"
    env = function["Environment"]["Variables"]
    assert {"PREFECT_API_URL", "SCANFLOW_DEPLOYMENT", "SCANFLOW_ALLOWED_BUCKETS"} <= set(env)
    handler_env_names = set(config.__doc__.split("``")[1::2])  # the documented variables
    assert set(env) <= handler_env_names


@pytest.mark.parametrize("delivery", ["sqs", "direct"])
def test_every_allowed_upload_reaches_the_trigger_whatever_its_case(delivery: str) -> None:
    """S3's key filters are case-sensitive: the template's own rules, evaluated by S3's
    rules, deliver every allowed extension in every mix of case (an iPhone's .MOV)."""
    from deployments.rehearsal import cfn
    from deployments.s3_filters import missed_uploads

    stack = cfn.deploy(
        TRIGGER_DIR / "template.yaml",
        stack_name="scanflow-trigger",
        parameters={
            "UploadBucketName": "scanflow-uploads",
            "PrefectApiUrl": "https://api.prefect.cloud/api/accounts/a/workspaces/w",
            "CodeS3Bucket": "artifacts",
            "Delivery": delivery,
        },
        session=None,
    )
    notification = cfn.bucket_notification(
        stack.properties["UploadBucket"]["NotificationConfiguration"]
    )
    extensions = stack.properties["Function"]["Environment"]["Variables"][
        "SCANFLOW_ALLOWED_EXTENSIONS"
    ].split(",")
    assert sorted(extensions) == ["m4v", "mov", "mp4"]  # what the trigger accepts by default
    assert config.TriggerConfig.from_env(
        {
            "PREFECT_API_URL": "http://x/api",
            "SCANFLOW_DEPLOYMENT": "a/b",
            "SCANFLOW_ALLOWED_BUCKETS": "bucket-1",
        }
    ).allowed_extensions == frozenset(extensions)
    assert missed_uploads(notification, ["patients/"], extensions) == []
    destination = "Queue" if delivery == "sqs" else "LambdaFunction"
    (only,) = notification[f"{destination}Configurations"]
    assert only["Events"] == ["s3:ObjectCreated:*"]
    # nothing is reserved by default: reserving fails on accounts with a low limit
    assert "ReservedConcurrentExecutions" not in stack.properties["Function"]
    if delivery == "sqs":
        mapping = stack.properties["UploadQueueMapping"]
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["ScalingConfig"]["MaximumConcurrency"] == 10
        queue = stack.properties["UploadQueue"]
        assert queue["VisibilityTimeout"] >= 6 * stack.properties["Function"]["Timeout"]
        assert queue["RedrivePolicy"]["maxReceiveCount"] >= 1
        assert "FunctionInvokeConfig" not in stack.properties
    else:
        assert stack.properties["FunctionInvokeConfig"]["MaximumRetryAttempts"] == 2
        assert "UploadQueue" not in stack.properties


def test_reserving_concurrency_is_a_choice() -> None:
    from deployments.rehearsal import cfn

    common = {
        "UploadBucketName": "scanflow-uploads",
        "PrefectApiUrl": "https://x/api",
        "CodeS3Bucket": "artifacts",
    }
    path = TRIGGER_DIR / "template.yaml"
    reserved = cfn.deploy(
        path, stack_name="t", parameters={**common, "ReservedConcurrency": 20}, session=None
    )
    assert reserved.properties["Function"]["ReservedConcurrentExecutions"] == 20


def _as_list(value: object) -> list[str]:
    return value if isinstance(value, list) else [value]  # type: ignore[list-item]
