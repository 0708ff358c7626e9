"""Scoped job credentials: the session policy's logic, and refusals by the store (moto).

moto enforces IAM policies on S3 requests but ignores STS session policies. AWS
evaluates a session's rights as the intersection of the role's policies and the
session policy; the ``session_policies_enforced`` fixture adds exactly that rule to
moto, so the refusals below come from moto's own policy engine and S3 responses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core import enable_iam_authentication
from moto.iam.access_control import (
    AssumedRoleAccessKey,
    IAMPolicy,
    IAMRequestBase,
    PermissionResult,
)
from moto.sts.models import sts_backends

from insitu.config import Settings
from insitu.credentials import JobCredentials, StaticIssuer, StsIssuer, session_policy
from insitu.errors import BackendError

DATASET = "s3://institute-data/ophys/session-001.zarr"
OTHER = "s3://institute-data/ophys/session-002.zarr"
WORKSPACE = "s3://institute-results/jobs/j-123"


def allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    return (
        IAMPolicy(json.dumps(policy)).is_action_permitted(action, resource)
        == PermissionResult.PERMITTED
    )


def test_policy_reads_only_the_dataset_and_writes_only_the_workspace() -> None:
    policy = session_policy(DATASET, WORKSPACE)
    data = "arn:aws:s3:::institute-data"
    results = "arn:aws:s3:::institute-results"
    assert allowed(policy, "s3:GetObject", f"{data}/ophys/session-001.zarr/0/c/0/0/0")
    assert not allowed(policy, "s3:GetObject", f"{data}/ophys/session-002.zarr/0/c/0/0/0")
    assert not allowed(policy, "s3:GetObject", f"{data}/ophys/session-001.zarr-copy/zarr.json")
    assert not allowed(policy, "s3:PutObject", f"{data}/ophys/session-001.zarr/zarr.json")
    assert allowed(policy, "s3:PutObject", f"{results}/jobs/j-123/results/mean.npy")
    assert not allowed(policy, "s3:PutObject", f"{results}/jobs/j-999/results/mean.npy")
    assert not allowed(policy, "s3:GetObject", f"{results}/jobs/j-999/results/mean.npy")
    assert not allowed(policy, "s3:DeleteBucket", data)


def test_policy_skips_local_urls() -> None:
    assert session_policy("file:///data/x.zarr", "file:///home/jobs/j")["Statement"] == []


@pytest.fixture
def session_policies_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give moto AWS's rule for session policies: a session may do only what both allow."""
    original = IAMRequestBase.check_action_permitted

    def check(self: IAMRequestBase, resource: str) -> None:
        original(self, resource)
        key = self._access_key
        if not isinstance(key, AssumedRoleAccessKey):
            return
        for role in sts_backends[key.account_id][key.partition].assumed_roles:
            if role.access_key_id != key._access_key_id or not role.policy:
                continue
            permitted = IAMPolicy(role.policy).is_action_permitted(self._action, resource)
            if permitted != PermissionResult.PERMITTED:
                self._raise_access_denied()

    monkeypatch.setattr(IAMRequestBase, "check_action_permitted", check)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A moto account with data, a broad job role, and an insitu platform user."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        iam = boto3.client("iam", region_name="us-east-1")
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("institute-data", "institute-results"):
            s3.create_bucket(Bucket=bucket)
        for key in ("ophys/session-001.zarr/zarr.json", "ophys/session-002.zarr/zarr.json"):
            s3.put_object(Bucket="institute-data", Key=key, Body=b"{}")
        user = iam.create_user(UserName="insitu-platform")["User"]
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}
            ],
        }
        role = iam.create_role(RoleName="insitu-job", AssumeRolePolicyDocument=json.dumps(trust))[
            "Role"
        ]
        broad = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_role_policy(
            RoleName="insitu-job", PolicyName="all-buckets", PolicyDocument=json.dumps(broad)
        )
        assume = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role["Arn"]}],
        }
        iam.put_user_policy(
            UserName="insitu-platform", PolicyName="assume", PolicyDocument=json.dumps(assume)
        )
        key = iam.create_access_key(UserName="insitu-platform")["AccessKey"]
        yield {"role_arn": role["Arn"], "key": key}


def _s3_with(credentials: JobCredentials) -> Any:
    return boto3.client(
        "s3",
        region_name="us-east-1",
        aws_access_key_id=credentials.access_key_id,
        aws_secret_access_key=credentials.secret_access_key,
        aws_session_token=credentials.session_token,
    )


def test_job_credentials_are_refused_outside_the_dataset(
    aws: dict[str, Any], session_policies_enforced: None
) -> None:
    settings = Settings(storage={"scoping": "sts", "job_role_arn": aws["role_arn"]})  # type: ignore[arg-type]
    sts = boto3.client(
        "sts",
        region_name="us-east-1",
        aws_access_key_id=aws["key"]["AccessKeyId"],
        aws_secret_access_key=aws["key"]["SecretAccessKey"],
    )
    with enable_iam_authentication():
        credentials = StsIssuer(settings, sts).issue("j-123", DATASET, WORKSPACE)
        assert credentials is not None and credentials.scoped and credentials.session_token
        s3 = _s3_with(credentials)
        assert (
            s3.get_object(Bucket="institute-data", Key="ophys/session-001.zarr/zarr.json")[
                "Body"
            ].read()
            == b"{}"
        )
        s3.put_object(Bucket="institute-results", Key="jobs/j-123/results/mean.npy", Body=b"1")
        for call in (
            lambda: s3.get_object(Bucket="institute-data", Key="ophys/session-002.zarr/zarr.json"),
            lambda: s3.put_object(
                Bucket="institute-data", Key="ophys/session-001.zarr/x", Body=b"1"
            ),
            lambda: s3.put_object(
                Bucket="institute-results", Key="jobs/j-999/results/x", Body=b"1"
            ),
        ):
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["Error"]["Code"] == "AccessDenied"


def test_without_the_session_policy_the_role_would_read_everything(aws: dict[str, Any]) -> None:
    """The control: the refusals above come from the session policy, not the role."""
    sts = boto3.client(
        "sts",
        region_name="us-east-1",
        aws_access_key_id=aws["key"]["AccessKeyId"],
        aws_secret_access_key=aws["key"]["SecretAccessKey"],
    )
    with enable_iam_authentication():
        creds = sts.assume_role(RoleArn=aws["role_arn"], RoleSessionName="unscoped")["Credentials"]
        s3 = _s3_with(
            JobCredentials(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
        )
        assert s3.get_object(Bucket="institute-data", Key="ophys/session-002.zarr/zarr.json")[
            "Body"
        ].read()


def test_static_issuer_hands_out_the_job_key_not_the_platform_key() -> None:
    settings = Settings(
        storage={  # type: ignore[arg-type]
            "access_key_id": "platform",
            "secret_access_key": "platform-secret",
            "job_access_key_id": "job",
            "job_secret_access_key": "job-secret",
        }
    )
    credentials = StaticIssuer(settings).issue("j-1", DATASET, WORKSPACE)
    assert credentials is not None and credentials.env()["AWS_ACCESS_KEY_ID"] == "job"
    assert credentials.env()["INSITU_CREDENTIALS_SCOPED"] == "0"
    assert StaticIssuer(settings).issue("j-1", "file:///d.zarr", "file:///w") is None
    with pytest.raises(BackendError, match="no job key is configured"):
        StaticIssuer(Settings()).issue("j-1", DATASET, WORKSPACE)
    with pytest.raises(BackendError, match="job_role_arn"):
        StsIssuer(Settings(storage={"scoping": "sts"}))  # type: ignore[arg-type]
