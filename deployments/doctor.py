"""``scanflow doctor``: a live deployment checked against what the repository defines.

Read-only. It asks the Prefect API (PREFECT_API_URL, with its key or auth string) and AWS
(boto3's own configuration: profile, region, credentials chain) and prints one line per
check, ``ok`` or ``FAIL`` with the command that fixes it; the exit code is 1 on any
failure, and ``--json`` prints the same for machines. What it checks, by group:

- ``prefect``  the API answers and accepts our credential;
- ``pool``     each pool this workspace needs exists with the repository's base job template
               (the diff when not), type, concurrency limit, queues and priorities, and the
               Prefect credential passed to ECS tasks as a secret;
- ``deploy``   each production deployment exists on its pool and queue with prefect.yaml's
               entrypoint, job variables (every setting filled in, none left as text),
               concurrency limit, collision strategy and grace period, and heartbeats
               frequent enough for the missed-heartbeats automation;
- ``notify``   the automations' notify deployment is on a production pool that a push pool
               or a recently polling worker serves, the automations are in sync with
               ``deployments/automations.py``, and the signing key's Secret block is set;
- ``aws``      the credentials resolve to an account;
- ``trigger``  the upload trigger's environment (API, deployment, extensions), its
               credential secret is non-empty, its reserved concurrency fits the account;
- ``bucket``   the upload bucket's notifications deliver every allowed extension in every
               case to the trigger (directly or through its queue);
- ``roles``    every role a deployment passes can be passed by the identity that submits
               its RunTask (the push pool's credentials, the hybrid pool's worker).

An unreachable API, missing AWS credentials or an unknown function is one clear line, and
the checks that depend on it are skipped, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deployments import prefect_yaml
from deployments.s3_filters import missed_uploads
from deployments.work_pools import POOLS, credential_variable, pools_for, template_diff
from scanflow.settings import REPO_ROOT, Settings

PLACEHOLDER = re.compile(r"\{\{\s*\$?[A-Za-z_][A-Za-z0-9_.]*\s*\}\}")
ALLOWED_EXTENSIONS = ("mp4", "mov", "m4v")
WORKER_SEEN_WITHIN = timedelta(minutes=2)
SCAN_POOLS = frozenset({"scanflow-cpu", "scanflow-gpu"})
# The production deployments of each platform (prefect.yaml).
CLOUD_DEPLOYMENTS = ("ecs-cpu", "ecs-gpu", "notify-cloud")
SERVER_DEPLOYMENTS = ("ecs-gpu", "notify-ecs")


@dataclass(frozen=True)
class Check:
    group: str
    subject: str
    ok: bool | None  # None: skipped, because something it depends on failed
    detail: str
    fix: str | None = None
    diff: tuple[str, ...] = ()

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        text = f"{mark}  {self.group:8} {self.subject}: {self.detail}"
        if self.fix and self.ok is False:
            text += f"\n      fix: {self.fix}"
        for line in self.diff:
            text += f"\n        {line}"
        return text


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, group: str, subject: str, ok: bool | None, detail: str, **kw: Any) -> bool:
        self.checks.append(Check(group, subject, ok, detail, **kw))
        return bool(ok)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def as_json(self) -> str:
        return json.dumps(
            {"ok": not self.failed, "checks": [asdict(c) for c in self.checks]}, indent=2
        )


def production_deployments(repo_root: Path, cloud: bool) -> dict[str, dict[str, Any]]:
    wanted = CLOUD_DEPLOYMENTS if cloud else SERVER_DEPLOYMENTS
    return {n: d for n, d in prefect_yaml.deployments(repo_root).items() if n in wanted}


@dataclass
class Doctor:
    settings: Settings
    api_url: str
    repo_root: Path = REPO_ROOT
    aws: Any = None  # a boto3 Session; None: boto3's default
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    report: Report = field(default_factory=Report)

    @property
    def cloud(self) -> bool:
        return self.settings.on_prefect_cloud(self.api_url)

    # -- Prefect -----------------------------------------------------------------------
    async def run(self) -> Report:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            prefect_ok = await self.check_api(client)
            deployments: dict[str, Any] = {}
            if prefect_ok:
                await self.check_pools(client)
                deployments = await self.check_deployments(client)
                await self.check_notify(client, deployments)
            else:
                self.report.add("pool", "*", None, "skipped: the Prefect API is unreachable")
            await asyncio.to_thread(self.check_aws, deployments, prefect_ok)
            if prefect_ok and deployments:
                await self.check_roles(client, deployments)
        return self.report

    async def check_api(self, client: Any) -> bool:
        kind = "Prefect Cloud" if self.cloud else "a self-hosted server"
        try:
            await client.read_work_pools()
        except Exception as exc:  # noqa: BLE001 - any failure is one line, not a traceback
            return self.report.add(
                "prefect",
                self.api_url or "PREFECT_API_URL unset",
                False,
                f"unreachable or refused ({_short(exc)})",
                fix="set PREFECT_API_URL and PREFECT_API_KEY (or PREFECT_API_AUTH_STRING)",
            )
        return self.report.add("prefect", self.api_url, True, f"answers ({kind})")

    async def check_pools(self, client: Any) -> None:
        from prefect.exceptions import ObjectNotFound

        for name in pools_for(self.cloud):
            spec = POOLS[name]
            apply = f"scanflow pools apply {name}"
            try:
                pool = await client.read_work_pool(name)
            except ObjectNotFound:
                fix = apply
                if spec.cloud_only and spec.site_defaults_from is None:
                    fix = (
                        f"prefect work-pool create {name} --type {spec.type} --provision-infra "
                        f"--base-job-template {spec.template_path}; then {apply}"
                    )
                self.report.add("pool", name, False, "missing", fix=fix)
                continue
            if pool.type != spec.type:
                self.report.add(
                    "pool",
                    name,
                    False,
                    f"type {pool.type!r}, the repository's is {spec.type!r}",
                    fix=f"prefect work-pool delete {name}; then {apply}",
                )
                continue
            diff = template_diff(pool.base_job_template, spec.load_template(), name=name)
            self.report.add(
                "pool",
                f"{name} template",
                not diff,
                "the repository's" if not diff else f"differs ({len(diff)} diff lines)",
                fix=f"{apply} --replace-template",
                diff=tuple(diff[:40]),
            )
            self.report.add(
                "pool",
                f"{name} concurrency",
                pool.concurrency_limit == spec.concurrency_limit,
                f"limit {pool.concurrency_limit} (repository: {spec.concurrency_limit})",
                fix=apply,
            )
            live = await client.read_work_queues(name)
            queues = {q.name: q.priority for q in live}
            wanted = {q.name: q.priority for q in spec.queues}
            limits = {q.name: q.concurrency_limit for q in live}
            for q in spec.queues:
                if q.pool_share is not None and q.name in limits:
                    self.report.add(
                        "pool",
                        f"{name} {q.name} queue limit",
                        limits[q.name] == q.limit(spec.concurrency_limit),
                        f"limit {limits[q.name]} (repository: "
                        f"{q.limit(spec.concurrency_limit)}, leaving uploads a slot)",
                        fix=apply,
                    )
            order = [q for q in sorted(queues, key=lambda q: queues[q]) if q in wanted]
            in_order = order == sorted(wanted, key=lambda q: wanted[q])
            self.report.add(
                "pool",
                f"{name} queues",
                set(wanted) <= set(queues) and in_order,
                "by priority: "
                + ", ".join(f"{q} {queues[q]}" for q in order)
                + (
                    f"; missing {sorted(set(wanted) - set(queues))}"
                    if set(wanted) - set(queues)
                    else ""
                ),
                fix=apply,
            )
            if spec.type == "ecs":
                variable = credential_variable(self.cloud)
                props = pool.base_job_template.get("variables", {}).get("properties", {})
                arn = props.get(variable, {}).get("default")
                self.report.add(
                    "pool",
                    f"{name} credential",
                    bool(arn),
                    f"flow-run containers get the Prefect credential from {arn}"
                    if arn
                    else "the worker would copy its Prefect credential into every RunTask "
                    "request in plain text",
                    fix=f"{apply} --credential-secret-arn <the stack's PrefectApiKeySecretArn>",
                )

    async def check_deployments(self, client: Any) -> dict[str, Any]:
        from prefect.exceptions import ObjectNotFound

        found: dict[str, Any] = {}
        for name, spec in production_deployments(self.repo_root, self.cloud).items():
            full = f"{prefect_yaml.flow_name(spec)}/{name}"
            fix = f"scanflow deploy {name}"
            try:
                deployment = await client.read_deployment_by_name(full)
            except ObjectNotFound:
                self.report.add("deploy", full, False, "missing", fix=fix)
                continue
            found[name] = deployment
            problems = _deployment_problems(deployment, spec)
            pool = POOLS.get(deployment.work_pool_name or "")
            grace = (
                deployment.concurrency_options
                and deployment.concurrency_options.grace_period_seconds
            ) or 300
            if deployment.global_concurrency_limit and pool and grace < pool.min_slot_grace_s:
                problems.append(
                    f"a slot's grace of {grace} s is shorter than {pool.name}'s start-up "
                    f"({pool.min_slot_grace_s} s): runs would lose their slot while Pending "
                    "(concurrency_limit.grace_period_seconds in prefect.yaml)"
                )
            self.report.add(
                "deploy",
                full,
                not problems,
                "; ".join(problems) or "as prefect.yaml declares, every setting filled in",
                fix=fix,
            )
            if prefect_yaml.flow_name(spec) == "process-scan":
                env = (deployment.job_variables or {}).get("env") or {}
                beat = env.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
                grace = self.settings.heartbeat_grace_s
                good = beat is not None and float(beat) * 2 <= grace
                self.report.add(
                    "deploy",
                    f"{full} heartbeats",
                    good,
                    f"every {beat} s, crashed after {grace:.0f} s without one"
                    if beat
                    else "none: a run whose process dies is never marked Crashed",
                    fix=fix,
                )
        return found

    async def check_notify(self, client: Any, deployments: dict[str, Any]) -> None:
        from prefect.exceptions import ObjectNotFound

        from deployments.automations import apply_automations

        target = self.settings.notify_deployment
        try:
            notify = await client.read_deployment_by_name(target)
        except ObjectNotFound:
            self.report.add(
                "notify",
                target,
                False,
                "the automations' notify deployment is missing",
                fix="SCANFLOW_NOTIFY_DEPLOYMENT=notify-outcome/"
                + ("notify-cloud" if self.cloud else "notify-ecs")
                + " (then scanflow automations apply)",
            )
        else:
            await self._check_notify_pool(client, target, notify.work_pool_name)
        try:
            plan = await apply_automations(self.settings, dry_run=True)
        except Exception as exc:  # noqa: BLE001
            self.report.add("notify", "automations", False, _short(exc))
        else:
            self.report.add(
                "notify",
                "automations",
                plan.changes == 0,
                f"{len(plan.unchanged)} in sync"
                if plan.changes == 0
                else "out of sync: " + ", ".join(plan.lines()[: plan.changes]),
                fix="scanflow automations apply",
            )
        if any(
            ((d.job_variables or {}).get("env") or {}).get("SCANFLOW_PLATFORM_WEBHOOK_URL")
            for d in deployments.values()
        ):
            secret = await _secret_block_value(self.settings.platform_signing_secret_block)
            self.report.add(
                "notify",
                f"secret block {self.settings.platform_signing_secret_block}",
                bool(secret),
                "set"
                if secret
                else "missing or empty: every webhook would go unsigned, so none would be sent",
                fix="scanflow secrets set platform-signing-secret < key-file",
            )

    async def _check_notify_pool(self, client: Any, target: str, pool_name: str | None) -> None:
        pool = await client.read_work_pool(pool_name) if pool_name else None
        if pool is None or pool_name in SCAN_POOLS:
            self.report.add(
                "notify",
                target,
                False,
                f"runs on {pool_name!r}: news of a scan would wait behind scans",
                fix="deploy notify-cloud (Cloud) or notify-ecs (self-hosted)",
            )
            return
        if pool.type.endswith(":push"):
            self.report.add("notify", target, True, f"on push pool {pool_name}: no worker needed")
            return
        workers = await client.read_workers_for_work_pool(pool_name)
        seen = [w.last_heartbeat_time for w in workers if w.last_heartbeat_time]
        latest = max(seen, default=None)
        fresh = latest is not None and self.now() - latest <= WORKER_SEEN_WITHIN
        self.report.add(
            "notify",
            target,
            fresh,
            f"on {pool_name} ({pool.type}); a worker polled "
            + (f"{(self.now() - latest).total_seconds():.0f} s ago" if latest else "never"),
            fix="start the notify worker (deployments/ecs-gpu/template.yaml NotifyWorkerImage)",
        )

    # -- AWS ---------------------------------------------------------------------------
    def check_aws(self, deployments: dict[str, Any], prefect_ok: bool) -> None:
        import boto3

        session = self.aws or boto3.Session()
        with _aws_errors(self.report, "aws", "credentials") as ok:
            identity = session.client("sts").get_caller_identity()
            self.report.add(
                "aws",
                "credentials",
                True,
                f"account {identity['Account']}, region {session.region_name}",
            )
        if not ok():
            for group in ("trigger", "bucket", "roles"):
                self.report.add(group, "*", None, "skipped: no usable AWS credentials")
            return
        function = self.settings.trigger_function
        with _aws_errors(self.report, "trigger", function) as ok:
            lam = session.client("lambda")
            config = lam.get_function_configuration(FunctionName=function)
        if not ok():
            self.report.add("bucket", "*", None, f"skipped: no trigger function {function}")
            return
        env = config.get("Environment", {}).get("Variables", {})
        self._check_trigger(session, lam, function, env, prefect_ok)
        self._check_buckets(session, lam, function, config["FunctionArn"], env)

    def _check_trigger(
        self, session: Any, lam: Any, function: str, env: dict[str, str], prefect_ok: bool
    ) -> None:
        problems = []
        if env.get("PREFECT_API_URL", "").rstrip("/") != self.api_url.rstrip("/"):
            problems.append(f"PREFECT_API_URL is {env.get('PREFECT_API_URL')!r}")
        target = env.get("SCANFLOW_DEPLOYMENT", "")
        if prefect_ok and not target.startswith("process-scan/"):
            problems.append(f"SCANFLOW_DEPLOYMENT {target!r} is not a process-scan deployment")
        extensions = {
            e.strip().lower() for e in env.get("SCANFLOW_ALLOWED_EXTENSIONS", "").split(",")
        }
        if not set(ALLOWED_EXTENSIONS) <= extensions and env.get("SCANFLOW_ALLOWED_EXTENSIONS"):
            problems.append(f"accepts only {sorted(extensions)}")
        self.report.add(
            "trigger",
            f"{function} environment",
            not problems,
            "; ".join(problems) or f"creates runs of {target} on this API",
            fix="redeploy deployments/trigger/template.yaml with this API's URL",
        )
        secret_arn = env.get("PREFECT_API_KEY_SECRET_ARN") or env.get(
            "PREFECT_API_AUTH_STRING_SECRET_ARN"
        )
        if secret_arn:
            with _aws_errors(self.report, "trigger", f"{function} credential") as ok:
                value = session.client("secretsmanager").get_secret_value(SecretId=secret_arn)
            if ok():
                filled = bool(str(value.get("SecretString") or "").strip())
                self.report.add(
                    "trigger",
                    f"{function} credential",
                    filled,
                    "secret set" if filled else "the secret is empty: every run creation fails",
                    fix=f"aws secretsmanager put-secret-value --secret-id {secret_arn} "
                    "--secret-string <service account API key>",
                )
        elif self.cloud:
            self.report.add(
                "trigger",
                f"{function} credential",
                False,
                "no PREFECT_API_KEY_SECRET_ARN: Prefect Cloud refuses unauthenticated calls",
                fix="redeploy deployments/trigger/template.yaml with PrefectAuth=api-key",
            )
        with _aws_errors(self.report, "trigger", f"{function} concurrency") as ok:
            reserved = lam.get_function_concurrency(FunctionName=function).get(
                "ReservedConcurrentExecutions"
            )
        if not ok():
            return
        try:
            limit = lam.get_account_settings()["AccountLimit"]["ConcurrentExecutions"]
        except Exception:  # noqa: BLE001 - not every endpoint answers it; judged below
            limit = None
        if reserved is None:
            self.report.add("trigger", f"{function} concurrency", True, "none reserved")
        elif limit is None:
            self.report.add(
                "trigger",
                f"{function} concurrency",
                None,
                f"{reserved} reserved; the account's limit could not be read",
            )
        else:
            self.report.add(
                "trigger",
                f"{function} concurrency",
                limit - reserved >= 100,
                f"{reserved} reserved of the account's {limit} (AWS keeps 100 unreserved)",
                fix="ReservedConcurrency=0 (Delivery=sqs with MaxConcurrency caps it instead)",
            )

    def _check_buckets(
        self, session: Any, lam: Any, function: str, function_arn: str, env: dict[str, str]
    ) -> None:
        buckets = [b for b in env.get("SCANFLOW_ALLOWED_BUCKETS", "").split(",") if b]
        prefixes = [p for p in env.get("SCANFLOW_ALLOWED_PREFIXES", "patients/").split(",") if p]
        with _aws_errors(self.report, "bucket", "*") as ok:
            mappings = lam.list_event_source_mappings(FunctionName=function)["EventSourceMappings"]
        if not ok():
            return
        destinations = [function_arn] + [
            m["EventSourceArn"] for m in mappings if ":sqs:" in m.get("EventSourceArn", "")
        ]
        s3 = session.client("s3")
        for bucket in buckets:
            with _aws_errors(self.report, "bucket", bucket) as ok:
                notification = s3.get_bucket_notification_configuration(Bucket=bucket)
            if not ok():
                continue
            missed = missed_uploads(notification, prefixes, ALLOWED_EXTENSIONS, destinations)
            self.report.add(
                "bucket",
                f"{bucket} notifications",
                not missed,
                f"every {'/'.join(ALLOWED_EXTENSIONS)} upload in any case reaches the trigger"
                if not missed
                else f"{len(missed)} kinds of upload never reach the trigger, e.g. "
                + ", ".join(missed[:3]),
                fix="redeploy deployments/trigger/template.yaml (one prefix-only rule)",
            )

    async def check_roles(self, client: Any, deployments: dict[str, Any]) -> None:
        import boto3

        from deployments.iam_policy import may_pass_role, user_for_access_key

        session = self.aws or boto3.Session()
        iam = session.client("iam")
        for deployment in deployments.values():
            pool = await client.read_work_pool(deployment.work_pool_name)
            if not pool.type.startswith("ecs"):
                continue
            props = pool.base_job_template.get("variables", {}).get("properties", {})
            values = {k: v.get("default") for k, v in props.items()}
            values.update(deployment.job_variables or {})
            roles = [values[k] for k in ("task_role_arn", "execution_role_arn") if values.get(k)]
            if not roles:
                continue
            subject = f"{deployment.name} on {pool.name}"
            try:
                if pool.type.endswith(":push"):
                    key = await _access_key_of(client, values.get("aws_credentials"))
                    submitter = await asyncio.to_thread(user_for_access_key, iam, key)
                else:
                    submitter = await asyncio.to_thread(
                        _worker_role, session, values.get("cluster"), pool.name
                    )
            except Exception as exc:  # noqa: BLE001
                self.report.add(
                    "roles", subject, False, f"cannot tell who submits RunTask ({_short(exc)})"
                )
                continue
            for role in roles:
                decision = await asyncio.to_thread(may_pass_role, iam, submitter, role)
                self.report.add(
                    "roles",
                    f"{subject}: {role.rsplit('/', 1)[-1]}",
                    decision.allowed,
                    f"{submitter.rsplit(':', 1)[-1]} "
                    + (
                        "may pass it"
                        if decision.allowed
                        else f"may not pass it ({decision.reason})"
                    ),
                    fix="deploy deployments/ecs-cpu/template.yaml (PushPoolUserName = that user)"
                    if pool.type.endswith(":push")
                    else "let the worker's role pass it (deployments/ecs-gpu/template.yaml)",
                )


def _deployment_problems(deployment: Any, spec: dict[str, Any]) -> list[str]:
    problems = []
    pool = spec["work_pool"]
    if deployment.work_pool_name != pool["name"]:
        problems.append(f"on pool {deployment.work_pool_name}, not {pool['name']}")
    if deployment.work_queue_name != pool.get("work_queue_name", "default"):
        problems.append(f"on queue {deployment.work_queue_name}")
    if deployment.entrypoint != spec["entrypoint"]:
        problems.append(f"entrypoint {deployment.entrypoint}")
    problems += _variable_problems(deployment.job_variables or {}, pool.get("job_variables") or {})
    limit = spec.get("concurrency_limit")
    if limit:
        current = deployment.global_concurrency_limit
        options = deployment.concurrency_options
        if current is None or current.limit != limit["limit"]:
            problems.append(f"concurrency limit {current and current.limit}, not {limit['limit']}")
        strategy = limit.get("collision_strategy")
        if strategy and (options is None or options.collision_strategy.value != strategy):
            problems.append(f"collision strategy is not {strategy}")
        grace = limit.get("grace_period_seconds")
        if grace and (options is None or (options.grace_period_seconds or 0) < grace):
            problems.append(
                f"slot grace {options and options.grace_period_seconds} s, not {grace} s"
            )
    return problems


def _variable_problems(
    current: dict[str, Any], declared: dict[str, Any], at: str = ""
) -> list[str]:
    problems = []
    for key, wanted in declared.items():
        where = f"{at}{key}"
        if key not in current:
            problems.append(f"{where} unset")
        elif isinstance(wanted, dict):
            problems += _variable_problems(current[key] or {}, wanted, f"{where}.")
        elif isinstance(wanted, str) and PLACEHOLDER.search(wanted):
            value = str(current[key])
            if not value.strip() or PLACEHOLDER.search(value):
                problems.append(f"{where} left as {value!r}")
        elif current[key] != wanted and str(current[key]) != str(wanted):
            problems.append(f"{where} is {current[key]!r}, not {wanted!r}")
    return problems


async def _secret_block_value(name: str) -> str | None:
    from prefect.blocks.system import Secret

    try:
        block: Any = await Secret.aload(name)
    except ValueError:
        return None
    return str(block.get() or "") or None


async def _access_key_of(client: Any, reference: Any) -> str:
    """The access key id of an AwsCredentials block referenced from a job template."""
    if not isinstance(reference, dict) or "$ref" not in reference:
        raise ValueError("the pool has no aws_credentials block")
    block_id = reference["$ref"]["block_document_id"]
    document = await client.read_block_document(block_id, include_secrets=True)
    key = document.data.get("aws_access_key_id")
    if not key:
        raise ValueError("its aws_credentials block has no access key")
    return str(key)


def _worker_role(session: Any, cluster: str | None, pool: str) -> str:
    """The task role of the ECS service that runs the pool's worker."""
    ecs = session.client("ecs")
    for arn in ecs.list_services(cluster=cluster or "default").get("serviceArns", []):
        service = ecs.describe_services(cluster=cluster, services=[arn])["services"][0]
        taskdef = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
        definition = taskdef["taskDefinition"]
        commands = [c.get("command") or [] for c in definition["containerDefinitions"]]
        if any("worker" in c and pool in c for c in commands):
            role = definition.get("taskRoleArn")
            if role:
                return str(role)
    raise LookupError(f"no ECS service in cluster {cluster} runs a worker for {pool}")


@contextmanager
def _aws_errors(report: Report, group: str, subject: str) -> Iterator[Callable[[], bool]]:
    """Turns boto3's errors into one FAIL line; yields a function telling success."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    state = {"ok": True}
    try:
        yield lambda: state["ok"]
    except NoCredentialsError:
        state["ok"] = False
        report.add(
            group,
            subject,
            False,
            "no AWS credentials (boto3 found none)",
            fix="set AWS_PROFILE, or run where the instance or task role applies",
        )
    except ClientError as exc:
        state["ok"] = False
        error = exc.response.get("Error", {})
        report.add(group, subject, False, f"{error.get('Code')}: {error.get('Message')}")
    except BotoCoreError as exc:
        state["ok"] = False
        report.add(group, subject, False, _short(exc))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def run_doctor(settings: Settings, api_url: str, *, aws: Any = None) -> Report:
    return asyncio.run(Doctor(settings, api_url, aws=aws).run())
