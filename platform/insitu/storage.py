"""Open Zarr stores and job workspaces by URL (``file://``, ``s3://`` or a plain path).

``s3://`` stores are read through obstore (zarr's ``ObjectStore``), which scanned faster
than s3fs in ``docs/benchmarks.md``. Options are given s3fs-style everywhere; those obstore
cannot honour (an AWS profile, botocore settings) fall back to zarr's ``FsspecStore``.
Runtime-safe: imports only zarr, fsspec and obstore.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import fsspec
import zarr
import zarr.storage
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype

from insitu.errors import InvalidInput, StoreUnreachable

try:
    import obstore
    from obstore.store import S3Store
except ImportError:  # without obstore, s3:// is read through s3fs
    obstore = None  # type: ignore[assignment]

SUPPORTED_SCHEMES = ("file", "s3")

# s3fs option -> obstore S3 config key; options outside these tables go to s3fs.
_S3FS_OPTIONS = {
    "key": "access_key_id",
    "secret": "secret_access_key",
    "token": "session_token",
    "anon": "skip_signature",
    "requester_pays": "request_payer",
    "endpoint_url": "endpoint",
}
_CLIENT_KWARGS = {
    "endpoint_url": "endpoint",
    "region_name": "region",
    "aws_access_key_id": "access_key_id",
    "aws_secret_access_key": "secret_access_key",
    "aws_session_token": "session_token",
}
# How long a job's reads keep retrying a store that does not answer, throttles (503
# SlowDown) or fails with a server error, before the job fails naming the store: long
# enough to ride out a store's restart. The server's own reads (a dataset being
# registered, someone waiting) give up sooner.
JOB_RETRY_TIMEOUT = 60.0
RETRY_TIMEOUT_ENV = "INSITU_STORE_RETRY_TIMEOUT"
QUICK_RETRY_TIMEOUT = 3.0
# botocore's retries for s3fs (workspaces, and stores obstore cannot open): as many
# attempts as botocore's default, the adaptive mode also slowing down when throttled.
S3FS_RETRIES = {"max_attempts": 5, "mode": "adaptive"}


def job_retry_timeout() -> float:
    """Seconds a job's read retries a store: ``INSITU_STORE_RETRY_TIMEOUT``, else 60."""
    try:
        value = float(os.environ.get(RETRY_TIMEOUT_ENV) or JOB_RETRY_TIMEOUT)
    except ValueError:
        return JOB_RETRY_TIMEOUT
    return value if value > 0 else JOB_RETRY_TIMEOUT


def _retry_config(timeout: float) -> dict[str, Any]:
    """obstore's retries: backoff from 0.1 s doubling up to 4 s, for ``timeout`` seconds.

    The number of retries is left high so that the time, not the count, decides: with a
    count of 5 (and obstore's jittered backoff) a store down for one second failed jobs.
    """
    return {
        "max_retries": 1000,
        "retry_timeout": timedelta(seconds=timeout),
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=4),
            "base": 2,
        },
    }


