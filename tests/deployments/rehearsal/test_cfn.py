"""The CloudFormation stand-in (deployments/rehearsal/cfn.py) on small templates written here:
resolved without AWS (``session=None``: every resource recorded), and created for real on
moto's standalone server (the ``s3_endpoint`` fixture serves every AWS service), read back
through boto3 clients of their own."""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from deployments.rehearsal import cfn

RESOLVE = """\
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Env:
    Type: String
    Default: dev
  Subnets:
    Type: List<AWS::EC2::Subnet::Id>
  Names:
    Type: List<String>
    Default: first,second
  Reserved:
    Type: Number
    Default: 0
Conditions:
  IsProd: !Equals [!Ref Env, prod]
  NotProd: !Not [!Equals [!Ref Env, prod]]
  Reserve: !Not [!Equals [!Ref Reserved, 0]]
Resources:
  Consumer:
    Type: AWS::Lambda::Function
    Properties:
      FunctionName: !Sub "${AWS::StackName}-${Env}-fn"
      Role: !GetAtt Role.Arn
      QueueUrl: !Ref Queue
      Region: !Sub "${AWS::Region}:${AWS::AccountId}"
      Literal: !Sub
        - "${Greeting}, ${Env} in ${Queue.QueueName}"
        - Greeting: hello
      FirstSubnet: !Select [0, !Ref Subnets]
      SecondName: !Select ["1", !Ref Names]
      Joined: !Join [",", !Ref Subnets]
      Size: !If [IsProd, 1024, 128]
      Reserved: !If [Reserve, !Ref Reserved, !Ref AWS::NoValue]
      Tags:
        - Key: always
        - !If [IsProd, {Key: prod-only}, !Ref AWS::NoValue]
  Role:
    Type: AWS::IAM::Role
    Properties:
      RoleName: !Sub "${AWS::StackName}-role"
  Queue:
    Type: AWS::SQS::Queue
    DependsOn: Role
  ProdAlarm:
    Type: AWS::CloudWatch::Alarm
    Condition: IsProd
    Properties:
      AlarmName: prod
Outputs:
  RoleArn:
    Value: !GetAtt Role.Arn
  ProdOnly:
    Condition: IsProd
    Value: !Ref ProdAlarm
  DevOnly:
    Condition: NotProd
    Value: !Join ["/", !Ref Names]
"""


