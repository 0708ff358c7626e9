"""A "lab" behind an emulated wide-area link to the "data centre" (this machine's root namespace).

The lab is a network namespace joined to the root namespace by a veth pair whose /30 exists
only on that pair. The link's rate is shaped with ``tc tbf`` on both ends. Its delay would
be ``netem``'s job, but this kernel has no netem (nor fq, fq_codel or cake), so the delay is
added in user space instead: the lab reaches each data-centre service only through a
forwarder listening on the root-side veth address, which holds every piece of data for the
one-way delay in each direction, in order, without limiting throughput. A new connection's
first bytes also wait one round trip, as the TCP handshake would over a real link.

What this does not emulate: TCP's own view of the path. The lab's TCP sees a short,
rate-limited hop, so its slow start and congestion window are not those of a 20 ms path;
bulk transfers reach the link rate sooner than over a real link (which favours downloads).

Run as a script, this module is the forwarder: ``python netlab.py forward --listen ADDR
--to HOST:PORT [--to ...] --delay SECONDS``; it prints the ports it listens on as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

SUBNET = ipaddress.IPv4Network("10.213.7.0/24")  # /30s are carved from here, veth pairs only
CHUNK = 64 * 1024
QUEUE_LIMIT = 4 << 20  # bytes held per direction; >> rate x delay, so never the bottleneck


# -- the namespace, the veth pair and tbf ---------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """A live lab: where it is, and the forwarder port on ``host_address`` per service."""

    namespace: str
    host_device: str
    lab_device: str
    host_address: str
    lab_address: str
    rate_mbit: float
    delay: float
    ports: dict[str, int] = field(default_factory=dict)

    def url(self, service: str) -> str:
        """``http://`` URL under which the lab reaches ``service`` through the link."""
        return f"http://{self.host_address}:{self.ports[service]}"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the lab's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def counters(self) -> dict[str, int]:
        """Bytes received and sent so far by the lab's end of the link (layer 2)."""
        stats = f"/sys/class/net/{self.lab_device}/statistics"
        out = _ip("netns", "exec", self.namespace, "cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes")
        rx, tx = (int(v) for v in out.split())
        return {"rx_bytes": rx, "tx_bytes": tx}


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _ip(*args: str) -> str:
    return _run(["ip", *args])


def unavailable() -> str | None:
    """Why a lab cannot be built here (not root, no ``ip``/``tc``, no netns), or None."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command (iproute2) is not installed"
    probe = f"insitu-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return str(exc)
    _ip("netns", "del", probe)
    return None


def names(tag: str | int | None = None) -> tuple[str, str, str]:
    """Namespace and veth names (host end, lab end) for one lab; unique per process."""
    tag = os.getpid() if tag is None else tag
    return f"insitu-lab-{tag}", f"isl{tag}h", f"isl{tag}l"  # veth names: at most 15 bytes


def remove_stale() -> list[str]:
    """Remove labs (``insitu-lab-PID``) left by benchmark processes that died; return them."""
    removed = []
    for namespace in _ip("netns", "list").split():
        tag = namespace.removeprefix("insitu-lab-")
        if tag != namespace and tag.isdigit() and not Path(f"/proc/{tag}").exists():
            _destroy(namespace, names(tag)[1])
            removed.append(namespace)
    return removed


def free_subnet(start: int = 0) -> ipaddress.IPv4Network:
    """A /30 of :data:`SUBNET` that no interface or route of the root namespace touches."""
    used = [
        ipaddress.ip_interface(word).network
        for line in _ip("-4", "-o", "addr", "show").splitlines()
        for word in line.split()[3:4]
    ]
    for line in _ip("-4", "route", "show").splitlines():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(line.split()[0]))
    candidates = list(SUBNET.subnets(new_prefix=30))
    for i in range(len(candidates)):
        candidate = candidates[(start + i) % len(candidates)]
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise RuntimeError(f"no free /30 left in {SUBNET}")


def _set_ipv6_off(namespace: str | None, device: str) -> None:
    """No IPv6 on the pair: no router solicitations or other chatter over the link."""
    setting = f"net.ipv6.conf.{device}.disable_ipv6=1"
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    with contextlib.suppress(RuntimeError):  # a kernel without IPv6
        _run([*prefix, "sysctl", "-q", "-w", setting])


def _shape(namespace: str | None, device: str, rate_mbit: float) -> None:
    """Token-bucket rate limit on a device's egress: ~1 ms of burst, ~20 ms of queue."""
    rate = rate_mbit * 1e6 / 8  # bytes per second
    burst = max(int(rate / 1000), 16 * 1024)
    limit = max(int(rate * 0.020), 4 * burst)
    netns = ["-n", namespace] if namespace else []
    shape = ["rate", f"{int(rate * 8)}bit", "burst", str(burst), "limit", str(limit)]
    _run(["tc", *netns, "qdisc", "replace", "dev", device, "root", "tbf", *shape])


def _create(lab: Lab, prefix: int) -> None:
    _ip("netns", "add", lab.namespace)
    _ip("link", "add", lab.host_device, "type", "veth", "peer", "name", lab.lab_device)
    _ip("link", "set", lab.lab_device, "netns", lab.namespace)
    for namespace, device in ((None, lab.host_device), (lab.namespace, lab.lab_device)):
        _set_ipv6_off(namespace, device)
    _ip("addr", "add", f"{lab.host_address}/{prefix}", "dev", lab.host_device)
    _ip("link", "set", lab.host_device, "up")
    _ip("-n", lab.namespace, "addr", "add", f"{lab.lab_address}/{prefix}", "dev", lab.lab_device)
    _ip("-n", lab.namespace, "link", "set", lab.lab_device, "up")
    _ip("-n", lab.namespace, "link", "set", "lo", "up")
    _shape(None, lab.host_device, lab.rate_mbit)  # data centre -> lab
    _shape(lab.namespace, lab.lab_device, lab.rate_mbit)  # lab -> data centre


