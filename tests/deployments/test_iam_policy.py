"""deployments/iam_policy.py: identity-policy evaluation, and iam:PassRole against moto's IAM.

The unit tests feed policy documents straight to ``evaluate``; the integration tests build
users, groups, roles and policies in moto's standalone server on loopback (the session's
``s3_endpoint``, which serves every AWS service) and read them back through boto3.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import quote

import boto3
import pytest

from deployments.iam_policy import (
    Decision,
    NamedPolicy,
    evaluate,
    may_pass_role,
    permissions_boundary,
    principal_policies,
    user_for_access_key,
)

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/scanflow-exec"
PASS = "iam:PassRole"


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(**fields: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": PASS, "Resource": ROLE, **fields}


def deny(**fields: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": PASS, "Resource": ROLE, **fields}


def decide(*statements: dict[str, Any], context: dict[str, Any] | None = None) -> Decision:
    return evaluate([policy(*statements)], PASS, ROLE, context)


def condition_holds(operator: str, key: str, values: Any, context: dict[str, Any]) -> bool:
    """Whether an Allow guarded by this one condition allows the request."""
    return decide(allow(Condition={operator: {key: values}}), context=context).allowed


# --- actions and resources --------------------------------------------------------------


def test_nothing_allows_is_an_implicit_deny() -> None:
    decision = evaluate([], PASS, ROLE)
    assert decision == Decision(False, f"no statement allows iam:PassRole on {ROLE}")
    assert not decide(allow(Action="iam:GetRole")).allowed


@pytest.mark.parametrize(
    "action",
    [
        "iam:PassRole",
        "*",
        "iam:*",
        "iam:Pass*",
        "IAM:passrole",
        "iam:P?ssRole",
        ["s3:*", "iam:Pass*"],
    ],
)
def test_action_wildcards_and_case(action: Any) -> None:
    assert decide(allow(Action=action)).allowed


@pytest.mark.parametrize("action", ["iam:Pass", "iam:PassRoles", "iam:P?Role", "ia*:Get*", []])
def test_action_mismatch(action: Any) -> None:
    assert not decide(allow(Action=action)).allowed


@pytest.mark.parametrize(
    "resource",
    [
        "*",
        ROLE,
        f"arn:aws:iam::{ACCOUNT}:role/*",
        "arn:aws:iam::*:role/scanflow-*",
        f"arn:aws:iam::{ACCOUNT}:role/scanflow-exe?",
        ["arn:aws:s3:::bucket", ROLE],
    ],
)
def test_resource_wildcards(resource: Any) -> None:
    assert decide(allow(Resource=resource)).allowed


@pytest.mark.parametrize(
    "resource",
    [
        f"arn:aws:iam::{ACCOUNT}:role/Scanflow-exec",  # resources are case-sensitive
        f"arn:aws:iam::{ACCOUNT}:role/scanflow-exec-*",
        f"arn:aws:iam::{ACCOUNT}:role/scanflow-ex?",
        f"arn:aws:iam::{ACCOUNT}:role/scanflow-exec.",  # . and [ are not wildcards
        "arn:aws:iam::[0-9]*:role/scanflow-exec",
    ],
)
def test_resource_mismatch(resource: str) -> None:
    assert not decide(allow(Resource=resource)).allowed


def test_wildcard_spans_a_role_path() -> None:
    role = f"arn:aws:iam::{ACCOUNT}:role/service-role/ecs/scanflow-exec"
    doc = policy(allow(Resource=f"arn:aws:iam::{ACCOUNT}:role/*"))
    assert evaluate([doc], PASS, role).allowed


def test_not_action_and_not_resource() -> None:
    other = f"arn:aws:iam::{ACCOUNT}:role/admin"
    everything_but_iam = {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}
    assert not decide(everything_but_iam).allowed
    assert evaluate([policy(everything_but_iam)], "ecs:RunTask", "*").allowed

    all_but_admin = {"Effect": "Allow", "Action": PASS, "NotResource": [other]}
    assert decide(all_but_admin).allowed
    assert not evaluate([policy(all_but_admin)], PASS, other).allowed

    # a Deny of everything except reading: PassRole falls under it
    deny_writes = {"Effect": "Deny", "NotAction": ["iam:Get*", "iam:List*"], "Resource": "*"}
    assert not decide(allow(), deny_writes).allowed
    assert evaluate([policy(allow(Action="iam:GetRole"), deny_writes)], "iam:GetRole", ROLE).allowed


def test_a_statement_without_resource_or_action_matches_nothing() -> None:
    assert not decide({"Effect": "Allow", "Action": PASS}).allowed
    assert not decide({"Effect": "Allow", "Resource": "*"}).allowed


# --- allow, deny and reasons ------------------------------------------------------------


def test_explicit_deny_beats_allow_across_policies() -> None:
    documents = [
        NamedPolicy("broad", policy(allow(Sid="Everything", Action="*", Resource="*"))),
        NamedPolicy("guard", policy(deny(Sid="NoPassingExec"))),
    ]
    decision = evaluate(documents, PASS, ROLE)
    assert decision == Decision(False, "explicitly denied by statement NoPassingExec of guard")
    # the Deny covers only its resource
    other = f"arn:aws:iam::{ACCOUNT}:role/other"
    assert evaluate(documents, PASS, other) == Decision(
        True, "allowed by statement Everything of broad"
    )


def test_reason_names_unnamed_policies_and_statements_without_sid() -> None:
    decision = evaluate([policy(allow(Action="s3:*")), policy(allow())], PASS, ROLE)
    assert decision == Decision(True, "allowed by statement 1 of policy 2")
    decision = evaluate([("team", policy(allow(Action="s3:*"), deny()))], PASS, ROLE)
    assert decision.reason == "explicitly denied by statement 2 of team"


def test_documents_as_json_and_url_encoded_json_and_single_statement() -> None:
    doc = {"Version": "2012-10-17", "Statement": allow()}  # a lone statement, not a list
    assert evaluate([json.dumps(doc)], PASS, ROLE).allowed
    assert evaluate([quote(json.dumps(doc), safe="")], PASS, ROLE).allowed
    assert evaluate([NamedPolicy("raw", quote(json.dumps(doc)))], PASS, ROLE).allowed
    with pytest.raises(ValueError, match="not a JSON policy document"):
        evaluate(["not json"], PASS, ROLE)
    with pytest.raises(ValueError, match="needs a Statement"):
        evaluate([{"Version": "2012-10-17"}], PASS, ROLE)


# --- conditions -------------------------------------------------------------------------

ECS = {"iam:PassedToService": "ecs-tasks.amazonaws.com"}


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("StringEquals", "ecs-tasks.amazonaws.com", True),
        ("StringEquals", ["lambda.amazonaws.com", "ecs-tasks.amazonaws.com"], True),  # OR
        ("StringEquals", "ECS-tasks.amazonaws.com", False),  # case-sensitive
        ("StringEquals", "ecs-*", False),  # no wildcards
        ("StringNotEquals", "lambda.amazonaws.com", True),
        ("StringNotEquals", ["lambda.amazonaws.com", "ecs-tasks.amazonaws.com"], False),
        ("StringEqualsIgnoreCase", "ECS-Tasks.AmazonAWS.com", True),
        ("StringEqualsIgnoreCase", "lambda.amazonaws.com", False),
        ("StringNotEqualsIgnoreCase", "ECS-Tasks.AmazonAWS.com", False),
        ("StringLike", "ecs-*.amazonaws.com", True),
        ("StringLike", "ecs-task?.amazonaws.com", True),
        ("StringLike", "ECS-*", False),
        ("StringNotLike", "lambda.*", True),
        ("StringNotLike", ["lambda.*", "ecs-*"], False),
    ],
)
def test_string_operators(operator: str, values: Any, expected: bool) -> None:
    assert condition_holds(operator, "iam:PassedToService", values, ECS) is expected


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("ArnEquals", "arn:aws:ecs:us-east-1:123456789012:cluster/scanflow", True),
        ("ArnLike", "arn:aws:ecs:*:123456789012:cluster/*", True),
        ("ArnLike", "arn:aws:ecs:us-east-?:*:cluster/scan*", True),
        ("ArnLike", "arn:aws:ecs:*:123456789012:cluster/Scan*", False),
        # each part on its own: a * does not reach across the colons
        ("ArnLike", "arn:aws:*:cluster/scanflow", False),
        ("ArnLike", "arn:aws:lambda:*:*:*", False),
        ("ArnNotEquals", "arn:aws:ecs:us-east-1:123456789012:cluster/other", True),
        ("ArnNotLike", "arn:aws:ecs:*:*:cluster/scan*", False),
        ("ArnNotLike", "arn:aws:ecs:*:*:cluster/other*", True),
    ],
)
def test_arn_operators(operator: str, values: Any, expected: bool) -> None:
    context = {"iam:AssociatedResourceArn": "arn:aws:ecs:us-east-1:123456789012:cluster/scanflow"}
    assert condition_holds(operator, "iam:AssociatedResourceArn", values, context) is expected


def test_arn_resource_part_keeps_its_colons() -> None:
    context = {"aws:SourceArn": "arn:aws:logs:us-east-1:123456789012:log-group:/scanflow:*"}
    pattern = "arn:aws:logs:*:123456789012:log-group:/scan*"
    assert condition_holds("ArnLike", "aws:SourceArn", pattern, context)


@pytest.mark.parametrize(
    ("values", "context_value", "expected"),
    [
        ("true", "true", True),
        (True, "true", True),  # a JSON true in the policy
        ("TRUE", "true", True),
        ("false", "true", False),
        (["false", "true"], "true", True),
    ],
)
def test_bool(values: Any, context_value: str, expected: bool) -> None:
    context = {"aws:SecureTransport": context_value}
    assert condition_holds("Bool", "aws:SecureTransport", values, context) is expected


def test_condition_keys_are_case_insensitive_values_are_not() -> None:
    assert condition_holds("StringEquals", "IAM:passedtoservice", ECS["iam:PassedToService"], ECS)
    upper = {"IAM:PASSEDTOSERVICE": "ecs-tasks.amazonaws.com"}
    assert condition_holds("StringEquals", "iam:PassedToService", "ecs-tasks.amazonaws.com", upper)


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ("StringEquals", False),
        ("StringLike", False),
        ("ArnLike", False),
        ("Bool", False),
        ("StringEqualsIfExists", True),
        ("StringLikeIfExists", True),
        ("BoolIfExists", True),
        # negated operators: a missing key matches no value
        ("StringNotEquals", True),
        ("StringNotLike", True),
        ("ArnNotLike", True),
        ("ForAnyValue:StringEquals", False),
        ("ForAnyValue:StringNotEquals", False),
        ("ForAnyValue:StringEqualsIfExists", True),
        ("ForAllValues:StringEquals", True),
        ("ForAllValues:StringNotLike", True),
    ],
)
def test_missing_key(operator: str, expected: bool) -> None:
    assert condition_holds(operator, "aws:PrincipalTag/team", "scan*", {}) is expected


def test_empty_set_reads_as_missing() -> None:
    assert not condition_holds(
        "ForAnyValue:StringEquals", "aws:TagKeys", "team", {"aws:TagKeys": []}
    )
    assert condition_holds("ForAllValues:StringEquals", "aws:TagKeys", "team", {"aws:TagKeys": []})


def test_if_exists_evaluates_a_present_key() -> None:
    assert condition_holds(
        "StringEqualsIfExists", "iam:PassedToService", "ecs-tasks.amazonaws.com", ECS
    )
    assert not condition_holds(
        "StringEqualsIfExists", "iam:PassedToService", "lambda.amazonaws.com", ECS
    )
    assert not condition_holds(
        "BoolIfExists",
        "aws:MultiFactorAuthPresent",
        "true",
        {"aws:MultiFactorAuthPresent": "false"},
    )


@pytest.mark.parametrize(
    ("operator", "values", "expected"),
    [
        ("ForAnyValue:StringEquals", "team", True),
        ("ForAnyValue:StringEquals", ["owner", "cost"], False),
        ("ForAnyValue:StringLike", "pro*", True),
        ("ForAnyValue:StringNotEquals", "team", True),  # "project" is not "team"
        ("ForAnyValue:StringNotEquals", ["team", "project"], False),
        ("ForAllValues:StringEquals", ["team", "project", "cost"], True),
        ("ForAllValues:StringEquals", "team", False),
        ("ForAllValues:StringLike", ["t*", "p*"], True),
        ("ForAllValues:StringNotEquals", ["owner", "cost"], True),
        ("ForAllValues:StringNotEquals", ["owner", "team"], False),
        ("ForAllValues:StringEqualsIgnoreCase", ["TEAM", "PROJECT"], True),
    ],
)
def test_set_operators(operator: str, values: Any, expected: bool) -> None:
    context = {"aws:TagKeys": ["team", "project"]}
    assert condition_holds(operator, "aws:TagKeys", values, context) is expected


def test_set_operators_on_a_single_value() -> None:
    assert condition_holds(
        "ForAnyValue:StringEquals", "iam:PassedToService", ECS["iam:PassedToService"], ECS
    )
    assert condition_holds("ForAllValues:StringLike", "iam:PassedToService", "ecs-*", ECS)


def test_multivalued_key_without_set_operator_is_not_verified() -> None:
    decision = decide(
        allow(Condition={"StringEquals": {"aws:TagKeys": "team"}}),
        context={"aws:TagKeys": ["team", "project"]},
    )
    assert not decision.allowed
    assert "needs ForAnyValue/ForAllValues" in decision.reason


def test_null() -> None:
    assert condition_holds("Null", "aws:PrincipalTag/team", "true", {})
    assert not condition_holds("Null", "aws:PrincipalTag/team", "false", {})
    assert condition_holds("Null", "aws:PrincipalTag/team", "false", {"aws:PrincipalTag/team": "x"})


def test_every_condition_must_hold() -> None:
    both = {
        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"},
        "Bool": {"aws:SecureTransport": "true"},
    }
    context = {**ECS, "aws:SecureTransport": "true"}
    assert decide(allow(Condition=both), context=context).allowed
    assert not decide(
        allow(Condition=both), context={**context, "aws:SecureTransport": "false"}
    ).allowed
    two_keys = {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com", "aws:x": "y"}}
    assert not decide(allow(Condition=two_keys), context=ECS).allowed


def test_conditional_deny() -> None:
    only_ecs = deny(
        Condition={"StringNotEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    )
    assert decide(allow(), only_ecs, context=ECS).allowed
    lam = {"iam:PassedToService": "lambda.amazonaws.com"}
    assert not decide(allow(), only_ecs, context=lam).allowed


# --- what cannot be verified ------------------------------------------------------------


def test_unsupported_operator_never_allows() -> None:
    numeric = allow(
        Sid="Numeric", Condition={"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}
    )
    decision = decide(numeric, context={"aws:MultiFactorAuthAge": "10"})
    assert not decision.allowed
    assert "unsupported condition operator NumericLessThan" in decision.reason
    assert "statement Numeric of policy 1" in decision.reason
    # another statement may still allow
    assert decide(numeric, allow(Sid="Plain")).reason == "allowed by statement Plain of policy 1"
    for operator in ("IpAddress", "DateGreaterThan", "ForAnyValue:NumericEquals", "NullIfExists"):
        decision = decide(allow(Condition={operator: {"aws:x": "1"}}), context={"aws:x": "1"})
        assert f"unsupported condition operator {operator}" in decision.reason


def test_unsupported_operator_in_a_deny_is_taken_as_applying() -> None:
    guard = deny(Sid="Guard", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    decision = decide(allow(Sid="Pass"), guard)
    assert not decision.allowed
    assert decision.reason == (
        "allowed by statement Pass of policy 1, but cannot rule out an explicit deny by "
        "statement Guard of policy 1: unsupported condition operator IpAddress"
    )
    # a condition that is surely false settles the Deny however the other one would go
    settled = deny(
        Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "Bool": {"aws:x": "true"}}
    )
    assert decide(allow(), settled, context={"aws:x": "false"}).allowed
    # and a Deny on another action does not matter
    assert decide(allow(), {**guard, "Action": "s3:*"}).allowed


def test_policy_variables() -> None:
    own = allow(Resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}-*")
    role = f"arn:aws:iam::{ACCOUNT}:role/alice-exec"
    assert evaluate([policy(own)], PASS, role, {"aws:username": "alice"}).allowed
    assert not evaluate([policy(own)], PASS, role, {"aws:username": "bob"}).allowed
    unresolved = evaluate([policy(own)], PASS, role)
    assert (
        not unresolved.allowed and "unresolved policy variable ${aws:username}" in unresolved.reason
    )
    # a default, the literal escapes, and the old policy language that has no variables
    dflt = allow(Resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username, 'alice'}}-*")
    assert evaluate([policy(dflt)], PASS, role).allowed
    star = f"arn:aws:iam::{ACCOUNT}:role/a*"
    literal = allow(Resource=f"arn:aws:iam::{ACCOUNT}:role/a${{*}}")
    assert evaluate([policy(literal)], PASS, star).allowed
    assert not evaluate([policy(literal)], PASS, role).allowed
    old = {"Version": "2008-10-17", "Statement": [own]}
    assert not evaluate([old], PASS, role, {"aws:username": "alice"}).allowed
    dollar = f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}-x"
    assert evaluate([old], PASS, dollar).allowed
    # in conditions too, including ARN conditions whose variable holds a colon
    arn = "arn:aws:iam::${aws:PrincipalAccount}:user/${aws:username}"
    cond = allow(Condition={"ArnEquals": {"aws:PrincipalArn": arn}})
    context = {
        "aws:username": "alice",
        "aws:PrincipalAccount": ACCOUNT,
        "aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/alice",
    }
    assert decide(cond, context=context).allowed
    assert not decide(cond, context={**context, "aws:username": "bob"}).allowed
    assert not decide(cond, context={**context, "aws:PrincipalAccount": "210987654321"}).allowed


def test_partial_context() -> None:
    """With complete_context=False a key missing from the context is not read as absent."""
    guarded = allow(Condition={"StringNotEquals": {"aws:RequestedRegion": "eu-west-1"}})
    assert decide(guarded).allowed
    decision = evaluate([policy(guarded)], PASS, ROLE, complete_context=False)
    assert not decision.allowed
    assert "condition key aws:RequestedRegion is not in the evaluated context" in decision.reason
    regional = deny(Condition={"StringEquals": {"aws:RequestedRegion": "eu-west-1"}})
    assert decide(allow(), regional).allowed
    decision = evaluate([policy(allow(), regional)], PASS, ROLE, complete_context=False)
    assert not decision.allowed and "cannot rule out an explicit deny" in decision.reason
    known = allow(Condition={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}})
    assert evaluate([policy(known)], PASS, ROLE, ECS, complete_context=False).allowed


# --- against moto's IAM on loopback -----------------------------------------------------


@pytest.fixture
def iam(s3_endpoint: str) -> Any:
    return boto3.client("iam", endpoint_url=s3_endpoint)


@pytest.fixture
def unique() -> str:
    """A suffix that keeps this test's names apart on the session's shared moto server."""
    return uuid.uuid4().hex[:10]


TRUST_ECS = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def make_role(iam: Any, name: str, **extra: Any) -> str:
    role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST_ECS, **extra)
    return str(role["Role"]["Arn"])


def make_policy(iam: Any, name: str, document: dict[str, Any]) -> str:
    return str(
        iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    )


@pytest.mark.integration
def test_principal_policies_of_a_user_and_a_role(iam: Any, unique: str) -> None:
    user, group, role = f"alice-{unique}", f"devs-{unique}", f"runner-{unique}"
    user_arn = iam.create_user(UserName=user, Path="/team/")["User"]["Arn"]
    iam.put_user_policy(
        UserName=user,
        PolicyName="inline",
        PolicyDocument=json.dumps(policy(allow(Sid="UserInline"))),
    )
    managed = make_policy(iam, f"managed-{unique}", policy(allow(Sid="Managed")))
    iam.attach_user_policy(UserName=user, PolicyArn=managed)
    iam.create_group(GroupName=group)
    iam.add_user_to_group(GroupName=group, UserName=user)
    iam.put_group_policy(
        GroupName=group,
        PolicyName="group-inline",
        PolicyDocument=json.dumps(policy(allow(Sid="GroupInline"))),
    )
    group_managed = make_policy(iam, f"group-managed-{unique}", policy(allow(Sid="GroupManaged")))
    iam.attach_group_policy(GroupName=group, PolicyArn=group_managed)
    # a managed policy's default version is the one that counts
    iam.create_policy_version(
        PolicyArn=managed,
        PolicyDocument=json.dumps(policy(allow(Sid="ManagedV2"))),
        SetAsDefault=True,
    )

    assert user_arn == f"arn:aws:iam::{ACCOUNT}:user/team/{user}"
    policies = principal_policies(iam, user_arn)
    assert [p.name for p in policies] == [
        f"inline policy inline of user {user}",
        f"managed policy managed-{unique} attached to user {user}",
        f"inline policy group-inline of group {group}",
        f"managed policy group-managed-{unique} attached to group {group}",
    ]
    reasons = [evaluate([p], PASS, ROLE).reason for p in policies]
    sids = ["UserInline", "ManagedV2", "GroupInline", "GroupManaged"]
    assert reasons == [
        f"allowed by statement {sid} of {p.name}" for sid, p in zip(sids, policies, strict=True)
    ]

    role_arn = make_role(iam, role, Path="/service-role/")
    iam.put_role_policy(
        RoleName=role,
        PolicyName="inline",
        PolicyDocument=json.dumps(policy(allow(Sid="RoleInline"))),
    )
    iam.attach_role_policy(RoleName=role, PolicyArn=managed)
    names = [p.name for p in principal_policies(iam, role_arn)]
    assert names == [
        f"inline policy inline of role {role}",
        f"managed policy managed-{unique} attached to role {role}",
    ]
    # a session of the role carries the role's policies
    session = f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/worker"
    assert [p.name for p in principal_policies(iam, session)] == names

    with pytest.raises(ValueError, match="not an IAM user or role"):
        principal_policies(iam, f"arn:aws:iam::{ACCOUNT}:root")


@pytest.mark.integration
def test_prefect_ecs_push_pool_user(iam: Any, unique: str) -> None:
    """The user `prefect work-pool create --provision-infra` makes for an ECS push pool."""
    user = f"prefect-ecs-user-{unique}"
    execution_role = make_role(iam, f"PrefectEcsTaskExecutionRole-{unique}")
    task_role = make_role(iam, f"scanflow-task-{unique}")
    # prefect 3.9 prefect/infrastructure/provisioners/ecs.py, AuthenticationResource
    provisioned = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PrefectEcsPolicy",
                "Effect": "Allow",
                "Action": [
                    "ec2:AuthorizeSecurityGroupIngress",
                    "ec2:CreateSecurityGroup",
                    "ec2:CreateTags",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeVpcs",
                    "ecs:CreateCluster",
                    "ecs:DeregisterTaskDefinition",
                    "ecs:DescribeClusters",
                    "ecs:DescribeTaskDefinition",
                    "ecs:DescribeTasks",
                    "ecs:ListAccountSettings",
                    "ecs:ListClusters",
                    "ecs:ListTaskDefinitions",
                    "ecs:RegisterTaskDefinition",
                    "ecs:RunTask",
                    "ecs:StopTask",
                    "ecs:TagResource",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogGroups",
                    "logs:GetLogEvents",
                ],
                "Resource": "*",
            },
            {
                "Sid": "AllowPassRoleForEcs",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": execution_role,
            },
        ],
    }
    user_arn = iam.create_user(UserName=user)["User"]["Arn"]
    iam.attach_user_policy(
        UserName=user, PolicyArn=make_policy(iam, f"prefect-ecs-policy-{unique}", provisioned)
    )

    decision = may_pass_role(iam, user_arn, execution_role)
    assert decision.allowed
    assert decision.reason == (
        f"allowed by statement AllowPassRoleForEcs of managed policy prefect-ecs-policy-{unique} "
        f"attached to user {user}"
    )
    decision = may_pass_role(iam, user_arn, task_role)
    assert decision == Decision(False, f"no statement allows iam:PassRole on {task_role}")

    pass_task_role = policy(
        {
            "Sid": "PassTaskRoleToEcs",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": task_role,
            "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        }
    )
    iam.attach_user_policy(
        UserName=user, PolicyArn=make_policy(iam, f"pass-task-{unique}", pass_task_role)
    )
    decision = may_pass_role(iam, user_arn, task_role)
    assert decision.allowed and "PassTaskRoleToEcs" in decision.reason
    assert not may_pass_role(iam, user_arn, task_role, service="lambda.amazonaws.com").allowed
    # the execution role's statement has no condition: any service may receive it
    assert may_pass_role(iam, user_arn, execution_role, service="lambda.amazonaws.com").allowed

    # the key moto hands out names the same user
    key = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    assert user_for_access_key(iam, key) == user_arn
    assert may_pass_role(iam, user_for_access_key(iam, key), execution_role).allowed


@pytest.mark.integration
def test_group_deny_and_user_variables(iam: Any, unique: str) -> None:
    user, group = f"bob-{unique}", f"guarded-{unique}"
    user_arn = iam.create_user(UserName=user)["User"]["Arn"]
    own_roles = make_role(iam, f"{user}-exec")
    shared = make_role(iam, f"shared-{unique}")
    iam.put_user_policy(
        UserName=user,
        PolicyName="own",
        PolicyDocument=json.dumps(
            policy(
                {
                    "Effect": "Allow",
                    "Action": "iam:PassRole",
                    "Resource": f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}-*",
                }
            )
        ),
    )
    assert may_pass_role(iam, user_arn, own_roles).allowed
    assert not may_pass_role(iam, user_arn, shared).allowed

    iam.create_group(GroupName=group)
    iam.add_user_to_group(GroupName=group, UserName=user)
    iam.put_group_policy(
        GroupName=group,
        PolicyName="no-pass",
        PolicyDocument=json.dumps(
            policy({"Sid": "NoPass", "Effect": "Deny", "Action": "iam:Pass*", "Resource": "*"})
        ),
    )
    assert may_pass_role(iam, user_arn, own_roles) == Decision(
        False, f"explicitly denied by statement NoPass of inline policy no-pass of group {group}"
    )


@pytest.mark.integration
def test_role_permissions_boundary(iam: Any, unique: str) -> None:
    target = make_role(iam, f"target-{unique}")
    boundary = make_policy(
        iam,
        f"boundary-{unique}",
        policy({"Sid": "OnlyEcs", "Effect": "Allow", "Action": "ecs:*", "Resource": "*"}),
    )
    role = f"deployer-{unique}"
    role_arn = make_role(iam, role, PermissionsBoundary=boundary)
    iam.put_role_policy(
        RoleName=role,
        PolicyName="pass",
        PolicyDocument=json.dumps(policy(allow(Sid="Pass", Resource="*"))),
    )

    found = permissions_boundary(iam, role_arn)
    assert found is not None and found.name == f"permissions boundary {boundary}"
    decision = may_pass_role(iam, role_arn, target)
    assert not decision.allowed
    assert (
        decision.reason
        == f"no statement allows iam:PassRole on {target} (the permissions boundary {boundary})"
    )

    iam.put_role_permissions_boundary(
        RoleName=role,
        PermissionsBoundary=make_policy(
            iam, f"wide-{unique}", policy({"Effect": "Allow", "Action": "*", "Resource": "*"})
        ),
    )
    decision = may_pass_role(iam, role_arn, target)
    assert decision.allowed and decision.reason.startswith(
        f"allowed by statement Pass of inline policy pass of role {role}, within"
    )
