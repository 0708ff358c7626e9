"""Code bundles: a user's analysis code, packed as a .tar.gz and unpacked safely."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path, PurePosixPath

from insitu.errors import InvalidInput

_SKIP_DIRS = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ipynb_checkpoints"}


def pack(directory: Path) -> bytes:
    """Pack a directory of code into a gzipped tar, skipping caches and VCS folders."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"code directory {directory} does not exist or is not a directory")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory)
            if any(part in _SKIP_DIRS for part in relative.parts) or path.suffix == ".pyc":
                continue
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tar.add(path, arcname=relative.as_posix(), recursive=False)
    return buffer.getvalue()


def digest(data: bytes) -> str:
    """SHA-256 of a bundle, its identity and provenance."""
    return hashlib.sha256(data).hexdigest()


def check(data: bytes, *, max_bytes: int, max_unpacked_bytes: int) -> list[str]:
    """Check a bundle is a safe, size-capped tar.gz; return its member names."""
    if len(data) > max_bytes:
        raise InvalidInput(
            f"code bundle is {len(data):,} bytes, over the limit of {max_bytes:,}; "
            "upload only your code (data belongs in a dataset)"
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput(f"code bundle is not a readable .tar.gz archive: {exc}") from None
    unpacked = 0
    for member in members:
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
        unpacked += member.size
    if unpacked > max_unpacked_bytes:
        raise InvalidInput(
            f"code bundle unpacks to {unpacked:,} bytes, over the limit of {max_unpacked_bytes:,}"
        )
    return [m.name for m in members]


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
