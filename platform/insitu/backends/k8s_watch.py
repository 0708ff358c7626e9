"""What the cluster holds of insitu's jobs, kept current by watches instead of polls.

An :class:`Informer` lists one kind of object once and then follows a watch from the
list's resourceVersion, as Kubernetes controllers do: a watch that ends is resumed from
the last version seen, one the API server no longer remembers (410 Gone) is replaced by
a new list, and every ``resync_s`` the whole list is read again, so a missed event can
never leave the cache wrong for long. :class:`ClusterCache` keeps three of them: the
server's pods and DaskJobs (by its label) and the warning events of tenant namespaces,
from which the backend reads every job's state with no call of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300  # the API server ends a watch after this long; it is resumed
LIST_TIMEOUT = (10, 60)  # (connect, read) seconds of one list
RETRY_S, RETRY_MAX_S = 1.0, 30.0  # backoff after failed lists or watches: doubled up to max
Key = tuple[str, str]  # (namespace, name)


class Expired(Exception):
    """The API server no longer holds the resourceVersion a watch asked to start from."""


def _key(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace") or "", metadata.get("name") or ""


def _lines(response: Any) -> Iterator[bytes]:
    """The newline-delimited JSON of a streamed watch response."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


class Informer:
    """One kind's objects that match a selector, kept current by list and watch."""

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        keep: Callable[[dict[str, Any]], bool] = lambda _: True,
        resync_s: float = 300.0,
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._selectors = {
            k: v
            for k, v in (("label_selector", label_selector), ("field_selector", field_selector))
            if v
        }
        self._keep = keep
        self.resync_s = resync_s
        self._objects: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._response: Any = None
        self._stopping = threading.Event()  # the run's stop, once it runs
        self.lists = 0  # how many times the whole list was read (first, resyncs, after 410)
        #: since when lists and watches fail (None while they work)
        self.failing_since: float | None = None
        #: called (in the watch's thread) with each object a watch event brings; keep it quick
        self.on_change: Callable[[dict[str, Any]], object] | None = None

    # -- reading --------------------------------------------------------------------------

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def wait_synced(self, timeout: float) -> bool:
        """Whether the first list arrived within ``timeout`` seconds."""
        return self._synced.wait(timeout)

    # -- keeping --------------------------------------------------------------------------

    def _relist(self) -> str:
        """Replace the cache with a fresh list; return the list's resourceVersion."""
        response = self._list_call(
            **self._selectors, _preload_content=False, _request_timeout=LIST_TIMEOUT
        )
        listed = json.loads(response.data)
        objects = {_key(o): o for o in listed.get("items") or [] if self._keep(o)}
        with self._lock:
            self._objects = objects
            self.lists += 1
        self._synced.set()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _apply(self, event: dict[str, Any]) -> str | None:
        """Apply one watch event; return the resourceVersion it brings, if any."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(obj.get("message", "resourceVersion too old"))
            raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return str(version) if version else None
        key = _key(obj)
        with self._lock:
            if kind == "DELETED" or not self._keep(obj):
                self._objects.pop(key, None)
            else:
                self._objects[key] = obj
        if self.on_change is not None and kind != "DELETED" and self._keep(obj):
            try:
                self.on_change(obj)
            except Exception:  # the watch goes on whatever a listener does
                log.exception("a listener of the %s watch failed", self.name)
        return str(version) if version else None

    def _follow(self, version: str, seconds: float) -> str:
        """Follow a watch from ``version`` for up to ``seconds``; return the last version."""
        response = self._list_call(
            **self._selectors,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=max(int(seconds), 1),
            _preload_content=False,
            _request_timeout=(10, seconds + 30),
        )
        self._response = response
        try:
            if self._stopping.is_set():  # stopped while the watch was being opened
                return version
            for line in _lines(response):
                version = self._apply(json.loads(line)) or version
        finally:
            self._response = None
            with contextlib.suppress(Exception):
                response.release_conn()
        return version

    def run(self, stop: threading.Event) -> None:
        """List, then watch, until ``stop`` is set: resumed after a watch ends, listed again
        after a 410 and every ``resync_s``."""
        self._stopping = stop
        backoff = RETRY_S
        while not stop.is_set():
            try:
                version = self._relist()
                self.failing_since, backoff = None, RETRY_S
                resync_at = time.monotonic() + self.resync_s
                while not stop.is_set() and (left := resync_at - time.monotonic()) > 0:
                    version = self._follow(version, min(left, WATCH_TIMEOUT_S))
            except Expired as exc:
                log.info("watch on %s expired (%s); listing again", self.name, exc)
            except Exception as exc:
                if stop.is_set():
                    return
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                log.warning("watch on %s failed (%s); listing again in %.0f s", self.name,
                            exc, backoff)  # fmt: skip
                stop.wait(backoff)
                backoff = min(backoff * 2, RETRY_MAX_S)

    def interrupt(self) -> None:
        """End the current watch at once (the server is stopping)."""
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown() if hasattr(response, "shutdown") else response.close()


def about_job(events: list[dict[str, Any]], namespace: str, name: str) -> list[dict[str, Any]]:
    """The events about a job's objects: its DaskJob and DaskCluster (``name``) and every
    object the operator or Kubernetes made for them (``name-...``)."""
    found = []
    for event in events:
        involved = event.get("involvedObject") or {}
        other = str(involved.get("name") or "")
        ours = other == name or other.startswith(f"{name}-")
        if ours and involved.get("namespace") == namespace:
            found.append(event)
    return found


class ClusterCache:
    """insitu's pods and DaskJobs, and tenants' warning events, as the cluster has them."""

    def __init__(
        self,
        api_client: Any,
        *,
        server_label: str,
        namespace_prefix: str,
        daskjobs: tuple[str, str, str],
        resync_s: float = 300.0,
    ) -> None:
        from kubernetes import client

        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)

        prefix = re.sub(r"[^a-z0-9-]+", "-", namespace_prefix.lower())  # as namespaces have it

        def tenants(event: dict[str, Any]) -> bool:
            involved = event.get("involvedObject") or {}
            return str(involved.get("namespace") or "").startswith(prefix)

        self.pods = Informer("pods", core.list_pod_for_all_namespaces,
                             label_selector=server_label, resync_s=resync_s)  # fmt: skip
        self.daskjobs = Informer(
            "daskjobs",
            partial(custom.list_cluster_custom_object, *daskjobs),
            label_selector=server_label,
            resync_s=resync_s,
        )
        # Quota refusals, scheduling failures and the operator's errors: every type but
        # Normal (the operator's framework posts "Error" as well as "Warning").
        self.events = Informer("events", core.list_event_for_all_namespaces,
                               field_selector="type!=Normal", keep=tenants,
                               resync_s=resync_s)  # fmt: skip
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def informers(self) -> tuple[Informer, ...]:
        return self.pods, self.daskjobs, self.events

    def start(self) -> None:
        """Start the informers' threads (once)."""
        if self._threads:
            return
        for informer in self.informers:
            thread = threading.Thread(
                target=informer.run, args=(self._stop,), name=f"k8s-watch-{informer.name}",
                daemon=True,
            )  # fmt: skip
            thread.start()
            self._threads.append(thread)

    def synced(self, timeout: float = 0.0) -> bool:
        """Whether every informer has its first list."""
        deadline = time.monotonic() + timeout
        return all(i.wait_synced(max(deadline - time.monotonic(), 0)) for i in self.informers)

    def current(self, timeout: float = 0.0, stale_after: float = 60.0) -> bool:
        """Whether the cache can be trusted now: every informer listed, and none has been
        failing for more than ``stale_after`` seconds (then ask the API server instead)."""
        if not self.synced(timeout):
            return False
        now = time.monotonic()
        return all(
            i.failing_since is None or now - i.failing_since < stale_after for i in self.informers
        )

    def daskjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.daskjobs.get(namespace, name)

    def pods_of(self, label: str, job_id: str) -> list[dict[str, Any]]:
        return [
            p for p in self.pods.items() if (p["metadata"].get("labels") or {}).get(label) == job_id
        ]

    def events_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return about_job(self.events.items(), namespace, name)

    def close(self) -> None:
        self._stop.set()
        for informer in self.informers:
            informer.interrupt()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()
