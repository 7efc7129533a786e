"""The rehearsal: docs/production.md's steps, in order, on loopback.

Stand-ins: a local Prefect server for Prefect Cloud (``SCANFLOW_PREFECT_PLATFORM=cloud``),
moto's server for AWS, a receiver for the platform's webhook. Each runbook command goes to a
handler below; after each step, the checks registered for its title look at what the step
left behind (mostly ``scanflow doctor``'s own checks, so that the two agree), and the first
failure ends the rehearsal with the step, the command and why.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deployments.rehearsal import cfn
from deployments.rehearsal.runbook import RunbookError, Shell, Step, one, options, read_steps
from deployments.rehearsal.watch import PROBES, watch_uploads
from scanflow.local.loopback import MotoServer, Receiver, free_port
from scanflow.settings import REPO_ROOT

REGION = "eu-west-1"
# A new account's Lambda concurrency: reserving any of it fails (AWS keeps 100 unreserved).
ACCOUNT_CONCURRENCY = 10


class RehearsalFailed(Exception):
    def __init__(self, step: Step | None, message: str) -> None:
        where = f"step {step.number} ({step.title})" if step else "set-up"
        super().__init__(f"{where}: {message}")
        self.step = step


@dataclass
class StepReport:
    number: int
    title: str
    seconds: float
    commands: list[str]
    checks: list[str] = field(default_factory=list)


@dataclass
class Result:
    ok: bool
    steps: list[StepReport]
    error: str | None = None
    failed_step: int | None = None
    recorded: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class Rehearsal:
    def __init__(
        self,
        workdir: Path,
        *,
        repo: Path = REPO_ROOT,
        until: int | None = None,
        account_concurrency: int = ACCOUNT_CONCURRENCY,
    ) -> None:
        self.workdir = workdir
        self.repo = repo
        self.until = until
        self.account_concurrency = account_concurrency
        self.stacks: dict[str, cfn.Stack] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.images: list[str] = []
        self.reports: list[StepReport] = []
        self.step: Step | None = None
        self.signing_key = "whsec-rehearsal-" + secrets.token_hex(16)
        self.receiver = Receiver("platform", secret=self.signing_key)
        self.moto = MotoServer(workdir / "moto.log")
        self.prefect_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.prefect_port}/api"
        self.figures: dict[str, float] = {}
        self.env: dict[str, str] = {}  # the reader's shell: what the runbook exported
        self.last_output = ""

    # -- set-up ------------------------------------------------------------------------
    def start(self) -> None:
        """Loopback stand-ins, and this process's environment pointed at them (before
        Prefect is imported: it reads its settings then)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.moto.start()
        self.receiver.start()
        home = self.workdir / "home"
        (home / "prefect").mkdir(parents=True, exist_ok=True)  # Prefect makes only the leaf
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": self.moto.url,
                "AWS_ACCESS_KEY_ID": "rehearsal",
                "AWS_SECRET_ACCESS_KEY": "rehearsal",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION,
                "SCANFLOW_HOME": str(home),
                "SCANFLOW_SERVER_PORT": str(self.prefect_port),
                "SCANFLOW_PREFECT_PLATFORM": "cloud",
                "PREFECT_API_URL": self.api_url,
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "DO_NOT_TRACK": "1",
                "PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_ENABLED": "false",
            }
        )
        for name in list(os.environ):  # nothing of the caller's AWS or Prefect targets
            if name.startswith(("AWS_ENDPOINT_URL_", "SCANFLOW_")) and name not in (
                "SCANFLOW_HOME",
                "SCANFLOW_SERVER_PORT",
                "SCANFLOW_PREFECT_PLATFORM",
            ):
                os.environ.pop(name)
        for name in (
            "PREFECT_API_KEY",
            "PREFECT_API_AUTH_STRING",
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
        ):
            os.environ.pop(name, None)
        from scanflow.local.stack import LocalStack
        from scanflow.settings import Settings

        self.stack = LocalStack(Settings())
        self.stack.start_server()
        (self.workdir / "signing-key.txt").write_text(self.signing_key)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if hasattr(self, "stack"):
            self.stack.down()
        self.receiver.stop()
        self.moto.stop()

    def session(self) -> Any:
        import boto3

        return boto3.Session(region_name=REGION)

    # -- running the runbook -----------------------------------------------------------
    def run(self, *, stop: bool = True) -> Result:
        """Every step in order; ``stop=False`` leaves the stand-ins running (then call
        :meth:`stop`), for tests that look at or break the rehearsed deployment."""
        from botocore.exceptions import ClientError

        try:
            self.start()
            shell = self.shell()
            for step in read_steps(self.repo / "docs" / "production.md"):
                if self.until is not None and step.number > self.until:
                    break
                self.step = step
                started = time.monotonic()
                report = StepReport(step.number, step.title, 0.0, [])
                self.reports.append(report)
                for command in step.commands:
                    try:
                        shell.run(command)
                    except (RunbookError, cfn.TemplateError, ClientError) as exc:
                        raise RehearsalFailed(step, f"{command[:120]}: {exc}") from exc
                report.commands = list(shell.log)
                shell.log.clear()
                check = CHECKS.get(step.title)
                if check is None:
                    raise RehearsalFailed(step, "the rehearsal has no checks for this step")
                report.checks = check(self)
                report.seconds = round(time.monotonic() - started, 1)
            return Result(True, self.reports, recorded=self.recorded(), figures=self.figures)
        except RehearsalFailed as exc:
            return Result(
                False,
                self.reports,
                error=str(exc),
                failed_step=exc.step.number if exc.step else None,
                recorded=self.recorded(),
                figures=self.figures,
            )
        finally:
            if stop:
                self.stop()

    def world(self) -> dict[str, Any]:
        """How to reach the rehearsed deployment: the environment a reader's shell has at
        the end of the runbook, with the stand-ins' endpoints and credentials."""
        keep = ("AWS_", "PREFECT_API_URL", "SCANFLOW_PREFECT_PLATFORM")
        env = {k: v for k, v in os.environ.items() if k.startswith(keep)}
        return {"env": {**self.env, **env}, "workdir": str(self.workdir)}

    def recorded(self) -> list[str]:
        return [f"{name}: {r}" for name, stack in self.stacks.items() for r in stack.recorded]

    def fail(self, message: str) -> RehearsalFailed:
        return RehearsalFailed(self.step, message)

    def network(self) -> tuple[str, str]:
        """The VPC and private subnets the reader brings (step 0), made in moto."""
        ec2 = self.session().client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.42.{i}.0/24")["Subnet"]["SubnetId"]
            for i in (1, 2)
        ]
        return vpc, ",".join(subnets)

    def shell(self) -> Shell:
        vpc, subnets = self.network()
        site = {
            "PREFECT_API_URL": self.api_url,
            "PREFECT_API_KEY": "pnb_rehearsal" + secrets.token_hex(8),
            "AWS_REGION": REGION,
            "VPC_ID": vpc,
            "SUBNET_IDS": subnets,
            "PLATFORM_WEBHOOK_URL": self.receiver.url + "/scanflow/events",
        }
        shell = Shell(env=self.env, workdir=self.workdir, site=site)
        shell.handlers.update(
            {
                "aws sts get-caller-identity": self.aws_account,
                "aws s3 mb": self.aws_s3_mb,
                "aws s3 cp": self.aws_s3_cp,
                "aws secretsmanager create-secret": self.aws_create_secret,
                "aws secretsmanager describe-secret": self.aws_describe_secret,
                "aws secretsmanager put-secret-value": self.aws_put_secret,
                "aws cloudformation deploy": self.aws_cfn_deploy,
                "aws cloudformation describe-stacks": self.aws_cfn_output,
                "aws ecr get-login-password": lambda w, e, i: "ecr-token",
                "docker login": lambda w, e, i: "",
                "docker build": self.docker_build,
                "docker push": self.docker_push,
                "git rev-parse": self.git,
                "prefect work-pool create": self.prefect_pool_create,
                "scanflow": self.scanflow,
                "python": self.python,
            }
        )
        return shell

    # -- handlers: AWS -----------------------------------------------------------------
    def aws_account(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        return str(self.session().client("sts").get_caller_identity()["Account"])

    def aws_s3_mb(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        bucket = words[3].removeprefix("s3://").rstrip("/")
        self.session().client("s3").create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        return f"make_bucket: {bucket}"

    def aws_s3_cp(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        source, target = words[3], words[4]
        bucket, key = target.removeprefix("s3://").split("/", 1)
        path = self.path(source)
        self.session().client("s3").upload_file(str(path), bucket, key)
        return f"upload: {source} to {target}"

    def aws_create_secret(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        opts = options(words)
        created = (
            self.session()
            .client("secretsmanager")
            .create_secret(Name=one(opts, "name"), SecretString=one(opts, "secret-string"))
        )
        return json.dumps({"ARN": created["ARN"]})

    def aws_describe_secret(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        opts = options(words)
        described = (
            self.session().client("secretsmanager").describe_secret(SecretId=one(opts, "secret-id"))
        )
        query = one(opts, "query")
        if query not in described:
            raise RunbookError(f"--query {query} is not a field of describe-secret")
        return str(described[query])

    def aws_put_secret(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        opts = options(words)
        self.session().client("secretsmanager").put_secret_value(
            SecretId=one(opts, "secret-id"), SecretString=one(opts, "secret-string")
        )
        return ""

    def aws_cfn_deploy(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        opts = options(words)
        name = one(opts, "stack-name")
        overrides = dict(p.split("=", 1) for p in opts.get("parameter-overrides", []))
        stack = cfn.deploy(
            self.repo / one(opts, "template-file"),
            stack_name=name,
            parameters=overrides,
            session=self.session(),
            account_concurrency=self.account_concurrency,
        )
        self.stacks[name] = stack
        self.start_services(stack)
        return f"Successfully created/updated stack - {name}"

    def aws_cfn_output(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        opts = options(words)
        name = one(opts, "stack-name")
        match = re.search(r"OutputKey=='(\w+)'", one(opts, "query"))
        if name not in self.stacks or not match:
            raise RunbookError(f"no stack {name} or no OutputKey in the query")
        outputs = self.stacks[name].outputs
        if match[1] not in outputs:
            raise RunbookError(f"stack {name} has no output {match[1]} ({sorted(outputs)})")
        return outputs[match[1]]

    # -- handlers: Docker, git, Prefect, scanflow --------------------------------------
    def docker_build(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        opts = options(words)
        if opts.get("platform") != ["linux/amd64"]:
            raise RunbookError(
                "docker build without --platform linux/amd64: an image built on an ARM "
                "laptop would not start on Fargate or g5 hosts"
            )
        self.images.append(one(opts, "t") if "t" in opts else words[words.index("-t") + 1])
        return "built (not here: no Docker engine; the flags are checked)"

    def docker_push(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        if words[2] not in self.images:
            raise RunbookError(f"docker push {words[2]}: that image was not built")
        return ""

    def git(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        done = subprocess.run(words, cwd=self.repo, capture_output=True, text=True)
        return done.stdout.strip() or "0000000"

    def prefect_pool_create(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        """What ``prefect work-pool create NAME --type ecs:push --provision-infra`` does on
        Prefect Cloud: Prefect's own ECS provisioner (every resource but the ECR login,
        which needs Docker), then the pool with the provisioned template."""
        opts = options(words)
        name, kind = words[3], one(opts, "type")
        if "provision-infra" not in opts or kind != "ecs:push":
            raise RunbookError(
                "the rehearsal stands in only for an ecs:push pool with provisioning"
            )
        template = json.loads((self.repo / one(opts, "base-job-template")).read_text())
        provisioned = asyncio.run(_provision_push_pool(name, template))
        asyncio.run(_create_pool(name, kind, provisioned))
        return f"Created work pool {name!r}"

    def scanflow(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        argv = [sys.executable, "-m", "scanflow.cli.main", *self.paths(words[1:])]
        self.last_output = self.subprocess(argv, env, stdin)
        return self.last_output

    def python(self, words: list[str], env: dict[str, str], stdin: str | None) -> str:
        return self.subprocess([sys.executable, *self.paths(words[1:])], env, stdin)

    def subprocess(self, argv: list[str], env: dict[str, str], stdin: str | None) -> str:
        done = subprocess.run(
            argv,
            cwd=self.repo,
            env={**os.environ, **env, "PYTHONPATH": str(self.repo)},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RunbookError(
                f"exit {done.returncode}: {(done.stdout + done.stderr).strip()[-1500:]}"
            )
        return done.stdout

    def paths(self, words: list[str]) -> list[str]:
        """The runbook's words with its /tmp/ files in the rehearsal's folder."""
        return [str(self.path(w)) if w.startswith("/tmp/") else w for w in words]

    def path(self, name: str) -> Path:
        if name.startswith("/tmp/"):
            return self.workdir / Path(name).name
        return self.repo / name

    # -- what the stacks start ---------------------------------------------------------
    def start_services(self, stack: cfn.Stack) -> None:
        """Start each ECS service's worker as its task definition starts it, and give a
        GPU cluster one instance (as its Auto Scaling group would when tasks wait)."""
        ecs = self.session().client("ecs")
        for name in stack.of_type("AWS::ECS::Service"):
            props = stack.properties[name]
            taskdef = ecs.describe_task_definition(taskDefinition=props["TaskDefinition"])
            container = taskdef["taskDefinition"]["containerDefinitions"][0]
            command = container.get("command") or []
            if command[:3] != ["prefect", "worker", "start"]:
                raise self.fail(f"service {name} runs {command}, not a Prefect worker")
            env = {e["name"]: e["value"] for e in container.get("environment", [])}
            secrets_manager = self.session().client("secretsmanager")
            for secret in container.get("secrets", []):
                value = secrets_manager.get_secret_value(SecretId=secret["valueFrom"])
                env[secret["name"]] = value["SecretString"]
            env.update(
                PREFECT_HOME=str(self.workdir / f"worker-{name}"),
                PREFECT_WORKER_WEBSERVER_PORT=str(free_port()),
                PREFECT_LOGGING_LEVEL="INFO",
                PYTHONPATH=str(self.repo),
            )
            env.pop("EXTRA_PIP_PACKAGES", None)  # prefect-aws is installed here already
            path = self.workdir / f"{name}.log"
            log = open(path, "wb")  # noqa: SIM115 - the process owns it
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "prefect", *command[1:]],
                    env={**os.environ, **env},
                    cwd=self.workdir,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
            self.wait_for_worker(command[command.index("--pool") + 1], path)
        for name in stack.of_type("AWS::ECS::ClusterCapacityProviderAssociations"):
            cluster = stack.properties[name]["Cluster"]
            ec2 = self.session().client("ec2")
            image = ec2.describe_images()["Images"][0]["ImageId"]
            instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
            ecs.register_container_instance(
                cluster=cluster,
                instanceIdentityDocument=json.dumps({"instanceId": instance["InstanceId"]}),
            )

    def wait_for_worker(self, pool: str, log: Path, timeout: float = 60) -> None:
        """Until the new worker has reached the API: its pool exists (it found or created
        it) or it said it found none."""
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        async def pool_exists() -> bool:
            async with get_client() as client:
                try:
                    await client.read_work_pool(pool)
                except ObjectNotFound:
                    return False
            return True

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if asyncio.run(pool_exists()) or "not found" in log.read_text(errors="replace"):
                return
            self.workers_alive()
            time.sleep(0.5)
        raise self.fail(f"the worker for {pool} did not reach the API: see {log}")

    def workers_alive(self) -> None:
        for proc in self.processes:
            if proc.poll() is not None:
                raise self.fail(f"a stack's worker exited ({proc.args!r}): see {self.workdir}")

    # -- doctor ------------------------------------------------------------------------
    def doctor(self, *groups: str) -> list[str]:
        """Run ``scanflow doctor``'s checks of these groups here; fail on any FAIL."""
        from deployments.doctor import Doctor
        from scanflow.settings import Settings

        # the settings of the reader's shell at this point of the runbook
        scanflow = {k: v for k, v in self.env.items() if k.startswith("SCANFLOW_")}
        values = {k.removeprefix("SCANFLOW_").lower(): v for k, v in scanflow.items()}
        settings = Settings(**values)  # type: ignore[arg-type]
        report = asyncio.run(Doctor(settings, self.api_url, aws=self.session()).run())
        lines = [c.line() for c in report.checks if c.group in groups]
        failed = [c for c in report.checks if c.group in groups and c.ok is False]
        if failed:
            raise self.fail("; ".join(c.line().replace("\n", " ") for c in failed))
        return lines


async def _provision_push_pool(name: str, template: dict[str, Any]) -> dict[str, Any]:
    from prefect.infrastructure.provisioners.ecs import (
        ContainerRepositoryResource,
        ElasticContainerServicePushProvisioner,
    )

    provisioner = ElasticContainerServicePushProvisioner()  # type: ignore[no-untyped-call]
    out = json.loads(json.dumps(template))
    for resource in provisioner._generate_resources(work_pool_name=name):
        if isinstance(resource, ContainerRepositoryResource):
            continue  # it logs Docker in to ECR: no Docker engine here
        await resource.provision(advance=lambda: None, base_job_template=out)
    return dict(out)


async def _create_pool(name: str, kind: str, template: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=name, type=kind, base_job_template=template)
        )


# -- the checks after each step ---------------------------------------------------------


def _after_point(r: Rehearsal) -> list[str]:
    s3 = r.session().client("s3")
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    return [f"buckets: {', '.join(sorted(buckets))}"]


def _after_pools(r: Rehearsal) -> list[str]:
    return r.doctor("prefect", "pool")


def _after_stacks(r: Rehearsal) -> list[str]:
    from deployments.iam_policy import evaluate, principal_policies

    gpu = r.stacks.get("scanflow-gpu")
    if gpu is None:
        raise r.fail("no scanflow-gpu stack")
    lines = []
    iam = r.session().client("iam")
    worker_role = gpu.attributes["WorkerRole"]["Arn"]
    queue = gpu.attributes["TaskEventsQueue"]["Arn"]
    policies = principal_policies(iam, worker_role)
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        decision = evaluate(policies, action, queue)
        if not decision.allowed:
            raise r.fail(f"the ECS worker's role may not {action} on its events queue")
    lines.append("ECS worker role: receives, deletes and extends its events queue's messages")
    hop = gpu.properties["LaunchTemplate"]["LaunchTemplateData"]["MetadataOptions"]
    if int(hop["HttpPutResponseHopLimit"]) != 1 or hop.get("HttpTokens") != "required":
        raise r.fail(
            f"GPU instances' metadata options {hop}: a flow container could take the "
            "instance role (hop limit must be 1, tokens required)"
        )
    lines.append("GPU instances: IMDSv2, one hop (containers cannot reach the instance role)")
    r.workers_alive()
    return lines + r.doctor("pool")


def _after_image(r: Rehearsal) -> list[str]:
    if len(r.images) < 2:
        raise r.fail(f"expected a CPU and a GPU image, built {r.images}")
    return [f"images: {', '.join(r.images)} (built for linux/amd64)"]


def _after_deploy(r: Rehearsal) -> list[str]:
    return r.doctor("deploy", "roles")


def _after_automations(r: Rehearsal) -> list[str]:
    return r.doctor("notify")


def _after_trigger(r: Rehearsal) -> list[str]:
    from deployments.iam_policy import evaluate, principal_policies

    trigger = r.stacks.get("scanflow-trigger")
    if trigger is None:
        raise r.fail("no scanflow-trigger stack")
    code = trigger.properties["Function"]["Code"]
    iam = r.session().client("iam")
    object_arn = f"arn:aws:s3:::{code['S3Bucket']}/{code['S3Key']}"
    for stack in r.stacks.values():
        for name in stack.of_type("AWS::IAM::Role"):
            role = stack.attributes[name]["Arn"]
            if evaluate(principal_policies(iam, role), "s3:PutObject", object_arn).allowed:
                raise r.fail(
                    f"{stack.name}'s {name} may overwrite the trigger's code at {object_arn}: "
                    "keep the zip in a bucket no run writes"
                )
    return [f"trigger code at {object_arn}: no role of the stacks may replace it"] + r.doctor(
        "aws", "trigger", "bucket"
    )


def _after_upload(r: Rehearsal) -> list[str]:
    return watch_uploads(r, PROBES)


def _after_doctor(r: Rehearsal) -> list[str]:
    return [line for line in r.last_output.splitlines() if line.strip()][-1:]


CHECKS: dict[str, Callable[[Rehearsal], list[str]]] = {
    "Point at Prefect and AWS": _after_point,
    "Create the pools": _after_pools,
    "Deploy the stacks": _after_stacks,
    "Build and push the image": _after_image,
    "Deploy the flows": _after_deploy,
    "Apply the automations": _after_automations,
    "Deploy the trigger": _after_trigger,
    "Send a test upload": _after_upload,
    "Check the deployment": _after_doctor,
}
