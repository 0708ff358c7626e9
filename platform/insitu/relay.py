"""A byte relay between two socket addresses: how a job with no network reaches its store.

The docker backend gives each job a network namespace with only a loopback interface.
Its one way out is a unix socket bind-mounted into the job: inside, a relay listens
on the store's TCP port on loopback and forwards to that socket; outside, a relay
listens on the socket and forwards to the store's real address. Nothing else can
leave. Addresses are ``tcp:HOST:PORT`` or ``unix:PATH``; standard library only, so it
runs in any analysis image that has the insitu runtime.

    python -m insitu.relay --listen tcp:127.0.0.1:8333 --connect unix:/run/insitu/store.sock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass

CHUNK = 256 * 1024
log = logging.getLogger("insitu.relay")


@dataclass(frozen=True)
class Address:
    """A TCP ``host:port`` or a unix socket path."""

    kind: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> Address:
        kind, _, rest = text.partition(":")
        if kind == "unix" and rest:
            return cls("unix", path=rest)
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            if host and port.isdigit():
                return cls("tcp", host=host.strip("[]"), port=int(port))
        raise ValueError(f"bad relay address {text!r}: use tcp:HOST:PORT or unix:PATH")

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _open(address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.kind == "unix":
        return await asyncio.open_unix_connection(address.path, limit=CHUNK)
    return await asyncio.open_connection(address.host, address.port, limit=CHUNK)


async def serve(listen: Address, connect: Address, ready: asyncio.Event | None = None) -> None:
    """Accept connections on ``listen`` and join each to a new connection to ``connect``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await _open(connect)
        except OSError as exc:
            log.warning("cannot reach %s: %s", connect, exc)
            writer.close()
            return
        try:
            await asyncio.gather(_pump(reader, upstream_writer), _pump(upstream_reader, writer))
        finally:
            for w in (writer, upstream_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    if listen.kind == "unix":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen.path)
        server = await asyncio.start_unix_server(handle, listen.path, limit=CHUNK)
        os.chmod(listen.path, 0o666)  # the job's non-root user connects to it
    else:
        server = await asyncio.start_server(
            handle, listen.host, listen.port, limit=CHUNK, reuse_address=True
        )
    log.info("relaying %s -> %s", listen, connect)
    if ready is not None:
        ready.set()
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m insitu.relay``."""
    parser = argparse.ArgumentParser(prog="python -m insitu.relay", description=__doc__)
    parser.add_argument("--listen", required=True, help="tcp:HOST:PORT or unix:PATH")
    parser.add_argument("--connect", required=True, help="tcp:HOST:PORT or unix:PATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay: %(message)s")
    try:
        listen, connect = Address.parse(args.listen), Address.parse(args.connect)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listen, connect))
    return 0


if __name__ == "__main__":
    sys.exit(main())
