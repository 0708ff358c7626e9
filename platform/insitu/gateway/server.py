"""The gateway's HTTP side: take a job's S3 request, check it, sign it, forward it, count it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit
from xml.sax.saxutils import escape

from aiohttp import ClientSession, ClientTimeout, web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from yarl import URL

from insitu.gateway.policy import ADMIN_HEADER, ADMIN_PREFIX, Decision, Policy

log = logging.getLogger("insitu.gateway")
CHUNK = 256 * 1024
MAX_BODY = 128 << 20  # one PUT or part; s3fs and obstore send larger files in parts
FLUSH_INTERVAL = 0.25
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
SHUTDOWN_TIMEOUT = 2.0  # the job is over when the gateway is stopped: do not wait long
# Request headers passed on to the store; the rest (the job's own signature) is dropped.
FORWARD_REQUEST = (
    "Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since",
    "Content-Type", "Content-MD5", "Content-Disposition", "Cache-Control",
    "x-amz-checksum-crc32", "x-amz-checksum-crc32c", "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha1", "x-amz-checksum-sha256", "x-amz-sdk-checksum-algorithm",
)  # fmt: skip
FORWARD_RESPONSE = (
    "Content-Type", "Content-Length", "Content-Range", "ETag", "Last-Modified",
    "Accept-Ranges", "Content-Encoding", "x-amz-request-id", "x-amz-version-id",
)  # fmt: skip
# Writes after which the counts on disk must be exact: the job's progress and outcome.
FLUSH_BEFORE = ("status.json", "outcome.json")
SEAL_WAIT = 10.0  # seconds a seal waits for the requests already under way


@dataclass
class Counts:
    """What the gateway let through for one job, in bytes and requests."""

    scanned: int = 0  # bytes of the dataset read
    read: int = 0  # bytes read in all (dataset and workspace)
    written: int = 0  # bytes written to the workspace
    requests: int = 0
    refused: int = 0


@dataclass
class WriteLimits:
    """How much a job may write: distinct keys and bytes in all (results, reports, logs),
    and writes under its outputs prefix (``insitu.Output`` chunks, counted, not kept)."""

    max_keys: int = 10_000
    max_bytes: int = 4 << 30
    written: int = 0
    keys: set[str] = field(default_factory=set)
    outputs_prefix: str | None = None
    max_output_writes: int = 0
    output_writes: int = 0

    def admit(self, key: str, length: int) -> str:
        """Why a write of ``length`` bytes to ``key`` is refused, or '' if it may go."""
        if self.written + length > self.max_bytes:
            return f"the job has written {self.written} bytes; at most {self.max_bytes} allowed"
        if self.outputs_prefix and key.startswith(self.outputs_prefix):
            if self.output_writes >= self.max_output_writes:
                return (
                    f"the job's outputs took {self.output_writes} writes; at most "
                    f"{self.max_output_writes} objects allowed (write larger chunks)"
                )
            self.output_writes += 1
            return ""
        if key not in self.keys:
            if len(self.keys) >= self.max_keys:
                return f"the job has written {len(self.keys)} objects; at most {self.max_keys}"
            self.keys.add(key)
        return ""


@dataclass(frozen=True)
class Upstream:
    """The real store: its endpoint and region."""

    endpoint: str  # e.g. http://127.0.0.1:8333 or https://s3.eu-west-1.amazonaws.com
    region: str

    def url(self, bucket: str, key: str, query: dict[str, str]) -> str:
        """Path-style URL of ``bucket/key`` with the key encoded once, never normalised."""
        base = self.endpoint.rstrip("/")
        path = f"/{quote(bucket, safe='')}/{quote(key, safe='/~')}" if key else f"/{bucket}"
        text = urlencode(sorted(query.items()), quote_via=quote, safe="~")
        return f"{base}{path}{'?' + text if text else ''}"


def s3_error(status: int, code: str, message: str) -> web.Response:
    """An S3-style error document, which every S3 client shows to its user."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def _aws_chunked(request: web.Request) -> bool:
    encoding = request.headers.get("Content-Encoding", "")
    sha = request.headers.get("x-amz-content-sha256", "")
    return "aws-chunked" in encoding or sha.startswith("STREAMING-")


