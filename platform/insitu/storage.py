"""Open Zarr stores and job workspaces by URL (``file://``, ``s3://`` or a plain path).

Runtime-safe: imports only zarr and fsspec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import fsspec
import zarr
import zarr.storage
from zarr.abc.store import Store

from insitu.errors import InvalidInput, StoreUnreachable

SUPPORTED_SCHEMES = ("file", "s3")


def normalize_url(url: str) -> str:
    """Return ``url`` with a scheme: plain paths become absolute ``file://`` URLs."""
    parsed = urlparse(url)
    if parsed.scheme == "":
        return Path(url).expanduser().resolve().as_uri()
    if parsed.scheme not in SUPPORTED_SCHEMES:
        raise InvalidInput(
            f"cannot open {url!r}: scheme {parsed.scheme!r} is not supported; "
            f"use one of {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}"
        )
    return url.rstrip("/")


def local_path(url: str) -> Path:
    """The filesystem path behind a ``file://`` URL."""
    parsed = urlparse(normalize_url(url))
    if parsed.scheme != "file":
        raise InvalidInput(f"{url!r} is not a local file URL")
    return Path(unquote(parsed.path))


def open_store(
    url: str, *, read_only: bool = True, storage_options: dict[str, Any] | None = None
) -> Store:
    """A zarr store for ``url``; local paths use zarr's LocalStore, the rest fsspec."""
    url = normalize_url(url)
    if url.startswith("file://"):
        path = local_path(url)
        if read_only and not path.exists():
            raise StoreUnreachable(f"no Zarr store at {url}: the path {path} does not exist")
        return zarr.storage.LocalStore(path, read_only=read_only)
    try:
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=storage_options or {}, read_only=read_only
        )
    except Exception as exc:  # fsspec raises many kinds; say which URL failed
        raise StoreUnreachable(f"cannot open the store at {url}: {exc}") from exc


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """An fsspec filesystem and the path inside it, for workspace files."""
    url = normalize_url(url)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path
