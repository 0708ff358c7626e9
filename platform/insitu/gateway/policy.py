"""Which S3 requests a job's gateway lets through: a pure function of the request.

Keys are compared as S3 compares them, literally; keys with ``.``, ``..`` or empty path
segments are refused outright so that no HTTP library on the way can rewrite them into
another prefix.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

# Files in the workspace that the server writes and the job must never replace.
SERVER_FILES = ("job.json", "code.tar.gz")
READ_METHODS = {"GET", "HEAD"}
WRITE_QUERIES = {"uploads", "uploadId", "partNumber"}
# Query parameters of reads a job may use: listing and ranged object reads.
READ_QUERIES = {
    "list-type", "prefix", "delimiter", "continuation-token", "start-after", "max-keys",
    "encoding-type", "fetch-owner", "location", "versionId", "partNumber",
    "x-id",
}  # fmt: skip


# The server's own endpoints on a gateway (no bucket name starts with "_"), and the header
# that carries the server's token to them.
ADMIN_PREFIX = "/_insitu/"
ADMIN_HEADER = "X-Insitu-Token"


@dataclass(frozen=True)
class Prefix:
    """``s3://bucket/prefix/``: a bucket and a key prefix (ends in '/' or is empty)."""

    bucket: str
    prefix: str

    @classmethod
    def of(cls, url: str) -> Prefix:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url!r} is not an s3:// URL")
        key = parts.path.strip("/")
        return cls(parts.netloc, f"{key}/" if key else "")

    def holds(self, bucket: str, key: str) -> bool:
        return bucket == self.bucket and key.startswith(self.prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Decision:
    """Whether a request may pass, why not, and whether its bytes count as scanned."""

    allowed: bool
    reason: str = ""
    scan: bool = False


@dataclass(frozen=True)
class Policy:
    """What one job may do: read its dataset, read and write its workspace.

    Either may be None when it is not in the store (a mounted local dataset or workspace).
    """

    dataset: Prefix | None
    workspace: Prefix | None

    def describe(self) -> str:
        reads = " and ".join(str(p) for p in (self.dataset, self.workspace) if p) or "nothing"
        return f"read {reads}, write {self.workspace or 'nothing'}"

    def _in(self, grant: Prefix | None, bucket: str, key: str) -> bool:
        return grant is not None and grant.holds(bucket, key)

    def check(
        self,
        method: str,
        bucket: str,
        key: str,
        query: dict[str, str],
        headers: Collection[str] = (),
    ) -> Decision:
        """May the job send ``method`` on ``s3://bucket/key`` with ``query`` and ``headers``?"""
        refuse = f"{method} s3://{bucket}/{key} is outside what this job may do ({self.describe()})"
        if not bucket:
            return Decision(False, "listing buckets is not allowed")
        if key and not _plain(key):
            return Decision(False, f"key {key!r} has '.', '..' or empty path segments")
        if "x-amz-copy-source" in {h.lower() for h in headers} or "x-amz-copy-source" in query:
            return Decision(False, "copying objects is not allowed")
        if method in READ_METHODS:
            unknown = set(query) - READ_QUERIES
            if unknown:
                return Decision(False, f"the query {', '.join(sorted(unknown))} is not allowed")
            if not key:
                return self._list(bucket, query, refuse)
            if self._in(self.dataset, bucket, key):
                return Decision(True, scan=True)
            if self._in(self.workspace, bucket, key):
                return Decision(True)
            return Decision(False, refuse)
        if method in ("PUT", "POST", "DELETE"):
            if not key:
                return Decision(False, f"{method} on a bucket is not allowed")
            if set(query) - WRITE_QUERIES:
                return Decision(False, f"{method} with this query is not allowed")
            if self.workspace is None or not self.workspace.holds(bucket, key):
                return Decision(False, refuse)
            if key[len(self.workspace.prefix) :] in SERVER_FILES:
                return Decision(False, f"{key.rsplit('/', 1)[-1]} is the server's; jobs read it")
            return Decision(True)
        return Decision(False, f"method {method} is not allowed")

    def _list(self, bucket: str, query: dict[str, str], refuse: str) -> Decision:
        grants = [g for g in (self.dataset, self.workspace) if g is not None]
        if "location" in query:
            known = bucket in {g.bucket for g in grants} and set(query) == {"location"}
            return Decision(known, "" if known else refuse)
        prefix = query.get("prefix", "")
        if prefix and not _plain(prefix.rstrip("/") or "x"):
            return Decision(False, f"prefix {prefix!r} has '.', '..' or empty path segments")
        for grant in grants:
            if bucket == grant.bucket and prefix.startswith(grant.prefix):
                return Decision(True)
        return Decision(False, f"listing s3://{bucket}/{prefix} is outside {self.describe()}")


def _plain(key: str) -> bool:
    """No '.', '..' or empty segments (a trailing '/' marks a folder and is fine)."""
    segments = key[:-1].split("/") if key.endswith("/") else key.split("/")
    return all(s not in ("", ".", "..") for s in segments)
