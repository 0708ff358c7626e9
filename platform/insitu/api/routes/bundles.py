"""Code bundles: the user's analysis code, uploaded before the job that uses it."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from insitu.api.deps import CurrentUser, SettingsDep
from insitu.api.schemas import BundlePublic
from insitu.errors import InvalidInput
from insitu.services.bundles import BundleStore

router = APIRouter(prefix="/bundles", tags=["bundles"])


@router.post("", response_model=BundlePublic, status_code=status.HTTP_201_CREATED)
async def upload_bundle(request: Request, settings: SettingsDep, user: CurrentUser) -> BundlePublic:
    """Upload a .tar.gz of code (the request body); returns its id, the SHA-256."""
    limit = settings.limits.max_code_bundle_bytes
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit:
        raise InvalidInput(f"code bundle is {declared:,} bytes, over the limit of {limit:,}")
    data = bytearray()
    async for block in request.stream():
        data += block
        if len(data) > limit:
            raise InvalidInput(f"code bundle is over the limit of {limit:,} bytes")
    digest, size = BundleStore(settings).put(bytes(data))
    return BundlePublic(digest=digest, size=size)
