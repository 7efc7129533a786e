"""May this AWS identity do this action on this resource? Identity-policy evaluation.

IAM's policy simulator would answer this, but moto does not implement it, and the same code
must run against a live account and moto's IAM on loopback; so identity-based policies are
evaluated here, after AWS's documented logic: an explicit Deny that matches wins, otherwise
an Allow that matches is needed, otherwise the request is implicitly denied.

Conservative by design: a statement this module cannot evaluate (an unsupported condition
operator, an unresolved policy variable) never counts as an Allow, and when it is a Deny it
is taken as one that may apply. Service control policies, session policies and resource
policies are out of reach of an identity's credentials and are not considered.

    >>> evaluate([{"Version": "2012-10-17", "Statement": [
    ...     {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}]}],
    ...     "iam:PassRole", "arn:aws:iam::123456789012:role/r").allowed
    True
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import unquote

__all__ = [
    "Decision",
    "NamedPolicy",
    "evaluate",
    "may_pass_role",
    "permissions_boundary",
    "principal_policies",
    "user_for_access_key",
]

ECS_TASKS = "ecs-tasks.amazonaws.com"

# Policy variables (${aws:username}) exist only in this version of the policy language; in
# older documents "${" is literal text.
_VARIABLES_VERSION = "2012-10-17"


@dataclass(frozen=True)
class Decision:
    """The answer and why, in words fit for `scanflow doctor`."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class NamedPolicy:
    """A policy document (dict, JSON or URL-encoded JSON) and a name used in reasons."""

    name: str
    document: Mapping[str, Any] | str


PolicyInput = NamedPolicy | Mapping[str, Any] | str | tuple[str, Mapping[str, Any] | str]
Context = Mapping[str, str | list[str]]


class _Unverifiable(Exception):
    """Part of a statement this module cannot evaluate; the message says which."""


# --- documents -------------------------------------------------------------------------


def _named(policy: PolicyInput, index: int) -> NamedPolicy:
    if isinstance(policy, NamedPolicy):
        return policy
    if isinstance(policy, tuple):
        return NamedPolicy(policy[0], policy[1])
    return NamedPolicy(f"policy {index + 1}", policy)


def _parse(policy: NamedPolicy) -> Mapping[str, Any]:
    document = policy.document
    if isinstance(document, str):
        text = document.strip()
        # IAM's raw API returns documents URL-encoded ("%7B%22Version..."); boto3 decodes
        # them, other clients and stored copies may not.
        if not text.startswith("{"):
            text = unquote(text)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{policy.name}: not a JSON policy document: {exc}") from exc
    if not isinstance(document, Mapping) or "Statement" not in document:
        raise ValueError(f"{policy.name}: a policy document needs a Statement")
    return document


def _statements(policy: NamedPolicy) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    """(label for reasons, statement, whether policy variables apply) per statement."""
    document = _parse(policy)
    statements = document["Statement"]
    if isinstance(statements, Mapping):
        statements = [statements]
    variables = document.get("Version") == _VARIABLES_VERSION
    for i, statement in enumerate(statements):
        if not isinstance(statement, Mapping) or statement.get("Effect") not in ("Allow", "Deny"):
            raise ValueError(f"{policy.name}: statement {i + 1} is not a valid statement")
        sid = statement.get("Sid")
        label = f"statement {sid or i + 1} of {policy.name}"
        yield label, statement, variables


def _strings(value: Any) -> list[str]:
    """A policy element's value(s) as strings (JSON true is "true", as IAM reads it)."""
    items = value if isinstance(value, list) else [value]
    return [str(v).lower() if isinstance(v, bool) else str(v) for v in items]


# --- patterns --------------------------------------------------------------------------

_TOKEN = re.compile(r"\$\{[^}]*\}|\*|\?|[^$*?]+|\$")
_VARIABLE = re.compile(r"\s*([^,\s]+)\s*(?:,\s*'([^']*)'\s*)?")


class _Scope:
    """The request context, keys case-insensitive, and whether policy variables apply."""

    def __init__(self, context: Context | None, variables: bool, complete: bool) -> None:
        self.values: dict[str, list[str]] = {
            key.casefold(): [value] if isinstance(value, str) else list(value)
            for key, value in (context or {}).items()
        }
        self.variables = variables
        self.complete = complete

    def get(self, key: str) -> list[str] | None:
        values = self.values.get(key.casefold())
        return values or None  # an empty set reads as a missing key, as in IAM

    def variable(self, inner: str) -> str:
        if inner in ("*", "?", "$"):
            return inner  # ${*} ${?} ${$}: the literal character
        found = _VARIABLE.fullmatch(inner)
        if found is None:
            raise _Unverifiable(f"malformed policy variable ${{{inner}}}")
        key, default = found.groups()
        values = self.get(key)
        if values is not None and len(values) == 1:
            return values[0]
        if values is None and default is not None:
            return default
        raise _Unverifiable(f"unresolved policy variable ${{{inner}}}")


