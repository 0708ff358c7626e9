"""Code bundles uploaded with jobs, stored once by their SHA-256."""

from __future__ import annotations

import re

from insitu.config import Settings
from insitu.errors import InvalidInput, NotFound
from insitu.runtime import bundle
from insitu.runtime.workspace import Workspace

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class BundleStore:
    """Checked code bundles under ``<home>/bundles``, named by digest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Workspace((settings.home / "bundles").as_uri())

    def put(self, data: bytes) -> tuple[str, int]:
        """Check and keep a bundle; return its digest and size."""
        bundle.check(
            data,
            max_bytes=self.settings.limits.max_code_bundle_bytes,
            max_unpacked_bytes=self.settings.limits.max_code_bundle_unpacked_bytes,
        )
        digest = bundle.digest(data)
        if self.store.size(f"{digest}.tar.gz") is None:
            self.store.write_bytes(f"{digest}.tar.gz", data)
        return digest, len(data)

    def get(self, digest: str) -> bytes:
        """A stored bundle's bytes."""
        if not _DIGEST_RE.match(digest):
            raise InvalidInput(f"code bundle id {digest!r} is not a SHA-256 hex digest")
        data = self.store.read_bytes(f"{digest}.tar.gz")
        if data is None:
            raise NotFound(f"code bundle {digest[:12]} was not uploaded; upload it first")
        return data
