"""A stand-in for CloudFormation on a loopback AWS endpoint (moto): it reads one of our
templates, resolves its parameters, conditions and intrinsic functions as CloudFormation
does, and creates the resources the rehearsal and ``scanflow doctor`` look at through the
real AWS APIs: IAM roles and policies, queues, secrets, buckets with their notification
configuration, Lambda functions, ECS clusters, task definitions and services.

moto's own CloudFormation drops what matters here (a bucket's notification configuration;
policy documents come back as Python reprs), hence this. Resources whose effect lies
outside these APIs (Auto Scaling, launch templates, capacity providers, log groups,
permissions, event rules) are *recorded*: their resolved properties are kept on the
:class:`Stack` for the rehearsal to check, and :attr:`Stack.recorded` lists them, so that
nothing is claimed as exercised that was only read. An SQS event source mapping is recorded
too: the rehearsal itself plays Lambda's poller, with the mapping's properties.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACCOUNT = "123456789012"
NO_VALUE = object()  # AWS::NoValue: the property is left out


class TemplateError(Exception):
    """The template uses something this stand-in cannot resolve."""


@dataclass
class Stack:
    name: str
    region: str
    parameters: dict[str, Any]
    conditions: dict[str, bool] = field(default_factory=dict)
    physical: dict[str, str] = field(default_factory=dict)  # Ref of each resource
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)  # GetAtt
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)  # resolved
    types: dict[str, str] = field(default_factory=dict)
    recorded: list[str] = field(default_factory=list)  # read, not created
    outputs: dict[str, str] = field(default_factory=dict)

    def of_type(self, kind: str) -> list[str]:
        return [name for name, t in self.types.items() if t == kind]


def load_template(path: Path) -> dict[str, Any]:
    from cfnlint.decode import decode

    template, errors = decode(str(path))
    if errors or template is None:
        raise TemplateError(f"{path}: {errors}")
    plain: dict[str, Any] = json.loads(json.dumps(template))  # plain dicts and lists
    return plain


def deploy(
    path: Path,
    *,
    stack_name: str,
    parameters: Mapping[str, Any],
    session: Any,
    account_concurrency: int | None = None,
) -> Stack:
    """Create the template's resources in dependency order, like ``aws cloudformation
    deploy --parameter-overrides``; ``session`` is a boto3 session on the endpoint, or None
    to only resolve the template (every resource recorded, nothing created)."""
    template = load_template(path)
    declared = template.get("Parameters", {})
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in parameters:
            values[name] = parameters[name]
        elif "Default" in spec:
            values[name] = spec["Default"]
        else:
            raise TemplateError(f"{path.name}: parameter {name} has no value and no default")
        kind = str(spec.get("Type", ""))
        if (kind.startswith("List<") or kind == "CommaDelimitedList") and isinstance(
            values[name], str
        ):
            values[name] = values[name].split(",")
    unknown = set(parameters) - set(declared)
    if unknown:
        raise TemplateError(f"{path.name} has no parameters {sorted(unknown)}")
    stack = Stack(stack_name, session.region_name if session else "eu-west-1", values)
    resolver = _Resolver(stack, template)
    for name in template.get("Conditions", {}):
        resolver.condition(name)  # in any order, as CloudFormation allows
    creator = _Creator(stack, session, account_concurrency)
    for name in _order(template["Resources"]):
        resource = template["Resources"][name]
        if "Condition" in resource and not stack.conditions[resource["Condition"]]:
            continue
        props = resolver.resolve(resource.get("Properties", {}))
        stack.types[name] = resource["Type"]
        stack.properties[name] = props
        creator.create(name, resource["Type"], props)
    for name, output in template.get("Outputs", {}).items():
        if "Condition" in output and not stack.conditions[output["Condition"]]:
            continue
        stack.outputs[name] = str(resolver.resolve(output["Value"]))
    return stack


def _references(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value and isinstance(value["Ref"], str):
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            found.add(target[0] if isinstance(target, list) else str(target).split(".")[0])
        if "Fn::Sub" in value:
            text = value["Fn::Sub"][0] if isinstance(value["Fn::Sub"], list) else value["Fn::Sub"]
            found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
        for item in value.values():
            found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


def _order(resources: dict[str, Any]) -> list[str]:
    """Resources with what they reference (and DependsOn) first."""
    deps = {}
    for name, resource in resources.items():
        depends = resource.get("DependsOn", [])
        depends = [depends] if isinstance(depends, str) else list(depends)
        deps[name] = (_references(resource) | set(depends)) & resources.keys()
    done: list[str] = []
    while len(done) < len(deps):
        ready = sorted(n for n, d in deps.items() if n not in done and d <= set(done))
        if not ready:
            raise TemplateError(f"circular references among {sorted(set(deps) - set(done))}")
        done.extend(ready)
    return done


class _Resolver:
    def __init__(self, stack: Stack, template: dict[str, Any]) -> None:
        self.stack = stack
        self.template = template
        self._seen: tuple[str, ...] = ()  # the conditions being resolved (cycle check)

    def condition(self, name: str, seen: tuple[str, ...] = ()) -> bool:
        """A condition's value, resolving the conditions it names first."""
        if name not in self.stack.conditions:
            if name in seen:
                raise TemplateError(f"conditions refer to each other: {' -> '.join(seen)}")
            expression = self.template.get("Conditions", {}).get(name)
            if expression is None:
                raise TemplateError(f"no condition {name}")
            self._seen = (*seen, name)
            self.stack.conditions[name] = bool(self.resolve(expression))
        return self.stack.conditions[name]

    def pseudo(self, name: str) -> Any:
        return {
            "AWS::Region": self.stack.region,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::StackName": self.stack.name,
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        if name in self.stack.parameters:
            return self.stack.parameters[name]
        if name in self.stack.physical:
            return self.stack.physical[name]
        raise TemplateError(f"Ref {name}: not a parameter nor a created resource")

    def get_att(self, name: str, attribute: str) -> str:
        try:
            return self.stack.attributes[name][attribute]
        except KeyError:
            if self.stack.types.get(name) and any(
                r.startswith(f"{name} (") for r in self.stack.recorded
            ):  # a recorded resource: a stand-in value, as AWS would return some value
                return f"{self.stack.name}-{name}-{attribute}"
            raise TemplateError(f"GetAtt {name}.{attribute} is not known") from None

    def resolve(self, value: Any) -> Any:  # noqa: C901 - one branch per intrinsic
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(name, attribute)
            if key == "Fn::Sub":
                text, extra = (arg[0], self.resolve(arg[1])) if isinstance(arg, list) else (arg, {})
                subbed = re.sub(r"\$\{([^}!]+)\}", lambda m: self._sub(m[1], extra), text)
                return subbed.replace("${!", "${")  # ${!Literal} is the text ${Literal}
            if key == "Fn::If":
                condition, yes, no = arg
                return self.resolve(yes if self.condition(condition, self._seen) else no)
            if key == "Fn::Equals":
                a, b = (self.resolve(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(x) for x in arg)
            if key == "Fn::Or":
                return any(self.resolve(x) for x in arg)
            if key == "Condition":
                return self.condition(arg, self._seen)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Base64":
                return self.resolve(arg)
            if key.startswith("Fn::"):
                raise TemplateError(f"{key} is not supported by the stand-in")
        out = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def _sub(self, name: str, extra: dict[str, Any]) -> str:
        if name in extra:
            return str(extra[name])
        if "." in name:
            resource, attribute = name.split(".", 1)
            return self.get_att(resource, attribute)
        return str(self.ref(name))


def _camel(value: Any, *, keep: frozenset[str] = frozenset({"Options"})) -> Any:
    """CloudFormation's PascalCase properties as the ECS API's camelCase (map-valued
    properties such as a log driver's Options keep their keys)."""
    if isinstance(value, list):
        return [_camel(v) for v in value]
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: (v if k in keep else _camel(v)) for k, v in value.items()}
    return value


class _Creator:
    """Creates one resource through the real API, or records it."""

    def __init__(self, stack: Stack, session: Any, account_concurrency: int | None) -> None:
        self.stack = stack
        self.session = session
        # Lambda's concurrency limit of the account (moto's is fixed at 1000): reserving
        # fails as AWS fails it when fewer than 100 would stay unreserved.
        self.account_concurrency = account_concurrency

    def client(self, service: str) -> Any:
        return self.session.client(service)

    def arn(self, service: str, resource: str, *, region: bool = True) -> str:
        where = self.stack.region if region else ""
        return f"arn:aws:{service}:{where}:{ACCOUNT}:{resource}"

    def set(self, name: str, physical: str, **attributes: str) -> None:
        self.stack.physical[name] = physical
        self.stack.attributes[name] = attributes

    def create(self, name: str, kind: str, props: dict[str, Any]) -> None:
        method = getattr(self, "_" + kind.replace("::", "_").lower(), None)
        if method is None or self.session is None:
            self.stack.recorded.append(f"{name} ({kind})")
            self.set(name, f"{self.stack.name}-{name}", Arn=self.arn("recorded", name))
            return
        method(name, props)

    # -- IAM ---------------------------------------------------------------------------
    def _aws_iam_role(self, name: str, props: dict[str, Any]) -> None:
        iam = self.client("iam")
        role_name = props.get("RoleName") or f"{self.stack.name}-{name}"[:64]
        role = iam.create_role(
            RoleName=role_name,
            AssumeRolePolicyDocument=json.dumps(props["AssumeRolePolicyDocument"]),
            Description=props.get("Description", ""),
        )["Role"]
        for policy in props.get("Policies", []):
            iam.put_role_policy(
                RoleName=role_name,
                PolicyName=policy["PolicyName"],
                PolicyDocument=json.dumps(policy["PolicyDocument"]),
            )
        for arn in props.get("ManagedPolicyArns", []):
            iam.attach_role_policy(RoleName=role_name, PolicyArn=arn)
        self.set(name, role_name, Arn=role["Arn"], RoleId=role["RoleId"])

    def _aws_iam_policy(self, name: str, props: dict[str, Any]) -> None:
        iam = self.client("iam")
        document = json.dumps(props["PolicyDocument"])
        for user in props.get("Users", []):
            iam.put_user_policy(
                UserName=user, PolicyName=props["PolicyName"], PolicyDocument=document
            )
        for role in props.get("Roles", []):
            iam.put_role_policy(
                RoleName=role, PolicyName=props["PolicyName"], PolicyDocument=document
            )
        self.set(name, props["PolicyName"])

    def _aws_iam_instanceprofile(self, name: str, props: dict[str, Any]) -> None:
        iam = self.client("iam")
        profile_name = f"{self.stack.name}-{name}"[:128]
        profile = iam.create_instance_profile(InstanceProfileName=profile_name)
        for role in props.get("Roles", []):
            iam.add_role_to_instance_profile(InstanceProfileName=profile_name, RoleName=role)
        self.set(name, profile_name, Arn=profile["InstanceProfile"]["Arn"])

    def _aws_ec2_securitygroup(self, name: str, props: dict[str, Any]) -> None:
        group = self.client("ec2").create_security_group(
            GroupName=f"{self.stack.name}-{name}",
            Description=props.get("GroupDescription", name),
            VpcId=props["VpcId"],
        )
        self.set(name, group["GroupId"], GroupId=group["GroupId"])

    # -- queues, secrets, buckets ------------------------------------------------------
    def _aws_sqs_queue(self, name: str, props: dict[str, Any]) -> None:
        sqs = self.client("sqs")
        queue_name = props.get("QueueName") or f"{self.stack.name}-{name}"
        attributes = {
            k: json.dumps(v) if isinstance(v, dict) else str(v)
            for k, v in props.items()
            if k in ("VisibilityTimeout", "MessageRetentionPeriod", "RedrivePolicy")
        }
        url = sqs.create_queue(QueueName=queue_name, Attributes=attributes)["QueueUrl"]
        arn = self.arn("sqs", queue_name)
        self.set(name, url, Arn=arn, QueueName=queue_name, QueueUrl=url)

    def _aws_sqs_queuepolicy(self, name: str, props: dict[str, Any]) -> None:
        sqs = self.client("sqs")
        for url in props["Queues"]:
            sqs.set_queue_attributes(
                QueueUrl=url, Attributes={"Policy": json.dumps(props["PolicyDocument"])}
            )
        self.set(name, f"{self.stack.name}-{name}")

    def _aws_secretsmanager_secret(self, name: str, props: dict[str, Any]) -> None:
        secrets = self.client("secretsmanager")
        created = secrets.create_secret(
            Name=props.get("Name") or f"{self.stack.name}-{name}",
            Description=props.get("Description", ""),
        )
        self.set(name, created["ARN"], Id=created["ARN"])

    def _aws_s3_bucket(self, name: str, props: dict[str, Any]) -> None:
        s3 = self.client("s3")
        bucket = props["BucketName"]
        kwargs: dict[str, Any] = {}
        if self.stack.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.stack.region}
        s3.create_bucket(Bucket=bucket, **kwargs)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        notification = props.get("NotificationConfiguration")
        if notification:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=bucket_notification(notification)
            )
        self.set(name, bucket, Arn=f"arn:aws:s3:::{bucket}", DomainName=f"{bucket}.s3")

    # -- Lambda ------------------------------------------------------------------------
    def _aws_lambda_function(self, name: str, props: dict[str, Any]) -> None:
        lam = self.client("lambda")
        function_name = props.get("FunctionName") or f"{self.stack.name}-{name}"
        reserved = props.get("ReservedConcurrentExecutions")
        limit = self.account_concurrency
        if reserved is not None and limit is not None and limit - int(reserved) < 100:
            raise TemplateError(
                f"{name}: InvalidParameterValueException: Specified "
                "ReservedConcurrentExecutions for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of [100] (an account "
                f"limit of {limit}, {reserved} reserved)"
            )
        env = {k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()}
        created = lam.create_function(
            FunctionName=function_name,
            Runtime=props["Runtime"],
            Role=props["Role"],
            Handler=props["Handler"],
            Code={"S3Bucket": props["Code"]["S3Bucket"], "S3Key": props["Code"]["S3Key"]},
            Timeout=int(props.get("Timeout", 3)),
            MemorySize=int(props.get("MemorySize", 128)),
            Architectures=props.get("Architectures", ["x86_64"]),
            Environment={"Variables": env},
        )
        if "ReservedConcurrentExecutions" in props:
            lam.put_function_concurrency(
                FunctionName=function_name,
                ReservedConcurrentExecutions=int(props["ReservedConcurrentExecutions"]),
            )
        self.set(name, function_name, Arn=created["FunctionArn"])

    def _aws_lambda_eventsourcemapping(self, name: str, props: dict[str, Any]) -> None:
        # Created disabled: moto would otherwise invoke the function itself (in Docker) on
        # every message; the rehearsal reads the queue as Lambda's poller, with these props.
        created = self.client("lambda").create_event_source_mapping(
            FunctionName=props["FunctionName"],
            EventSourceArn=props["EventSourceArn"],
            BatchSize=int(props.get("BatchSize", 10)),
            Enabled=False,
        )
        self.stack.recorded.append(f"{name} (created disabled: the rehearsal polls the queue)")
        self.set(name, created["UUID"])

    # -- ECS ---------------------------------------------------------------------------
    def _aws_ecs_cluster(self, name: str, props: dict[str, Any]) -> None:
        cluster = self.client("ecs").create_cluster(clusterName=props["ClusterName"])["cluster"]
        self.set(name, props["ClusterName"], Arn=cluster["clusterArn"])

    def _aws_ecs_taskdefinition(self, name: str, props: dict[str, Any]) -> None:
        spec = _camel(props)
        created = self.client("ecs").register_task_definition(**spec)["taskDefinition"]
        self.set(name, created["taskDefinitionArn"])

    def _aws_ecs_capacityprovider(self, name: str, props: dict[str, Any]) -> None:
        provider = dict(props["AutoScalingGroupProvider"])
        group = str(provider["AutoScalingGroupArn"])
        if not group.startswith("arn:"):  # CloudFormation takes the group's name too
            provider["AutoScalingGroupArn"] = self.arn(
                "autoscaling", f"autoScalingGroup:0:autoScalingGroupName/{group}"
            )
        self.client("ecs").create_capacity_provider(
            name=props["Name"], autoScalingGroupProvider=_camel(provider)
        )
        self.set(name, props["Name"])

    def _aws_ecs_clustercapacityproviderassociations(
        self, name: str, props: dict[str, Any]
    ) -> None:
        self.client("ecs").put_cluster_capacity_providers(
            cluster=props["Cluster"],
            capacityProviders=props["CapacityProviders"],
            defaultCapacityProviderStrategy=_camel(
                props.get("DefaultCapacityProviderStrategy", [])
            ),
        )
        self.set(name, f"{self.stack.name}-{name}")

    def _aws_ecs_service(self, name: str, props: dict[str, Any]) -> None:
        spec = _camel(props)
        created = self.client("ecs").create_service(**spec)["service"]
        self.set(name, created["serviceArn"], Name=created["serviceName"])


def bucket_notification(props: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's NotificationConfiguration as S3's API takes it."""
    kinds = {
        "LambdaConfigurations": ("LambdaFunctionConfigurations", "Function", "LambdaFunctionArn"),
        "QueueConfigurations": ("QueueConfigurations", "Queue", "QueueArn"),
        "TopicConfigurations": ("TopicConfigurations", "Topic", "TopicArn"),
    }
    out: dict[str, Any] = {}
    for cfn_kind, (api_kind, target, arn_key) in kinds.items():
        for item in props.get(cfn_kind, []):
            rules = item.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            entry: dict[str, Any] = {arn_key: item[target], "Events": [item["Event"]]}
            if rules:
                entry["Filter"] = {
                    "Key": {
                        "FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]
                    }
                }
            out.setdefault(api_kind, []).append(entry)
    if props.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        out["EventBridgeConfiguration"] = {}
    return out
