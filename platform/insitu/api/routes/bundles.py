"""Code bundles: the user's analysis code, uploaded before the job that uses it."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, status

from insitu.api.deps import CurrentUser, SettingsDep
from insitu.api.schemas import BundlePublic
from insitu.config import Settings
from insitu.db.engine import Database
from insitu.db.models import User
from insitu.errors import TooLarge
from insitu.services.bundles import BundleStore

router = APIRouter(prefix="/bundles", tags=["bundles"])


def _keep(db: Database, settings: Settings, user_id: int, data: bytes) -> tuple[str, int]:
    with db.session() as session:
        user = session.get(User, user_id)
        assert user is not None
        return BundleStore(settings).put(session, user, data)


@router.post(
    "",
    response_model=BundlePublic,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The code as a .tar.gz ('insitu submit --code DIR' packs it); "
            "any Content-Type is read as bytes.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_bundle(request: Request, settings: SettingsDep, user: CurrentUser) -> BundlePublic:
    """Upload a .tar.gz of code (the request body); returns its id, the SHA-256.

    The archive is checked off the event loop, member by member, against the limits on
    its size, unpacked size and number of files.
    """
    limit = settings.limits.max_code_bundle_bytes
    declared = request.headers.get("content-length") or "0"
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"code bundle is {int(declared):,} bytes, over the limit of {limit:,}")
    data = bytearray()
    async for block in request.stream():
        data += block
        if len(data) > limit:
            raise TooLarge(f"code bundle is over the limit of {limit:,} bytes")
    digest, size = await asyncio.to_thread(
        _keep, request.app.state.db, settings, user.id, bytes(data)
    )
    return BundlePublic(digest=digest, size=size)