def _regex(pattern: str, scope: _Scope, *, wildcards: bool) -> str:
    parts = []
    for token in _TOKEN.findall(pattern):
        if wildcards and token == "*":
            parts.append(".*")
        elif wildcards and token == "?":
            parts.append(".")
        elif token.startswith("${") and scope.variables:
            # a substituted value is literal text: its own * and ? are not wildcards
            parts.append(re.escape(scope.variable(token[2:-1])))
        else:
            parts.append(re.escape(token))
    return "".join(parts)


def _like(pattern: str, value: str, scope: _Scope, *, ignore_case: bool = False) -> bool:
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch(_regex(pattern, scope, wildcards=True), value, flags) is not None


def _equals(pattern: str, value: str, scope: _Scope, *, ignore_case: bool = False) -> bool:
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.fullmatch(_regex(pattern, scope, wildcards=False), value, flags) is not None


def _arn_segments(pattern: str) -> list[str]:
    # Split on the colons outside ${...}: "${aws:username}" is one variable, not two segments.
    segments: list[str] = []
    depth, start = False, 0
    for i, char in enumerate(pattern):
        if pattern.startswith("${", i):
            depth = True
        elif char == "}":
            depth = False
        elif char == ":" and not depth and len(segments) < 5:
            segments.append(pattern[start:i])
            start = i + 1
    segments.append(pattern[start:])
    return segments


def _arn_like(pattern: str, value: str, scope: _Scope) -> bool:
    # ArnEquals and ArnLike are the same test: each of the six colon-separated parts is
    # matched on its own, case-sensitive, with * and ? (the last part keeps its colons).
    wanted, actual = _arn_segments(pattern), value.split(":", 5)
    if len(wanted) != 6 or len(actual) != 6:
        return False
    return all(_like(w, a, scope) for w, a in zip(wanted, actual, strict=True))


def _any(patterns: list[str], test: Callable[[str], bool]) -> bool:
    """Whether any pattern matches; unverifiable only if none matches and one could not say."""
    doubt: _Unverifiable | None = None
    for pattern in patterns:
        try:
            if test(pattern):
                return True
        except _Unverifiable as exc:
            doubt = doubt or exc
    if doubt is not None:
        raise doubt
    return False


# --- conditions ------------------------------------------------------------------------

# operator -> (value test, negated); the negated ones are true when no policy value matches.
_Test = Callable[[str, str, _Scope], bool]
_OPERATORS: dict[str, tuple[_Test, bool]] = {
    "StringEquals": (_equals, False),
    "StringNotEquals": (_equals, True),
    "StringEqualsIgnoreCase": (lambda p, v, s: _equals(p, v, s, ignore_case=True), False),
    "StringNotEqualsIgnoreCase": (lambda p, v, s: _equals(p, v, s, ignore_case=True), True),
    "StringLike": (_like, False),
    "StringNotLike": (_like, True),
    "ArnEquals": (_arn_like, False),
    "ArnLike": (_arn_like, False),
    "ArnNotEquals": (_arn_like, True),
    "ArnNotLike": (_arn_like, True),
    # no policy variables in Bool; "true"/"false" compare without regard to case
    "Bool": (lambda p, v, s: p.casefold() == v.casefold(), False),
}
_ANY, _ALL = "ForAnyValue:", "ForAllValues:"


def _condition(operator: str, key: str, policy_values: list[str], scope: _Scope) -> bool:
    """One operator applied to one condition key (several policy values are ORed)."""
    base, set_operator = operator, ""
    for prefix in (_ANY, _ALL):
        if base.startswith(prefix):
            base, set_operator = base[len(prefix) :], prefix
    if_exists = base.endswith("IfExists") and base != "IfExists"
    if if_exists:
        base = base[: -len("IfExists")]
    values = scope.get(key)
    if base == "Null" and not set_operator and not if_exists:
        if values is None and not scope.complete:
            raise _Unverifiable(f"condition key {key} is not in the evaluated context")
        return any((values is None) == (p.casefold() == "true") for p in policy_values)
    if base not in _OPERATORS:
        raise _Unverifiable(f"unsupported condition operator {operator}")
    test, negated = _OPERATORS[base]

    if values is None:
        if not scope.complete:
            # The real request may carry this key (aws:SourceIp, aws:PrincipalTag/...).
            raise _Unverifiable(f"condition key {key} is not in the evaluated context")
        if if_exists or set_operator == _ALL:
            return True
        if set_operator == _ANY:
            return False
        return negated  # a missing key matches no value, which the negated operators want

    def holds(value: str) -> bool:
        matched = _any(policy_values, lambda pattern: test(pattern, value, scope))
        return not matched if negated else matched

    if set_operator == _ANY:
        return _any(values, holds)
    if set_operator == _ALL:
        return not _any(values, lambda v: not holds(v))
    if len(values) > 1:
        raise _Unverifiable(f"{operator} on multivalued key {key} needs ForAnyValue/ForAllValues")
    return holds(values[0])


