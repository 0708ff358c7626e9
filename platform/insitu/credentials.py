"""Credentials for one job: read its dataset's prefix, write its results prefix, nothing else.

On AWS, :class:`StsIssuer` assumes the job role with a session policy built by
:func:`session_policy`, so the effective rights are the intersection of the role's and
the policy's: the dataset prefix (read) and the job's workspace (read and write).
Stores that cannot scope credentials (a local SeaweedFS, local files) get
:class:`StaticIssuer`: a dedicated job key, never the platform's own, and the runtime
opens only the job's dataset; the provenance records that the store did not enforce it.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from insitu.config import Settings
from insitu.errors import BackendError
from insitu.objectstore import boto_client, bucket_and_key, is_s3


@dataclass(frozen=True)
class JobCredentials:
    """Keys handed to one job through its environment."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expires_at: datetime | None = None
    scoped: bool = False

    def env(self) -> dict[str, str]:
        """The AWS environment variables s3fs and boto3 read."""
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "INSITU_CREDENTIALS_SCOPED": "1" if self.scoped else "0",
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env


def _prefix(key: str) -> str:
    return key.rstrip("/") + "/" if key else ""


def session_policy(dataset_url: str, workspace_url: str) -> dict[str, Any]:
    """An IAM policy allowing reads under the dataset and reads/writes under the workspace."""
    statements: list[dict[str, Any]] = []
    for sid, url, actions in (
        ("ReadDataset", dataset_url, ["s3:GetObject"]),
        ("UseWorkspace", workspace_url, ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]),
    ):
        if not is_s3(url):
            continue
        bucket, key = bucket_and_key(url)
        prefix = _prefix(key)
        statements.append(
            {
                "Sid": sid,
                "Effect": "Allow",
                "Action": actions,
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"],
            }
        )
        statements.append(
            {
                "Sid": f"List{sid}",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}},
            }
        )
    if statements:
        # Buckets encrypted with a KMS key (SSE-KMS) need the key to read and write objects;
        # only through S3, and the job role's own policy names the one key it may use.
        statements.append(
            {
                "Sid": "UseBucketKeyThroughS3",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": ["*"],
                "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


class CredentialIssuer(ABC):
    """Gives each job the credentials it needs, and no more."""

    @abstractmethod
    def issue(self, job_id: str, dataset_url: str, workspace_url: str) -> JobCredentials | None:
        """Credentials for one job, or None when it needs none (local files)."""


class StsIssuer(CredentialIssuer):
    """AssumeRole with a session policy limited to the job's prefixes."""

    def __init__(self, settings: Settings, sts_client: Any | None = None) -> None:
        if not settings.storage.job_role_arn:
            raise BackendError("storage.scoping is 'sts' but storage.job_role_arn is not set")
        self.settings = settings
        self.sts = sts_client or boto_client(settings, "sts")

    def issue(self, job_id: str, dataset_url: str, workspace_url: str) -> JobCredentials | None:
        if not (is_s3(dataset_url) or is_s3(workspace_url)):
            return None
        response = self.sts.assume_role(
            RoleArn=self.settings.storage.job_role_arn,
            RoleSessionName=f"insitu-{job_id}",
            Policy=json.dumps(session_policy(dataset_url, workspace_url)),
            DurationSeconds=max(900, int(self.settings.storage.credential_lifetime)),
        )
        creds = response["Credentials"]
        return JobCredentials(
            creds["AccessKeyId"],
            creds["SecretAccessKey"],
            creds["SessionToken"],
            creds.get("Expiration"),
            scoped=True,
        )


class StaticIssuer(CredentialIssuer):
    """The job key of a store that cannot scope credentials; never the platform's key."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def issue(self, job_id: str, dataset_url: str, workspace_url: str) -> JobCredentials | None:
        storage = self.settings.storage
        if not (is_s3(dataset_url) or is_s3(workspace_url)):
            return None
        if not (storage.job_access_key_id and storage.job_secret_access_key):
            raise BackendError(
                "this job reads object storage but no job key is configured: set "
                "storage.job_access_key_id and storage.job_secret_access_key, or scoping 'sts'"
            )
        return JobCredentials(
            storage.job_access_key_id.get_secret_value(),
            storage.job_secret_access_key.get_secret_value(),
        )


def make_issuer(settings: Settings) -> CredentialIssuer:
    """The issuer the settings ask for."""
    if settings.storage.scoping == "sts":
        return StsIssuer(settings)
    return StaticIssuer(settings)