def _destroy(namespace: str, host_device: str) -> list[str]:
    """Remove the namespace (with its end of the pair) and the host end; return what failed."""
    problems = []
    if namespace in _ip("netns", "list").split():
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        for pid in pids.stdout.split():  # only ever our own lab processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            _ip("netns", "del", namespace)
        except RuntimeError as exc:
            problems.append(str(exc))
    for _ in range(50):  # the host end goes with the namespace, a moment later
        if not Path(f"/sys/class/net/{host_device}").exists():
            return problems
        time.sleep(0.02)
    try:
        _ip("link", "del", host_device)  # also removes its peer and both qdiscs
    except RuntimeError as exc:
        if Path(f"/sys/class/net/{host_device}").exists():
            problems.append(str(exc))
    return problems


def exists(namespace: str, host_device: str) -> bool:
    """Whether anything of a lab is left: its namespace or its host-side device."""
    listed = _ip("netns", "list").split()
    return namespace in listed or Path(f"/sys/class/net/{host_device}").exists()


@contextmanager
def lab_link(
    services: dict[str, int],
    *,
    rate_mbit: float = 100.0,
    rtt: float = 0.020,
    tag: str | int | None = None,
) -> Iterator[Lab]:
    """A lab namespace reaching ``services`` (name -> port on 127.0.0.1) over the link.

    Everything (forwarder, lab processes, namespace, veth pair, qdiscs) is removed on
    exit, also after errors; leftovers of dead runs, or of one with this tag, go first.
    """
    namespace, host_device, lab_device = names(tag)
    remove_stale()
    _destroy(namespace, host_device)
    subnet = free_subnet(start=os.getpid() % 64)
    host_address, lab_address = (str(a) for a in subnet.hosts())
    lab = Lab(namespace, host_device, lab_device, host_address, lab_address, rate_mbit, rtt / 2)
    forwarder: subprocess.Popen[str] | None = None
    try:
        _create(lab, subnet.prefixlen)
        forwarder, ports = start_forwarder(host_address, list(services.values()), rtt / 2)
        yield replace(lab, ports=dict(zip(services, ports, strict=True)))
    finally:
        if forwarder is not None:
            _stop(forwarder)
        problems = _destroy(namespace, host_device)
        if problems:
            raise RuntimeError(f"lab {namespace} not fully removed: {'; '.join(problems)}")


# -- the delaying forwarder ---------------------------------------------------------------------


def start_forwarder(
    listen: str, targets: list[int], delay: float, timeout: float = 15.0
) -> tuple[subprocess.Popen[str], list[int]]:
    """Start this module's forwarder process; return it and its ports, one per target."""
    argv = [sys.executable, __file__, "forward", "--listen", listen, "--delay", str(delay)]
    for port in targets:
        argv += ["--to", f"127.0.0.1:{port}"]
    # its stdin stays open while we live: the forwarder exits at EOF if we die without stopping it
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        line = _readline(process, timeout)
        return process, [int(p) for p in json.loads(line)]
    except Exception:
        _stop(process)
        raise


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            pipe.close()


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"the forwarder did not start within {timeout} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"the forwarder exited with code {process.wait()}")
    return line


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, not_before: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk sent ``delay`` s after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    room = asyncio.Event()
    room.set()
    held = 0

    async def send() -> None:
        nonlocal held
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            held -= len(data)
            if held < QUEUE_LIMIT:
                room.set()
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            await room.wait()
            data = await reader.read(CHUNK)
            queue.put_nowait((max(loop.time() + delay, not_before), data))
            if not data:
                break
            held += len(data)
            if held >= QUEUE_LIMIT:
                room.clear()
        await sender
    finally:
        sender.cancel()


async def _connection(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    """One lab connection: its bytes wait one handshake round trip, then ``delay`` each way."""
    accepted = asyncio.get_running_loop().time()
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    pipes = [
        asyncio.create_task(_pipe(client_reader, upstream_writer, delay, accepted + 3 * delay)),
        asyncio.create_task(_pipe(upstream_reader, client_writer, delay, 0.0)),
    ]
    try:
        done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        if any(task.exception() for task in done):  # a reset: drop both sides at once
            for writer in (client_writer, upstream_writer):
                writer.transport.abort()
        await asyncio.gather(*pipes, return_exceptions=True)
    finally:
        for writer in (client_writer, upstream_writer):
            writer.close()


async def forward(listen: str, targets: list[tuple[str, int]], delay: float) -> None:
    """Listen on ``listen`` (one free port per target) and forward with the delay, forever."""
    servers = []
    for target in targets:

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, target: tuple[str, int] = target
        ) -> None:
            with contextlib.suppress(asyncio.CancelledError):  # open at shutdown: just drop
                await _connection(r, w, target, delay)

        servers.append(await asyncio.start_server(handle, listen, 0))
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # EOF (or anything) on stdin: the parent left
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a TCP forwarder that delays data each way")
    parser.add_argument("command", choices=["forward"])
    parser.add_argument("--listen", required=True, help="address to listen on")
    parser.add_argument("--to", action="append", required=True, help="HOST:PORT, repeatable")
    parser.add_argument("--delay", type=float, required=True, help="one-way delay in seconds")
    args = parser.parse_args(argv)
    targets = [(host, int(port)) for host, port in (t.rsplit(":", 1) for t in args.to)]
    asyncio.run(forward(args.listen, targets, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