# --- statements ------------------------------------------------------------------------


# Actions hold no policy variables and no condition keys.
_LITERAL = _Scope(None, variables=False, complete=True)


def _action_matches(patterns: Any, action: str) -> bool:
    return _any(_strings(patterns), lambda p: _like(p, action, _LITERAL, ignore_case=True))


def _matches(statement: Mapping[str, Any], action: str, resource: str, scope: _Scope) -> bool:
    """Whether the statement applies to the request; raises _Unverifiable when unsure."""
    if "Action" in statement:
        if not _action_matches(statement["Action"], action):
            return False
    elif "NotAction" not in statement or _action_matches(statement["NotAction"], action):
        return False

    # Resource and every condition must hold: one that is definitely false settles it even
    # when another could not be evaluated.
    checks: list[Callable[[], bool]] = []
    if "Resource" in statement:
        patterns = _strings(statement["Resource"])
        checks.append(lambda: _any(patterns, lambda p: _like(p, resource, scope)))
    elif "NotResource" in statement:
        patterns = _strings(statement["NotResource"])
        checks.append(lambda: not _any(patterns, lambda p: _like(p, resource, scope)))
    else:
        return False
    for operator, block in (statement.get("Condition") or {}).items():
        if not isinstance(block, Mapping):
            raise _Unverifiable(f"malformed condition block {operator}")
        for key, values in block.items():
            checks.append(partial(_condition, operator, key, _strings(values), scope))
    doubt: _Unverifiable | None = None
    for check in checks:
        try:
            if not check():
                return False
        except _Unverifiable as exc:
            doubt = doubt or exc
    if doubt is not None:
        raise doubt
    return True


def evaluate(
    documents: Sequence[PolicyInput],
    action: str,
    resource: str,
    context: Context | None = None,
    *,
    complete_context: bool = True,
) -> Decision:
    """Evaluate identity-based policies for one request.

    ``documents``: dicts, JSON or URL-encoded JSON strings, ``(name, document)`` pairs or
    NamedPolicy. ``context``: condition keys (case-insensitive) to a value or a list of
    values. With ``complete_context=False`` the context is taken as partial, so a condition
    on a key missing from it cannot be verified (rather than reading the key as absent).
    """
    denied: list[str] = []
    deny_doubts: list[str] = []
    allowed: list[str] = []
    allow_doubts: list[str] = []
    for index, policy in enumerate(documents):
        named = _named(policy, index)
        for label, statement, variables in _statements(named):
            scope = _Scope(context, variables, complete_context)
            deny = statement["Effect"] == "Deny"
            try:
                if _matches(statement, action, resource, scope):
                    (denied if deny else allowed).append(label)
            except _Unverifiable as exc:
                (deny_doubts if deny else allow_doubts).append(f"{label}: {exc}")

    if denied:
        return Decision(False, f"explicitly denied by {denied[0]}")
    if allowed and deny_doubts:
        # Conservative: a Deny we could not evaluate might apply.
        return Decision(
            False,
            f"allowed by {allowed[0]}, but cannot rule out an explicit deny by {deny_doubts[0]}",
        )
    if allowed:
        return Decision(True, f"allowed by {allowed[0]}")
    reason = f"no statement allows {action} on {resource}"
    if allow_doubts:
        reason += "; could not verify " + "; ".join(allow_doubts)
    return Decision(False, reason)


# --- IAM -------------------------------------------------------------------------------
# iam_client is a boto3 IAM client (Any: boto3 ships no type stubs).


