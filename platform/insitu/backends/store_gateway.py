"""What a job behind insitu's store gateway is told: the gateway as its store, and no key.

Shared by the backends whose jobs reach object storage only through a gateway on the
trusted side (docker: a process of the server's; kubernetes: a pod in the server's
namespace). The gateway signs with the platform's credentials; the job holds placeholders.
"""

from __future__ import annotations

from dataclasses import replace

from insitu.backends.base import LaunchRequest
from insitu.config import Settings

# What the gateway signs with; the job's containers get placeholders instead.
GATEWAY_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
PLACEHOLDER_KEY = "insitu-job-holds-no-key"
STORE_ACCESS = (
    "enforced by insitu's store gateway: the job holds no store credential and may read "
    "only its dataset and workspace, write only its workspace"
)


def uses_store(request: LaunchRequest) -> bool:
    """Whether the job's dataset or workspace is in object storage."""
    return any(u and u.startswith("s3://") for u in (request.dataset_url, request.workspace_url))


def dataset_in_store(request: LaunchRequest) -> bool:
    """Whether the job's dataset bytes pass its gateway (then the gateway counts the scan)."""
    return bool(request.dataset_url and request.dataset_url.startswith("s3://"))


def write_limit(settings: Settings) -> int:
    """The most bytes a job may write through its gateway, in all."""
    return max(4 * int(settings.limits.max_result_bytes), 1 << 30)


def behind_gateway(request: LaunchRequest, endpoint: str) -> LaunchRequest:
    """The request as the job sees it: no store credential, ``endpoint`` as its store."""
    env = {k: v for k, v in request.env.items() if k not in GATEWAY_CREDENTIALS}
    env.update(
        AWS_ACCESS_KEY_ID=PLACEHOLDER_KEY,
        AWS_SECRET_ACCESS_KEY=PLACEHOLDER_KEY,
        INSITU_STORE_ENDPOINT=endpoint,
        INSITU_CREDENTIALS_SCOPED="1",
    )
    return replace(request, env=env)
