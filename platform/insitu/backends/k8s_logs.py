"""Pods' logs, read from the Kubernetes API a piece at a time.

A running job's runner log is followed by :class:`LogTail`: each read asks only for the
lines since the last one it has (``sinceTime`` with timestamps), never the whole log
again. Kubernetes' ``sinceTime`` counts whole seconds, so the lines of the last second are
asked for again and the ones already kept are dropped by their exact timestamps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

TRUNCATED = b"\n[insitu: the log is longer than %d bytes; the rest is not kept]\n"


def pod_log(
    api_client: Any,
    namespace: str,
    pod: str,
    *,
    container: str | None = None,
    since_time: str | None = None,
    timestamps: bool = False,
    limit_bytes: int | None = None,
    tail_lines: int | None = None,
    previous: bool = False,
) -> bytes:
    """A pod's log with every option the API server takes (the official client's
    ``read_namespaced_pod_log`` has no ``sinceTime``)."""
    query: list[tuple[str, str]] = []
    for name, value in (
        ("container", container),
        ("sinceTime", since_time),
        ("timestamps", "true" if timestamps else None),
        ("limitBytes", limit_bytes),
        ("tailLines", tail_lines),
        ("previous", "true" if previous else None),
    ):
        if value is not None:
            query.append((name, str(value)))
    response = api_client.call_api(
        f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
        "GET",
        query_params=query,
        header_params={"Accept": "text/plain"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    return bytes(response.data)


def _second(instant: str) -> str:
    """An instant cut to its second, as ``sinceTime`` takes it."""
    return f"{instant.split('.')[0]}Z"


def _instant(stamp: str) -> str:
    """A log line's RFC 3339 timestamp in a form that sorts as time does (the kubelet drops
    trailing zeros of the fraction, so "…00.12Z" is later than "…00.119Z")."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{head}.{fraction.ljust(9, '0')}"


class LogTail:
    """The log of one container as read so far; :meth:`refresh` adds what is new."""

    def __init__(self, fetch: Callable[[str | None], bytes], max_bytes: int) -> None:
        """``fetch(since)`` returns the timestamped log from ``since`` (or all of it)."""
        self._fetch = fetch
        self.max_bytes = max_bytes
        self.data = bytearray()
        self._last: str | None = None  # timestamp of the last line kept
        self._at_last = 0  # how many kept lines carry exactly that timestamp
        self.full = False
        self._lock = threading.Lock()

    def refresh(self, final: bool = False) -> None:
        """Fetch and keep the lines written since the last refresh; ``final``: the
        container has ended, so a last line without its newline is whole too."""
        with self._lock:
            if self.full:
                return
            text = self._fetch(_second(self._last) if self._last else None)
            seen_at_last = 0
            for line in text.splitlines(keepends=True):
                if not line.endswith(b"\n") and not final:  # still being written: wait
                    break
                stamp, _, content = line.partition(b" ")
                when = _instant(stamp.decode(errors="replace"))
                if self._last is not None:
                    if when < self._last:
                        continue
                    if when == self._last:
                        seen_at_last += 1
                        if seen_at_last <= self._at_last:
                            continue
                if when == self._last:
                    self._at_last += 1
                else:
                    self._last, self._at_last = when, 1
                self._keep(content)

    def _keep(self, content: bytes) -> None:
        room = self.max_bytes - len(self.data)
        if len(content) > room:
            self.data += content[: max(room, 0)] + TRUNCATED % self.max_bytes
            self.full = True
        else:
            self.data += content

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            return bytes(self.data[offset : offset + size])