def _template(tmp_path: Path, text: str, name: str = "template.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _resolve(tmp_path: Path, **parameters: Any) -> cfn.Stack:
    path = _template(tmp_path, RESOLVE)
    return cfn.deploy(path, stack_name="st", parameters=parameters, session=None)


def test_intrinsics_resolve_as_cloudformation_resolves_them(tmp_path: Path) -> None:
    stack = _resolve(tmp_path, Subnets="subnet-a,subnet-b")
    props = stack.properties["Consumer"]
    assert props["FunctionName"] == "st-dev-fn"
    assert props["Role"] == "arn:aws:recorded:eu-west-1:123456789012:Role"
    assert props["QueueUrl"] == "st-Queue"  # a recorded resource's stand-in physical id
    assert props["Region"] == "eu-west-1:123456789012"
    assert props["Literal"] == "hello, dev in st-Queue-QueueName"
    assert props["FirstSubnet"] == "subnet-a"
    assert props["SecondName"] == "second"
    assert props["Joined"] == "subnet-a,subnet-b"
    assert props["Size"] == 128
    assert "Reserved" not in props  # AWS::NoValue leaves the property out
    assert props["Tags"] == [{"Key": "always"}]  # ... and the list item
    assert stack.parameters["Subnets"] == ["subnet-a", "subnet-b"]  # List<> types split
    assert stack.parameters["Names"] == ["first", "second"]
    assert stack.recorded == ["Role (AWS::IAM::Role)", "Queue (AWS::SQS::Queue)"] + [
        "Consumer (AWS::Lambda::Function)"
    ]


def test_conditions_drop_resources_and_outputs(tmp_path: Path) -> None:
    dev = _resolve(tmp_path, Subnets="subnet-a")
    assert dev.conditions == {"IsProd": False, "NotProd": True, "Reserve": False}
    assert "ProdAlarm" not in dev.properties and "ProdAlarm" not in dev.types
    assert dev.outputs == {
        "RoleArn": "arn:aws:recorded:eu-west-1:123456789012:Role",
        "DevOnly": "first/second",
    }
    prod = _resolve(tmp_path, Subnets="subnet-a", Env="prod", Reserved=5)
    assert prod.conditions == {"IsProd": True, "NotProd": False, "Reserve": True}
    assert prod.properties["ProdAlarm"] == {"AlarmName": "prod"}
    assert prod.of_type("AWS::CloudWatch::Alarm") == ["ProdAlarm"]
    assert set(prod.outputs) == {"RoleArn", "ProdOnly"}
    consumer = prod.properties["Consumer"]
    assert consumer["Size"] == 1024 and consumer["Reserved"] == 5
    assert consumer["Tags"] == [{"Key": "always"}, {"Key": "prod-only"}]


def test_parameters_need_a_value_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    path = _template(tmp_path, RESOLVE)
    with pytest.raises(cfn.TemplateError, match="parameter Subnets has no value and no default"):
        cfn.deploy(path, stack_name="st", parameters={}, session=None)
    with pytest.raises(cfn.TemplateError, match=r"template.yaml has no parameters \['Subnet'\]"):
        cfn.deploy(path, stack_name="st", parameters={"Subnets": "a", "Subnet": "b"}, session=None)


def test_resources_come_after_what_they_reference(tmp_path: Path) -> None:
    stack = _resolve(tmp_path, Subnets="s")
    order = list(stack.types)
    # Role first (referenced by GetAtt, and the queue DependsOn it), the consumer last
    assert order.index("Role") < order.index("Queue") < order.index("Consumer")
    circular = _template(
        tmp_path,
        """\
        Resources:
          A:
            Type: AWS::SQS::Queue
            Properties:
              Name: !Sub "${B.Arn}"
          B:
            Type: AWS::SQS::Queue
            DependsOn: [A]
          C:
            Type: AWS::SQS::Queue
        """,
        "circular.yaml",
    )
    with pytest.raises(cfn.TemplateError, match=r"circular references among \['A', 'B'\]"):
        cfn.deploy(circular, stack_name="c", parameters={}, session=None)


def test_an_unknown_reference_or_intrinsic_is_an_error(tmp_path: Path) -> None:
    bad_ref = _template(
        tmp_path,
        """\
        Resources:
          A:
            Type: AWS::SQS::Queue
            Properties:
              QueueName: !Ref Nowhere
        """,
        "bad-ref.yaml",
    )
    with pytest.raises(cfn.TemplateError, match="Ref Nowhere: not a parameter nor a created"):
        cfn.deploy(bad_ref, stack_name="s", parameters={}, session=None)
    unsupported = _template(
        tmp_path,
        """\
        Resources:
          A:
            Type: AWS::SQS::Queue
            Properties:
              QueueName: !Select [0, !GetAZs ""]
        """,
        "unsupported.yaml",
    )
    with pytest.raises(cfn.TemplateError, match="Fn::GetAZs is not supported"):
        cfn.deploy(unsupported, stack_name="s", parameters={}, session=None)


def test_bucket_notification_is_translated_to_the_s3_api() -> None:
    rules = {"S3Key": {"Rules": [{"Name": "prefix", "Value": "patients/"}]}}
    translated = cfn.bucket_notification(
        {
            "LambdaConfigurations": [
                {"Event": "s3:ObjectCreated:*", "Function": "arn:fn", "Filter": rules}
            ],
            "QueueConfigurations": [{"Event": "s3:ObjectCreated:Put", "Queue": "arn:q"}],
            "TopicConfigurations": [
                {"Event": "s3:ObjectRemoved:*", "Topic": "arn:t1"},
                {"Event": "s3:ObjectCreated:*", "Topic": "arn:t2", "Filter": rules},
            ],
            "EventBridgeConfiguration": {"EventBridgeEnabled": True},
        }
    )
    key_filter = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "patients/"}]}}
    assert translated == {
        "LambdaFunctionConfigurations": [
            {"LambdaFunctionArn": "arn:fn", "Events": ["s3:ObjectCreated:*"], "Filter": key_filter}
        ],
        "QueueConfigurations": [{"QueueArn": "arn:q", "Events": ["s3:ObjectCreated:Put"]}],
        "TopicConfigurations": [
            {"TopicArn": "arn:t1", "Events": ["s3:ObjectRemoved:*"]},
            {"TopicArn": "arn:t2", "Events": ["s3:ObjectCreated:*"], "Filter": key_filter},
        ],
        "EventBridgeConfiguration": {},
    }
    assert (
        cfn.bucket_notification({"EventBridgeConfiguration": {"EventBridgeEnabled": False}}) == {}
    )


