"""The platform's side of object storage: its own options, workspaces, presigned URLs.

Jobs never see the platform's keys: :func:`job_options` carries only the endpoint and
region; a job's credentials come from :mod:`insitu.credentials` through its environment.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from insitu.config import Settings
from insitu.runtime.workspace import Workspace
from insitu.storage import normalize_url


def is_s3(url: str) -> bool:
    return urlparse(url).scheme == "s3"


def bucket_and_key(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> (``bucket``, ``some/key``)."""
    parsed = urlparse(normalize_url(url))
    return parsed.netloc, parsed.path.lstrip("/")


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"region_name": settings.storage.region}
    if settings.storage.endpoint_url:
        kwargs["endpoint_url"] = settings.storage.endpoint_url
    return kwargs


def job_options(settings: Settings, url: str) -> dict[str, Any]:
    """s3fs options a job may see for ``url``: where the store is, no secrets."""
    if not is_s3(url):
        return {}
    return {"client_kwargs": _client_kwargs(settings)}


def platform_options(settings: Settings, url: str) -> dict[str, Any]:
    """s3fs options with the platform's own key, for the server only."""
    options = job_options(settings, url)
    if options and settings.storage.access_key_id and settings.storage.secret_access_key:
        options["key"] = settings.storage.access_key_id.get_secret_value()
        options["secret"] = settings.storage.secret_access_key.get_secret_value()
    return options


def workspace(settings: Settings, url: str) -> Workspace:
    """A job's workspace, opened with the platform's rights."""
    return Workspace(url, platform_options(settings, url))


def boto_client(settings: Settings, service: str = "s3") -> Any:
    """A boto3 client with the platform's key and endpoint."""
    import boto3
    from botocore.config import Config

    storage = settings.storage
    return boto3.client(
        service,
        config=Config(signature_version="s3v4") if service == "s3" else None,
        region_name=storage.region,
        endpoint_url=storage.endpoint_url if service == "s3" else None,
        aws_access_key_id=storage.access_key_id.get_secret_value()
        if storage.access_key_id
        else None,
        aws_secret_access_key=(
            storage.secret_access_key.get_secret_value() if storage.secret_access_key else None
        ),
    )


def presign(settings: Settings, url: str, filename: str | None = None) -> str:
    """A download URL for one object that expires after ``storage.presign_expiry``."""
    bucket, key = bucket_and_key(url)
    params: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if filename:
        params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
    return str(
        boto_client(settings).generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(settings.storage.presign_expiry)
        )
    )


def ensure_bucket(settings: Settings, url: str) -> None:
    """Create the bucket of an ``s3://`` URL if it does not exist (development servers)."""
    bucket, _ = bucket_and_key(url)
    client = boto_client(settings)
    try:
        client.head_bucket(Bucket=bucket)
    except Exception:
        client.create_bucket(Bucket=bucket)


def state_store(settings: Settings, folder: str) -> Workspace:
    """A folder of the server's shared state (``bundles``, ``logs``), on the server's
    credentials: every replica reads and writes the same one."""
    return workspace(settings, f"{settings.resolved_state_url}/{folder}")