def _principal(arn: str) -> tuple[str, str, str]:
    """(kind "user" or "role", name, account) from a user, role or assumed-role ARN."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise ValueError(f"not an ARN: {arn}")
    service, account, resource = parts[2], parts[4], parts[5]
    kind, _, rest = resource.partition("/")
    if service == "iam" and kind in ("user", "role") and rest:
        return kind, rest.rsplit("/", 1)[-1], account  # the path is not part of the name
    if service == "sts" and kind == "assumed-role" and rest:
        # arn:aws:sts::<acct>:assumed-role/<role name>/<session>: the role's policies apply
        return "role", rest.split("/", 1)[0], account
    raise ValueError(f"not an IAM user or role ARN: {arn}")


def _pages(iam_client: Any, operation: str, key: str, **params: str) -> Iterator[Any]:
    for page in iam_client.get_paginator(operation).paginate(**params):
        yield from page[key]


def _managed(iam_client: Any, policy_arn: str, cache: dict[str, Any]) -> Any:
    if policy_arn not in cache:
        version = iam_client.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
        cache[policy_arn] = iam_client.get_policy_version(PolicyArn=policy_arn, VersionId=version)[
            "PolicyVersion"
        ]["Document"]
    return cache[policy_arn]


def _policies_of(
    iam_client: Any, kind: str, name: str, cache: dict[str, Any]
) -> Iterator[NamedPolicy]:
    """Inline and attached managed policies of one user, role or group."""
    title = kind.capitalize()  # list_user_policies(UserName=...) and so on
    param = {f"{title}Name": name}
    for policy_name in _pages(iam_client, f"list_{kind}_policies", "PolicyNames", **param):
        document = getattr(iam_client, f"get_{kind}_policy")(PolicyName=policy_name, **param)
        yield NamedPolicy(
            f"inline policy {policy_name} of {kind} {name}", document["PolicyDocument"]
        )
    attached = _pages(iam_client, f"list_attached_{kind}_policies", "AttachedPolicies", **param)
    for policy in attached:
        yield NamedPolicy(
            f"managed policy {policy['PolicyName']} attached to {kind} {name}",
            _managed(iam_client, policy["PolicyArn"], cache),
        )


def principal_policies(iam_client: Any, arn: str) -> list[NamedPolicy]:
    """Every identity policy of an IAM user (with its groups') or role, given its ARN."""
    kind, name, _ = _principal(arn)
    cache: dict[str, Any] = {}
    policies = list(_policies_of(iam_client, kind, name, cache))
    if kind == "user":
        for group in _pages(iam_client, "list_groups_for_user", "Groups", UserName=name):
            policies += _policies_of(iam_client, "group", group["GroupName"], cache)
    return policies


def _entity(iam_client: Any, arn: str) -> tuple[str, str, str, Mapping[str, Any]]:
    """(kind, name, account, GetUser's User or GetRole's Role) of a user or role ARN."""
    kind, name, account = _principal(arn)
    if kind == "user":
        return kind, name, account, iam_client.get_user(UserName=name)["User"]
    return kind, name, account, iam_client.get_role(RoleName=name)["Role"]


def _boundary(iam_client: Any, entity: Mapping[str, Any]) -> NamedPolicy | None:
    boundary = (entity.get("PermissionsBoundary") or {}).get("PermissionsBoundaryArn")
    if not boundary:
        return None
    return NamedPolicy(f"permissions boundary {boundary}", _managed(iam_client, boundary, {}))


def permissions_boundary(iam_client: Any, arn: str) -> NamedPolicy | None:
    """The permissions boundary of an IAM user or role, if it has one."""
    return _boundary(iam_client, _entity(iam_client, arn)[3])


def user_for_access_key(iam_client: Any, access_key_id: str) -> str:
    """The ARN of the IAM user an access key belongs to."""
    user_name = iam_client.get_access_key_last_used(AccessKeyId=access_key_id).get("UserName")
    if not user_name:
        raise LookupError(f"access key {access_key_id} belongs to no IAM user")
    return str(iam_client.get_user(UserName=user_name)["User"]["Arn"])


def may_pass_role(
    iam_client: Any, principal_arn: str, role_arn: str, service: str = ECS_TASKS
) -> Decision:
    """Whether the principal's identity policies let it pass ``role_arn`` to ``service``.

    The context holds iam:PassedToService and the principal's own global keys; a condition
    on any other key (the real request carries aws:SourceIp, aws:RequestedRegion, ...)
    cannot be verified, so it never grants, and a Deny resting on one is taken as one that
    may apply. A permissions boundary must allow the request too.
    """
    kind, name, account, entity = _entity(iam_client, principal_arn)
    # aws:PrincipalArn is the role's ARN for a role session, with its path in both cases.
    context: dict[str, str | list[str]] = {
        "iam:PassedToService": service,
        "aws:PrincipalAccount": account,
        "aws:PrincipalArn": entity["Arn"],
    }
    if kind == "user":
        context.update({"aws:PrincipalType": "User", "aws:username": name})
        context["aws:userid"] = entity["UserId"]
    elif ":sts:" in principal_arn:
        session = principal_arn.rsplit("/", 1)[-1]
        context.update({"aws:PrincipalType": "AssumedRole"})
        context["aws:userid"] = f"{entity['RoleId']}:{session}"

    def decide(policies: Sequence[PolicyInput]) -> Decision:
        return evaluate(policies, "iam:PassRole", role_arn, context, complete_context=False)

    decision = decide(principal_policies(iam_client, principal_arn))
    if not decision.allowed:
        return decision
    boundary = _boundary(iam_client, entity)
    if boundary is None:
        return decision
    bounded = decide([boundary])
    if not bounded.allowed:
        return Decision(False, f"{bounded.reason} (the {boundary.name})")
    return Decision(True, f"{decision.reason}, within the {boundary.name}")