# -- on moto -------------------------------------------------------------------------------

CREATE = """\
Parameters:
  Suffix:
    Type: String
  Reserved:
    Type: Number
    Default: 0
Conditions:
  Reserve: !Not [!Equals [!Ref Reserved, 0]]
Resources:
  TaskRole:
    Type: AWS::IAM::Role
    Properties:
      RoleName: !Sub "task-${Suffix}"
      AssumeRolePolicyDocument:
        Version: "2012-10-17"
        Statement:
          - Effect: Allow
            Principal: {Service: ecs-tasks.amazonaws.com}
            Action: sts:AssumeRole
      Policies:
        - PolicyName: read-uploads
          PolicyDocument:
            Version: "2012-10-17"
            Statement:
              - Effect: Allow
                Action: [s3:GetObject]
                Resource: !Sub "arn:aws:s3:::${Bucket}/patients/*"
  DeadLetters:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "dead-${Suffix}"
  Uploads:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "uploads-${Suffix}"
      VisibilityTimeout: 180
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt DeadLetters.Arn
        maxReceiveCount: 3
  Credential:
    Type: AWS::SecretsManager::Secret
    Properties:
      Name: !Sub "scanflow/key-${Suffix}"
      Description: the Prefect key
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: !Sub "uploads-${Suffix}"
      VersioningConfiguration: {Status: Enabled}
      NotificationConfiguration:
        QueueConfigurations:
          - Event: s3:ObjectCreated:*
            Queue: !GetAtt Uploads.Arn
            Filter:
              S3Key:
                Rules:
                  - Name: prefix
                    Value: patients/
  Function:
    Type: AWS::Lambda::Function
    Properties:
      FunctionName: !Sub "trigger-${Suffix}"
      Runtime: python3.12
      Handler: h.handler
      Role: !GetAtt TaskRole.Arn
      Code: {S3Bucket: !Ref Bucket, S3Key: code.zip}
      ReservedConcurrentExecutions: !If [Reserve, !Ref Reserved, !Ref AWS::NoValue]
  Alarm:
    Type: AWS::CloudWatch::Alarm
    Properties:
      AlarmName: recorded
Outputs:
  QueueUrl:
    Value: !Ref Uploads
  SecretArn:
    Value: !Ref Credential
"""


