"""Code bundles: a user's analysis code, packed as a .tar.gz and unpacked safely."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from insitu.errors import InvalidInput

_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}


def pack(directory: Path) -> bytes:
    """Pack a directory of code into a gzipped tar, skipping caches and VCS folders.

    The same files give the same bytes (the gzip header carries no time), so packing
    unchanged code again gives the same digest.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"code directory {directory} does not exist or is not a directory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if any(part in _SKIP_DIRS for part in relative.parts) or path.suffix == ".pyc":
                continue
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tar.add(path, arcname=relative.as_posix(), recursive=False)
    return gzip.compress(buffer.getvalue(), mtime=0)


def digest(data: bytes) -> str:
    """SHA-256 of a bundle, its identity and provenance."""
    return hashlib.sha256(data).hexdigest()


#: Most files and folders in one bundle, and the longest member name (bytes).
MAX_MEMBERS = 10_000
MAX_NAME_BYTES = 1024


class _CountingReader(io.RawIOBase):
    """A decompressed stream that refuses to yield more than ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._source = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self.limit, self.count = limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = self._source.readinto(buffer)
        self.count += size
        if self.count > self.limit:
            raise InvalidInput(
                f"code bundle unpacks to more than {self.limit:,} bytes (file headers "
                "included); upload only your code (data belongs in a dataset)"
            )
        return size


def check(
    data: bytes, *, max_bytes: int, max_unpacked_bytes: int, max_members: int = MAX_MEMBERS
) -> list[str]:
    """Check a bundle is a safe, size-capped tar.gz; return its member names.

    The archive is read as a stream and refused as soon as it passes a limit (compressed
    size, unpacked bytes with headers, number of members, name length), so a bundle of
    millions of empty entries costs no more than the limits allow.
    """
    if len(data) > max_bytes:
        raise InvalidInput(
            f"code bundle is {len(data):,} bytes, over the limit of {max_bytes:,}; "
            "upload only your code (data belongs in a dataset)"
        )
    names: list[str] = []
    try:
        with tarfile.open(fileobj=_CountingReader(data, max_unpacked_bytes), mode="r|") as tar:
            for member in tar:
                _check_member(member)
                names.append(member.name)
                if len(names) > max_members:
                    raise InvalidInput(
                        f"code bundle has more than {max_members:,} files and folders; "
                        "upload only your code"
                    )
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(f"code bundle is not a readable .tar.gz archive: {exc}") from None
    return names


def _check_member(member: tarfile.TarInfo) -> None:
    if len(member.name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise InvalidInput(
            f"code bundle member {member.name[:60]!r}... has a name over "
            f"{MAX_NAME_BYTES} bytes; use shorter paths"
        )
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise InvalidInput(
            f"code bundle member {member.name!r} points outside the bundle; "
            "use relative paths without '..'"
        )
    if not (member.isfile() or member.isdir()):
        raise InvalidInput(
            f"code bundle member {member.name!r} is a link or device; "
            "only regular files and folders are allowed"
        )


def extract(data: bytes, target: Path, *, max_unpacked_bytes: int = 1 << 30) -> Path:
    """Check and unpack a bundle into ``target``; return ``target``."""
    check(data, max_bytes=len(data), max_unpacked_bytes=max_unpacked_bytes)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
        else:  # Python before 3.11.4 (e.g. Debian 12's 3.11.2): check() refused links already
            tar.extractall(target)
    return target