def _with_s3fs_retries(url: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """s3fs ``options`` with botocore's retries set, unless the caller set them."""
    options = dict(options or {})
    if not url.startswith("s3://"):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("retries", dict(S3FS_RETRIES))
    return {**options, "config_kwargs": config}


def through_gateway(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` pointed at the job's store gateway, where the backend set one.

    A job behind a gateway (``INSITU_STORE_ENDPOINT``) speaks plain HTTP to it and holds
    only a placeholder key; the gateway signs what it allows on the trusted side.
    """
    endpoint = os.environ.get("INSITU_STORE_ENDPOINT")
    if not endpoint or not options:
        return options
    return {
        **options,
        "client_kwargs": {**options.get("client_kwargs", {}), "endpoint_url": endpoint},
    }


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


def obstore_config(storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """obstore's S3 config for s3fs-style options, or None if only s3fs can honour them.

    Credentials missing from the options come from the environment (``AWS_*``, web
    identity, instance metadata), as with s3fs; an AWS profile or shared credentials
    file without keys in the environment is left to s3fs, which reads them.
    """
    options = dict(storage_options or {})
    client_kwargs = dict(options.pop("client_kwargs", None) or {})
    if set(options) - set(_S3FS_OPTIONS) or set(client_kwargs) - set(_CLIENT_KWARGS):
        return None
    config = {_S3FS_OPTIONS[k]: v for k, v in options.items() if v is not None}
    config |= {_CLIENT_KWARGS[k]: v for k, v in client_kwargs.items() if v is not None}
    if "access_key_id" not in config and not config.get("skip_signature") and _profile_only():
        return None
    return config


def with_environment_key(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` with this process' AWS key written in, for an ``s3://`` URL.

    A store opened here is pickled to the job's workers; options that name the key carry
    it along, so workers that were started without it in their environment (the local
    backend's shared warm pool) read with the job's key rather than none.
    """
    options = dict(storage_options or {})
    if not normalize_url(url).startswith("s3://") or options.get("key") or options.get("anon"):
        return options
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options |= {"key": key, "secret": secret}
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["token"] = os.environ["AWS_SESSION_TOKEN"]
    return options


def _profile_only() -> bool:
    """True when credentials can only come from an AWS profile, which obstore cannot read."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return False
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    return bool(os.environ.get("AWS_PROFILE")) or Path(shared).expanduser().exists()


def _endpoint(config: dict[str, Any]) -> str:
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT")
    env = next((os.environ[n] for n in names if os.environ.get(n)), "")
    return str(config.get("endpoint") or env)


def open_object_store(
    url: str,
    config: dict[str, Any],
    *,
    read_only: bool = True,
    retry_timeout: float = QUICK_RETRY_TIMEOUT,
) -> Store:
    """zarr's ObjectStore over an obstore S3Store for an ``s3://`` URL."""
    if obstore is None:
        raise StoreUnreachable(f"cannot open {url}: obstore is not installed")
    parsed = urlparse(normalize_url(url))
    try:
        s3 = S3Store(
            parsed.netloc,
            prefix=parsed.path.strip("/") or None,
            config=config,  # type: ignore[arg-type]
            client_options={"allow_http": _endpoint(config).startswith("http://")},
            retry_config=_retry_config(retry_timeout),  # type: ignore[arg-type]
        )
    except Exception as exc:  # a malformed endpoint, region or key
        raise StoreUnreachable(f"cannot open the store at {url}: {_reason(exc)}") from exc
    return NamedObjectStore(s3, url=url, read_only=read_only)


def open_fsspec_store(
    url: str, storage_options: dict[str, Any] | None = None, *, read_only: bool = True
) -> Store:
    """zarr's FsspecStore (s3fs for ``s3://``); the fallback reader."""
    try:
        return zarr.storage.FsspecStore.from_url(
            url, storage_options=_with_s3fs_retries(url, storage_options), read_only=read_only
        )
    except Exception as exc:  # fsspec raises many kinds; say which URL failed
        raise StoreUnreachable(f"cannot open the store at {url}: {exc}") from exc


def open_store(
    url: str,
    *,
    read_only: bool = True,
    storage_options: dict[str, Any] | None = None,
    retry_timeout: float = QUICK_RETRY_TIMEOUT,
) -> Store:
    """A zarr store for ``url``: LocalStore for files, obstore for S3, else fsspec.

    Reads of an S3 store that does not answer or throttles are retried with backoff for
    ``retry_timeout`` seconds; jobs pass :func:`job_retry_timeout`.
    """
    url = normalize_url(url)
    if url.startswith("file://"):
        path = local_path(url)
        if read_only and not path.exists():
            raise StoreUnreachable(f"no Zarr store at {url}: the path {path} does not exist")
        return zarr.storage.LocalStore(path, read_only=read_only)
    config = obstore_config(storage_options) if url.startswith("s3://") else None
    if config is not None and obstore is not None:
        return open_object_store(url, config, read_only=read_only, retry_timeout=retry_timeout)
    return open_fsspec_store(url, storage_options, read_only=read_only)


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """An fsspec filesystem and the path inside it, for workspace files."""
    url = normalize_url(url)
    fs, path = fsspec.core.url_to_fs(url, **_with_s3fs_retries(url, storage_options))
    return fs, path


# obstore's words for a request it gave up on after retrying.
_RETRIED = re.compile(
    r"Error performing \w+ (?P<uri>\S+) in (?P<elapsed>\S+), after (?P<retries>\d+) retries"
    r"[^\n]*? - (?P<inner>[^\n]*)"
)
_DURATION = re.compile(r"^(?P<value>[\d.]+)(?P<unit>ns|µs|us|ms|s)$")
_UNIT_SECONDS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(duration: str) -> str:
    """A Rust duration (``4.13065478s``, ``659.43ms``) as ``4.1 s``."""
    match = _DURATION.match(duration)
    if not match:
        return duration
    return f"{float(match['value']) * _UNIT_SECONDS[match['unit']]:.1f} s"


def _reason(exc: Exception) -> str:
    """obstore's error in one line: the S3 error code and message when there is one, and
    which store gave up after how many retries when obstore retried."""
    text = str(exc).split("\n\nDebug source", 1)[0]
    code = re.search(r"<Code>(.*?)</Code>", text)
    message = re.search(r"<Message>(.*?)</Message>", text)
    retried = _RETRIED.search(text)
    if code:
        reason = f"{code[1]}: {message[1]}" if message else code[1]
    elif retried:
        reason = retried["inner"].strip()[:300]
    else:
        return text.splitlines()[0][:300] if text else type(exc).__name__
    if not retried:
        return reason
    uri = urlparse(retried["uri"])
    store = f"the object store at {uri.scheme}://{uri.netloc}"
    tries = f"{retried['retries']} retries over {_seconds(retried['elapsed'])}"
    if not code and "error sending request" in reason:
        return f"{store} did not answer (gave up after {tries})"
    return f"{reason} ({store}, after {tries})"


class NamedObjectStore(zarr.storage.ObjectStore):  # type: ignore[type-arg]
    """zarr's ObjectStore whose read errors are :class:`StoreUnreachable` naming the URL."""

    def __init__(self, store: Any, *, url: str, read_only: bool = True) -> None:
        super().__init__(store, read_only=read_only)
        self.url = url

    def with_read_only(self, read_only: bool = False) -> NamedObjectStore:
        return type(self)(self.store, url=self.url, read_only=read_only)

    def __str__(self) -> str:
        return self.url

    @contextlib.contextmanager
    def _naming(self, key: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            raise
        except obstore.exceptions.BaseError as exc:
            errors = obstore.exceptions
            denied = isinstance(exc, (errors.PermissionDeniedError, errors.UnauthenticatedError))
            hint = " (access denied; check the credentials)" if denied else ""
            where = f"{self.url}/{key}" if key else self.url
            raise StoreUnreachable(f"cannot read {where}{hint}: {_reason(exc)}") from exc

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        with self._naming(key):
            return await super().get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        with self._naming(""):
            return await super().get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        with self._naming(key):
            return await super().exists(key)

    async def getsize(self, key: str) -> int:
        with self._naming(key):
            return await super().getsize(key)

    async def _named(self, items: AsyncIterator[str], prefix: str) -> AsyncGenerator[str, None]:
        with self._naming(prefix):
            async for item in items:
                yield item

    def list(self) -> AsyncGenerator[str, None]:
        return self._named(super().list(), "")

    def list_prefix(self, prefix: str) -> AsyncGenerator[str, None]:
        return self._named(super().list_prefix(prefix), prefix)

    def list_dir(self, prefix: str) -> AsyncGenerator[str, None]:
        return self._named(super().list_dir(prefix), prefix)