@pytest.fixture
def aws(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 session whose clients reach moto (AWS_ENDPOINT_URL: every service)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return boto3.Session(region_name="eu-west-1")


def _client(session: Any, endpoint: str, service: str) -> Any:
    return session.client(service, endpoint_url=endpoint)


@pytest.mark.integration
def test_resources_are_created_on_moto_and_read_back(
    tmp_path: Path, aws: Any, s3_endpoint: str
) -> None:
    suffix = uuid.uuid4().hex[:10]
    path = _template(tmp_path, CREATE)
    stack = cfn.deploy(path, stack_name=f"st-{suffix}", parameters={"Suffix": suffix}, session=aws)
    assert stack.region == "eu-west-1"
    # only what has no API here is recorded
    assert stack.recorded == ["Alarm (AWS::CloudWatch::Alarm)"]

    iam = _client(aws, s3_endpoint, "iam")
    role = iam.get_role(RoleName=f"task-{suffix}")["Role"]
    assert stack.attributes["TaskRole"]["Arn"] == role["Arn"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    policy = iam.get_role_policy(RoleName=f"task-{suffix}", PolicyName="read-uploads")
    document = policy["PolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    assert document["Statement"][0] == {
        "Effect": "Allow",
        "Action": ["s3:GetObject"],
        "Resource": f"arn:aws:s3:::uploads-{suffix}/patients/*",
    }

    sqs = _client(aws, s3_endpoint, "sqs")
    url = sqs.get_queue_url(QueueName=f"uploads-{suffix}")["QueueUrl"]
    assert stack.outputs["QueueUrl"] == url
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "180"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":dead-{suffix}")
    assert int(redrive["maxReceiveCount"]) == 3

    secret = _client(aws, s3_endpoint, "secretsmanager").describe_secret(
        SecretId=f"scanflow/key-{suffix}"
    )
    assert stack.outputs["SecretArn"] == secret["ARN"]
    assert secret["Description"] == "the Prefect key"

    s3 = _client(aws, s3_endpoint, "s3")
    bucket = f"uploads-{suffix}"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    notification = s3.get_bucket_notification_configuration(Bucket=bucket)
    (queue,) = notification["QueueConfigurations"]
    assert queue["QueueArn"] == stack.attributes["Uploads"]["Arn"]
    assert queue["Events"] == ["s3:ObjectCreated:*"]
    rules = queue["Filter"]["Key"]["FilterRules"]
    assert [(r["Name"].lower(), r["Value"]) for r in rules] == [("prefix", "patients/")]

    lam = _client(aws, s3_endpoint, "lambda")
    function = lam.get_function(FunctionName=f"trigger-{suffix}")
    assert function["Configuration"]["Role"] == role["Arn"]
    assert "Concurrency" not in function  # nothing reserved by default


@pytest.mark.integration
def test_reserving_more_than_the_account_allows_fails_as_aws_fails_it(
    tmp_path: Path, aws: Any, s3_endpoint: str
) -> None:
    suffix = uuid.uuid4().hex[:10]
    path = _template(tmp_path, CREATE)
    with pytest.raises(cfn.TemplateError) as err:
        cfn.deploy(
            path,
            stack_name=f"st-{suffix}",
            parameters={"Suffix": suffix, "Reserved": 60},
            session=aws,
            account_concurrency=150,  # 90 would stay unreserved: under AWS's minimum of 100
        )
    message = str(err.value)
    assert message.startswith("Function: InvalidParameterValueException: Specified ")
    assert "decreases account's UnreservedConcurrentExecution below its minimum value of [100]" in (
        message
    )
    assert "an account limit of 150, 60 reserved" in message

    suffix = uuid.uuid4().hex[:10]
    stack = cfn.deploy(
        path,
        stack_name=f"st-{suffix}",
        parameters={"Suffix": suffix, "Reserved": 50},
        session=aws,
        account_concurrency=150,  # exactly 100 left: allowed
    )
    concurrency = _client(aws, s3_endpoint, "lambda").get_function_concurrency(
        FunctionName=f"trigger-{suffix}"
    )
    assert concurrency["ReservedConcurrentExecutions"] == 50
    assert stack.properties["Function"]["ReservedConcurrentExecutions"] == 50


def test_conditions_in_any_order_literals_and_comma_lists(tmp_path: Path) -> None:
    """CloudFormation resolves a condition that names one declared after it, writes
    ``${!Literal}`` as ``${Literal}`` and splits a CommaDelimitedList."""
    path = tmp_path / "t.yaml"
    path.write_text(
        """
Parameters:
  Mode: {Type: String, Default: "on"}
  Names: {Type: CommaDelimitedList, Default: "a,b"}
Conditions:
  Both: !And [!Condition IsOn, !Condition IsOn]
  IsOn: !Equals [!Ref Mode, "on"]
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Condition: Both
    Properties:
      QueueName: !Sub "q-${!Literal}-${AWS::Region}"
      Tags: !Ref Names
"""
    )
    stack = cfn.deploy(path, stack_name="s", parameters={}, session=None)
    assert stack.conditions == {"Both": True, "IsOn": True}
    assert stack.properties["Queue"]["QueueName"] == "q-${Literal}-eu-west-1"
    assert stack.properties["Queue"]["Tags"] == ["a", "b"]
