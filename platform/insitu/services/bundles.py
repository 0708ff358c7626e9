"""Code bundles uploaded with jobs: stored once by their SHA-256, usable by their uploaders.

The bytes are kept once per digest; who may use them is recorded per uploader, so
knowing another user's digest neither runs their code nor tells whether it exists.
"""

from __future__ import annotations

import re

from sqlalchemy.orm import Session

from insitu.config import Settings
from insitu.db.models import BundleUpload, User
from insitu.errors import InvalidInput, NotFound
from insitu.objectstore import state_store
from insitu.runtime import bundle
from insitu.services import access

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class BundleStore:
    """Checked code bundles under the state prefix's ``bundles/``, named by digest: in the
    object store wherever jobs' workspaces are, so every API replica finds every bundle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = state_store(settings, "bundles")

    def put(self, session: Session, owner: User, data: bytes) -> tuple[str, int]:
        """Check and keep a bundle for ``owner`` (commits); return its digest and size.

        Checking reads the whole archive: call it off the event loop.
        """
        limits = self.settings.limits
        bundle.check(
            data,
            max_bytes=limits.max_code_bundle_bytes,
            max_unpacked_bytes=limits.max_code_bundle_unpacked_bytes,
            max_members=limits.max_code_bundle_files,
        )
        digest = bundle.digest(data)
        if self.store.size(f"{digest}.tar.gz") is None:
            self.store.write_bytes(f"{digest}.tar.gz", data)
        if session.get(BundleUpload, (digest, owner.id)) is None:
            session.add(BundleUpload(digest=digest, user_id=owner.id, size=len(data)))
            session.commit()
        return digest, len(data)

    def require(self, session: Session, user: User, digest: str) -> None:
        """Refuse a bundle ``user`` did not upload (admins: any stored bundle)."""
        if not _DIGEST_RE.match(digest):
            raise InvalidInput(f"code bundle id {digest!r} is not a SHA-256 hex digest")
        mine = session.get(BundleUpload, (digest, user.id)) is not None
        stored = (mine or access.is_admin(user)) and self.store.size(f"{digest}.tar.gz") is not None
        if not stored:  # the same answer whether it exists for someone else or not at all
            raise NotFound(
                f"you have not uploaded code bundle {digest[:12]}; upload it first "
                "('insitu submit SPEC --code DIR' does both)"
            )

    def read(self, digest: str) -> bytes:
        """A stored bundle's bytes (its use was checked when its job was submitted)."""
        data = self.store.read_bytes(f"{digest}.tar.gz")
        if data is None:
            raise NotFound(f"code bundle {digest[:12]} is no longer stored; upload it again")
        return data