def decode_aws_chunked(body: bytes, limit: int = MAX_BODY) -> bytes:
    """The payload of an ``aws-chunked`` body (chunks of ``hex-size[;ext]\\r\\n data\\r\\n``).

    The gateway signs the payload itself, so the job's chunk signatures and trailers go.
    Anything malformed is refused; the payload never grows past ``limit``.
    """
    out = bytearray()
    position = 0
    while True:
        end = body.find(b"\r\n", position)
        if end < 0:
            raise ValueError("a chunk header is cut short")
        size_text = body[position:end].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise ValueError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        position = end + 2
        if size == 0:
            return bytes(out)
        if (
            position + size + 2 > len(body)
            or body[position + size : position + size + 2] != b"\r\n"
        ):
            raise ValueError("a chunk is cut short")
        out += body[position : position + size]
        if len(out) > limit:
            raise ValueError(f"the payload is over {limit} bytes")
        position += size + 2


class Gateway:
    """One job's gateway: an aiohttp application over :class:`Policy` and the store."""

    def __init__(
        self,
        policy: Policy,
        upstream: Upstream,
        credentials: Callable[[], Credentials],
        counts_path: Path | None = None,
        limits: WriteLimits | None = None,
        admin_token: str | None = None,
    ) -> None:
        self.policy, self.upstream, self.credentials = policy, upstream, credentials
        self.counts_path = counts_path
        self.limits = limits or WriteLimits()
        self.admin_token = admin_token
        self.counts = Counts()
        self.sealed = False
        self._active = 0
        self._session: ClientSession | None = None
        self._dirty = False

    # -- the counts, on the server's disk -------------------------------------------------

    def flush(self) -> None:
        """Write the counts where the server reads them (atomically)."""
        if self.counts_path is None:
            return
        tmp = self.counts_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**asdict(self.counts), "updated_at": time.time()}))
        os.replace(tmp, self.counts_path)
        self._dirty = False

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if self._dirty:
                self.flush()

    # -- requests -------------------------------------------------------------------------

    def _target(self, request: web.Request) -> tuple[str, str]:
        """(bucket, key) of a path-style or virtual-hosted-style request."""
        path = unquote(request.raw_path.split("?", 1)[0]).lstrip("/")
        host = (request.host or "").rsplit(":", 1)[0]
        store = urlsplit(self.upstream.endpoint).hostname or ""
        if store and host.endswith("." + store):
            return host[: -len(store) - 1], path
        bucket, _, key = path.partition("/")
        return bucket, key

    # -- the server's endpoints: counts and seal (where the server cannot read a file) ----

    def _admitted(self, request: web.Request) -> bool:
        given = request.headers.get(ADMIN_HEADER, "")
        return bool(self.admin_token) and hmac.compare_digest(given, self.admin_token or "")

    async def counts_view(self, request: web.Request) -> web.Response:
        """The counts so far, for the server only."""
        if not self._admitted(request):
            return s3_error(403, "AccessDenied", "insitu's store gateway: not for jobs")
        return web.json_response(asdict(self.counts))

    async def seal_view(self, request: web.Request) -> web.Response:
        """End the job's access: refuse from now on, let what is under way finish, count."""
        if not self._admitted(request):
            return s3_error(403, "AccessDenied", "insitu's store gateway: not for jobs")
        self.sealed = True
        deadline = time.monotonic() + SEAL_WAIT
        while self._active and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        self.flush()
        return web.json_response({**asdict(self.counts), "sealed": True})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.sealed:
            self.counts.refused += 1
            return s3_error(403, "AccessDenied", "insitu's store gateway: the job is over")
        self._active += 1
        try:
            return await self._handle(request)
        finally:
            self._active -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        bucket, key = self._target(request)
        query = {k: v for k, v in request.query.items()}
        self.counts.requests += 1
        decision = self.policy.check(request.method, bucket, key, query, request.headers.keys())
        if not decision.allowed:
            self.counts.refused += 1
            self._dirty = True
            log.warning("refused %s s3://%s/%s: %s", request.method, bucket, key, decision.reason)
            return s3_error(403, "AccessDenied", f"insitu's store gateway: {decision.reason}")
        body = b""
        if request.method in ("PUT", "POST"):
            if (request.content_length or 0) > MAX_BODY:
                return s3_error(400, "EntityTooLarge", f"at most {MAX_BODY} bytes per request")
            refused = self.limits.admit(key, request.content_length or 0)
            if refused:
                self.counts.refused += 1
                return s3_error(403, "AccessDenied", f"insitu's store gateway: {refused}")
            try:
                body = await request.read()  # whole, up to the app's client_max_size
            except web.HTTPRequestEntityTooLarge:
                return s3_error(400, "EntityTooLarge", f"at most {MAX_BODY} bytes per request")
            if _aws_chunked(request):
                try:
                    body = decode_aws_chunked(body)
                except ValueError as exc:
                    return s3_error(400, "IncompleteBody", f"insitu's store gateway: {exc}")
            self.counts.written += len(body)
            self.limits.written += len(body)
            if key.rsplit("/", 1)[-1] in FLUSH_BEFORE:
                self.flush()
        return await self._forward(request, bucket, key, query, body, decision)

    def _signed(self, method: str, url: str, body: bytes, request: web.Request) -> dict[str, str]:
        headers = {h: request.headers[h] for h in FORWARD_REQUEST if h in request.headers}
        aws = AWSRequest(method=method, url=url, data=body, headers=headers)
        S3SigV4Auth(self.credentials(), "s3", self.upstream.region).add_auth(aws)
        return {k: str(v) for k, v in aws.headers.items()}

    async def _forward(
        self,
        request: web.Request,
        bucket: str,
        key: str,
        query: dict[str, str],
        body: bytes,
        decision: Decision,
    ) -> web.StreamResponse:
        assert self._session is not None
        url = self.upstream.url(bucket, key, query)
        headers = self._signed(request.method, url, body, request)
        try:
            upstream = await self._session.request(
                request.method, URL(url, encoded=True), headers=headers, data=body or None
            )
        except Exception as exc:
            log.warning("store unreachable for %s %s: %s", request.method, url, exc)
            return s3_error(503, "ServiceUnavailable", f"insitu's store gateway: {exc}")
        async with upstream:
            response = web.StreamResponse(status=upstream.status)
            for name in FORWARD_RESPONSE:
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(CHUNK):
                    self.counts.read += len(chunk)
                    if decision.scan and upstream.status < 300:
                        self.counts.scanned += len(chunk)
                    self._dirty = True
                    await response.write(chunk)
            await response.write_eof()
            return response

    # -- lifetime -------------------------------------------------------------------------

    def app(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY)
        application.router.add_get(ADMIN_PREFIX + "counts", self.counts_view)
        application.router.add_post(ADMIN_PREFIX + "seal", self.seal_view)
        application.router.add_route("*", "/{tail:.*}", self.handle)
        application.on_startup.append(self._start)
        application.on_cleanup.append(self._stop)
        return application

    async def _start(self, _: web.Application) -> None:
        timeout = ClientTimeout(total=None, sock_connect=30, sock_read=120)
        self._session = ClientSession(timeout=timeout, auto_decompress=False)
        self._flush_task = asyncio.create_task(self._flusher())
        self.flush()

    async def _stop(self, _: web.Application) -> None:
        self._flush_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flush_task
        if self._session is not None:
            await self._session.close()
        self.flush()


async def serve(gateway: Gateway, listen: Any, ready: asyncio.Event | None = None) -> None:
    """Serve ``gateway`` on a relay address (``unix:PATH`` or ``tcp:HOST:PORT``) until cancelled."""
    runner = web.AppRunner(gateway.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site: web.BaseSite
    if listen.kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen.path)
        site = web.UnixSite(runner, listen.path)
    else:
        site = web.TCPSite(runner, listen.host, listen.port, reuse_address=True)
    await site.start()
    if listen.kind == "unix":
        os.chmod(listen.path, 0o666)  # the job's non-root user connects to it
    log.info("store gateway for %s on %s", gateway.policy.describe(), listen)
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()  # flushes the counts a last time
