"""A Kubernetes API server on loopback that behaves as the real one where a controller
depends on it.

Every object (pods, DaskJobs, Secrets, Events, ...) lives in ``FakeCluster.objects``.
Each change stamps the object with the next cluster-wide ``resourceVersion`` and is kept
as a watch event in a bounded history. Lists and watches apply label and field selectors
as the API server parses them (400 when malformed); watches (``?watch=true``) stream
newline-delimited JSON events with chunked HTTP/1.1, from a resourceVersion (410 Expired
once it is compacted away), with bookmarks and timeouts. Created and applied objects are
checked against the Kubernetes OpenAPI schemas, DaskJobs against the operator's CRD
schema (422 when invalid); 409, 404 and 403 are answered as the real API server does.
Recorded pod lists and DaskJob statuses come from ``tests/data/k8s/``. Every request is
recorded, so tests can assert on the calls.
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jsonschema
import kubernetes_validate

DATA = Path(__file__).parent / "data" / "k8s"
_CORE_ALL = re.compile(r"^/api/v1/(?P<kind>[^/]+)$")
_CORE = re.compile(
    r"^/api/v1/namespaces(?:/(?P<ns>[^/]+)(?:/(?P<kind>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>log))?)?)?)?$"
)
_PROXY = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<name>[^/:]+)(?::\d+)?/proxy(?P<rest>/.*)$"
)
_GROUP = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<kind>[^/]+)(?:/(?P<name>[^/]+))?$"
)
#: The kind of each resource the fake serves, by its plural (lists are "<Kind>List").
KINDS = {
    "pods": "Pod", "services": "Service", "secrets": "Secret", "events": "Event",
    "namespaces": "Namespace", "resourcequotas": "ResourceQuota", "limitranges": "LimitRange",
    "serviceaccounts": "ServiceAccount", "configmaps": "ConfigMap",
    "networkpolicies": "NetworkPolicy", "daskjobs": "DaskJob", "daskclusters": "DaskCluster",
    "daskworkergroups": "DaskWorkerGroup", "daskautoscalers": "DaskAutoscaler",
}  # fmt: skip
CREATED_AT = "2026-11-25T09:00:00Z"


def pods(scenario: str) -> dict[str, Any]:
    """A recorded pod list."""
    return dict(json.loads((DATA / f"pods-{scenario}.json").read_text()))


def daskjob_status(name: str) -> dict[str, Any]:
    """A recorded DaskJob status."""
    return dict(json.loads((DATA / "daskjob-statuses.json").read_text())[name])


KUBE_VERSION = "1.30"  # the oldest Kubernetes the backend supports


def invalid(body: dict[str, Any]) -> str | None:
    """Why the API server would refuse ``body`` (its kind's OpenAPI schema), else None."""
    if body.get("apiVersion", "").startswith("kubernetes.dask.org/"):
        return None  # checked against the operator's CRD schema instead
    try:
        kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{body.get('kind')} {body.get('metadata', {}).get('name')!r} is invalid: {exc}"
    return None


def _true(value: str | None) -> bool:
    """A boolean query parameter, as Go's strconv.ParseBool reads it."""
    return value in ("1", "t", "T", "true", "True", "TRUE")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- selectors, as the API server parses them ---------------------------------------------


class SelectorError(ValueError):
    """A selector the API server refuses (400 BadRequest)."""


#: (key, operator, values); operators: exists, !, =, !=, in, notin, <, >
LabelRequirement = tuple[str, str, frozenset[str]]
#: (field, equal (else not equal), value)
FieldRequirement = tuple[str, bool, str]

_SYMBOLS = ("!=", "==", "!", "=", "(", ")", ",", "<", ">")
_TOKEN = re.compile(r"\s*(?:(!=|==|[!=(),<>])|([^\s!=(),<>]+))")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    valid = (
        key.count("/") <= 1
        and 0 < len(name) <= 63
        and bool(_LABEL_NAME.match(name))
        and ("/" not in key or (0 < len(prefix) <= 253 and bool(_DNS_SUBDOMAIN.match(prefix))))
    )
    if not valid:
        raise SelectorError(f'unable to parse requirement: key: Invalid value: "{key}"')
    return key


def _check_value(value: str) -> str:
    if len(value) > 63 or (value and not _LABEL_NAME.match(value)):
        raise SelectorError(f'unable to parse requirement: values: Invalid value: "{value}"')
    return value


class _LabelParser:
    """The label selector grammar: requirements separated by commas."""

    def __init__(self, text: str) -> None:
        self.tokens: list[str] = []
        pos, text = 0, text.rstrip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            assert match is not None  # every non-blank rest starts with a token
            self.tokens.append(match[0].strip())
            pos = match.end()
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def word(self, expected: str) -> str:
        token = self.take()
        if token is None or token in _SYMBOLS:
            raise SelectorError(f"found '{token or ''}', expected: {expected}")
        return token

    def parse(self) -> list[LabelRequirement]:
        if not self.tokens:
            return []
        requirements = [self.requirement()]
        while (token := self.take()) is not None:
            if token != ",":
                raise SelectorError(f"found '{token}', expected: ',' or 'end of string'")
            requirements.append(self.requirement())
        return requirements

    def requirement(self) -> LabelRequirement:
        if self.peek() == "!":
            self.take()
            return _check_key(self.word("identifier")), "!", frozenset()
        key = self.word("identifier")
        if key in ("in", "notin"):
            raise SelectorError(f"found '{key}', expected: identifier")
        _check_key(key)
        op = self.peek()
        if op is None or op == ",":
            return key, "exists", frozenset()
        self.take()
        if op in ("=", "==", "!="):
            empty = self.peek() in (None, ",")
            values = {"" if empty else self.word("identifier for value")}
            op = "=" if op == "==" else op
        elif op in ("in", "notin"):
            values = self.values()
        elif op in ("<", ">"):
            values = {self.word("integer value")}
            if not re.fullmatch(r"-?\d+", next(iter(values))):
                raise SelectorError("for 'Gt', 'Lt' operators, the value must be an integer")
        else:
            raise SelectorError(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")
        return key, op, frozenset(_check_value(v) for v in values)

    def values(self) -> set[str]:
        token = self.take()
        if token != "(":
            raise SelectorError(f"found '{token or ''}', expected: '('")
        if self.peek() == ")":
            raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
        values: set[str] = set()
        current: str | None = None
        while (token := self.take()) != ")":
            if token == ",":
                values.add(current or "")
                current = None
            elif current is None and token is not None and token not in _SYMBOLS:
                current = token
            else:
                raise SelectorError(f"found '{token or ''}', expected: ',' or ')'")
        values.add(current or "")
        return values


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """A ``labelSelector`` as the API server reads it; SelectorError when malformed."""
    return _LabelParser(text).parse()


def _satisfies(requirement: LabelRequirement, labels: dict[str, str]) -> bool:
    key, op, values = requirement
    value = labels.get(key)
    if op == "exists":
        return value is not None
    if op == "!":
        return value is None
    if op in ("=", "in"):
        return value in values
    if op in ("!=", "notin"):
        return value not in values
    if value is None or not re.fullmatch(r"-?\d+", value):
        return False
    bound = int(next(iter(values)))
    return int(value) < bound if op == "<" else int(value) > bound


def labels_match(requirements: Iterable[LabelRequirement], labels: dict[str, str]) -> bool:
    return all(_satisfies(r, labels) for r in requirements)


#: The fields each resource can be selected by, beside metadata.name and metadata.namespace.
SELECTABLE_FIELDS = {
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.fieldPath",
               "reason", "type", "reportingComponent"},
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
             "spec.serviceAccountName", "status.phase", "status.podIP"},
    "secrets": {"type"},
    "namespaces": {"status.phase"},
}  # fmt: skip


def _split_unescaped(text: str, separators: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """Positions and separators in ``text`` outside backslash escapes."""
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        found = next((s for s in separators if text.startswith(s, i)), None)
        if found:
            yield i, found
            i += len(found)
        else:
            i += 1


def _unescape(value: str) -> str:
    if re.search(r"\\[^\\,=]|\\$", value):
        raise SelectorError(f"invalid field selector value: {value!r}")
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str, kind: str) -> list[FieldRequirement]:
    """A ``fieldSelector`` for resource ``kind``; SelectorError when malformed or when the
    field cannot be selected on."""
    bounds = [-1] + [i for i, _ in _split_unescaped(text, (",",))] + [len(text)]
    terms = [text[a + 1 : b] for a, b in itertools.pairwise(bounds) if b > a + 1]
    requirements = []
    allowed = {"metadata.name", "metadata.namespace"} | SELECTABLE_FIELDS.get(kind, set())
    for term in terms:
        at, op = next(_split_unescaped(term, ("!=", "==", "=")), (-1, ""))
        if at < 0:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        name = term[:at]
        if name not in allowed:
            raise SelectorError(f'field label not supported: "{name}"')
        requirements.append((name, op != "!=", _unescape(term[at + len(op) :])))
    return requirements


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Selection:
    """What a list or watch asks for: a resource, maybe one namespace, and selectors."""

    kind: str
    namespace: str | None = None
    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    def matches(self, kind: str, namespace: str, obj: dict[str, Any]) -> bool:
        return (
            kind == self.kind
            and self.namespace in (None, namespace)
            and labels_match(self.labels, obj.get("metadata", {}).get("labels") or {})
            and all((_field(obj, f) == value) == equal for f, equal, value in self.fields)
        )


# -- logs -----------------------------------------------------------------------------------

#: A pod's log: raw bytes (lines logged a millisecond apart from CREATED_AT), or
#: (RFC3339Nano timestamp, line) entries.
Log = bytes | list[tuple[str, bytes]]
_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", re.IGNORECASE)


def _nanos(stamp: str, whole_seconds: bool = False) -> int:
    """An RFC3339 time as nanoseconds since the epoch."""
    match = _TIME.fullmatch(stamp)
    if not match:
        raise ValueError(f"invalid RFC3339 time {stamp!r}")
    at = datetime.strptime(match[1], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    if match[3].upper() != "Z":
        sign = -1 if match[3][0] == "-" else 1
        at -= sign * timedelta(hours=int(match[3][1:3]), minutes=int(match[3][4:6]))
    fraction = 0 if whole_seconds else int((match[2] or ".")[1:10].ljust(9, "0"))
    return int(at.timestamp()) * 10**9 + fraction


def _stamp(nanos: int) -> str:
    """Go's RFC3339Nano in UTC, as the kubelet writes it: no trailing zeros."""
    seconds, fraction = divmod(nanos, 10**9)
    whole = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{whole}.{digits}Z" if digits else f"{whole}Z"


def render_log(log: Log, query: dict[str, str]) -> bytes:
    """A log as the kubelet serves it for ``query`` (sinceTime, sinceSeconds, tailLines,
    timestamps, limitBytes)."""
    if isinstance(log, bytes):
        start = _nanos(CREATED_AT)
        lines = log.splitlines(True)
        entries = [(_stamp(start + i * 10**6), line) for i, line in enumerate(lines)]
    else:
        entries = [(ts, line if line.endswith(b"\n") else line + b"\n") for ts, line in log]
    if "sinceTime" in query and "sinceSeconds" in query:
        raise ValueError("at most one of sinceTime or sinceSeconds may be specified")
    cutoff = None
    if "sinceTime" in query:
        cutoff = _nanos(query["sinceTime"], whole_seconds=True)
    elif "sinceSeconds" in query:
        cutoff = time.time_ns() - int(query["sinceSeconds"]) * 10**9
    if cutoff is not None:
        entries = [(ts, line) for ts, line in entries if _nanos(ts) >= cutoff]
    if "tailLines" in query:
        tail = int(query["tailLines"])
        entries = entries[len(entries) - tail :] if 0 <= tail < len(entries) else entries
    stamped = _true(query.get("timestamps"))
    out = b"".join((f"{ts} ".encode() if stamped else b"") + x for ts, x in entries)
    return out[: int(query["limitBytes"])] if "limitBytes" in query else out


# -- the cluster ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchEvent:
    """One change to an object, as a watch reports it."""

    resource_version: int
    type: str  # ADDED, MODIFIED or DELETED
    kind: str  # the resource's plural
    namespace: str
    object: dict[str, Any]  # a snapshot, as it was after the change


@dataclass
class FakeCluster:
    """What the fake API server holds, and what it was asked."""

    crd_schema: dict[str, Any]
    #: by (plural, namespace ("" when cluster-scoped), name)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    #: by pod name, or "pod/container" for one container's log
    logs: dict[str, Log] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    services: dict[tuple[str, str], str] = field(default_factory=dict)  # proxied, to a URL
    #: (kind, namespace, name) of objects the API server refuses to create (403)
    forbidden: set[tuple[str, str, str]] = field(default_factory=set)
    url: str = ""
    #: of the latest change; never 0, which a watch reads as "from now", as in a real cluster
    resource_version: int = 1
    #: the latest changes, oldest first; watches may start from any version in it
    history: list[WatchEvent] = field(default_factory=list)
    history_limit: int = 1000
    compacted: int = 0  # the newest version no longer in the history
    watch_timeout: float = 30.0  # seconds, when a watch gives no timeoutSeconds
    closed: bool = False
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _breaks: int = 0
    _abrupt: bool = False
    _serial: Iterator[int] = field(default_factory=itertools.count, repr=False)

    def created(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [o for (k, _, _), o in self.objects.items() if k == kind]

    def _store(self, key: tuple[str, str, str], obj: dict[str, Any], change: str) -> dict[str, Any]:
        """Record a change under the lock: the next resourceVersion, and its watch event."""
        self.resource_version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.resource_version)
        if change == "DELETED":
            del self.objects[key]
        else:
            self.objects[key] = obj
        event = WatchEvent(self.resource_version, change, key[0], key[1], copy.deepcopy(obj))
        self.history.append(event)
        excess = len(self.history) - max(self.history_limit, 0)
        if excess > 0:
            self.compacted = self.history[excess - 1].resource_version
            del self.history[:excess]
        self._lock.notify_all()
        return obj

    def _uid(self) -> str:
        return f"uid-{next(self._serial)}"

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Insert or replace (a copy of) ``obj`` as resource ``kind`` (a plural, "pods"), in
        the namespace of its metadata: ADDED or MODIFIED. Not validated."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (kind, meta.get("namespace", ""), meta["name"])
        with self._lock:
            before = self.objects.get(key)
            meta.setdefault("uid", before["metadata"]["uid"] if before else self._uid())
            meta.setdefault("creationTimestamp", CREATED_AT)
            return self._store(key, obj, "MODIFIED" if before else "ADDED")

    def put_pods(self, pod_list: dict[str, Any], labels: dict[str, str] | None = None) -> None:
        """Put every pod of a recorded PodList (see ``pods``), with ``labels`` added (those
        its owner's pod templates give it, say)."""
        for pod in pod_list["items"]:
            pod = copy.deepcopy(pod)
            pod["metadata"]["labels"] = {**pod["metadata"].get("labels", {}), **(labels or {})}
            self.put("pods", pod)

    def remove(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """Delete an object (KeyError when there is none): DELETED."""
        with self._lock:
            key = (kind, namespace, name)
            return self._store(key, self.objects[key], "DELETED")

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """A DaskJob's status, as its operator writes it: MODIFIED."""
        with self._lock:
            key = ("daskjobs", namespace, name)
            job = self.objects[key]
            job["status"] = copy.deepcopy(status)
            self._store(key, job, "MODIFIED")

    def event(
        self,
        namespace: str,
        involved_kind: str,
        involved_name: str,
        reason: str,
        message: str,
        type: str = "Warning",
    ) -> dict[str, Any]:
        """Store a core/v1 Event about an object, as a controller reports one: ADDED."""
        plural = next((p for p, k in KINDS.items() if k == involved_kind), "")
        involved = self.objects.get((plural, namespace, involved_name), {})
        api_version = involved.get("apiVersion") or (
            "kubernetes.dask.org/v1" if involved_kind.startswith("Dask") else "v1"
        )
        now = _now()
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{involved_name}.{next(self._serial):016x}",
                         "namespace": namespace, "creationTimestamp": now},
            "involvedObject": {"apiVersion": api_version, "kind": involved_kind,
                               "name": involved_name, "namespace": namespace},
            "reason": reason, "message": message, "type": type, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "fake-kube-api"},
        }  # fmt: skip
        if "uid" in involved.get("metadata", {}):
            event["involvedObject"]["uid"] = involved["metadata"]["uid"]
        return self.put("events", event)

    def log_lines(self, pod: str, entries: Iterable[tuple[str, bytes]]) -> None:
        """Give ``pod`` a log of (RFC3339Nano timestamp, line) entries."""
        self.logs[pod] = list(entries)

    def compact(self) -> None:
        """Forget the history: watches from an older version are answered 410 Expired."""
        with self._lock:
            self.compacted = self.resource_version
            self.history.clear()

    def break_watches(self, abrupt: bool = False) -> None:
        """End every open watch now: cleanly, or (``abrupt``) by dropping the connection."""
        with self._lock:
            self._breaks += 1
            self._abrupt = abrupt
            self._lock.notify_all()

    def close(self) -> None:
        """End every open watch, for the server's shutdown."""
        with self._lock:
            self.closed = True
            self._lock.notify_all()

    def changes_after(self, since: int, breaks: int, deadline: float) -> list[WatchEvent] | str:
        """The events after version ``since``, waiting for one until ``deadline``
        (monotonic); or why a watch ends: "expired", "broken", "closed" or "timeout"."""
        with self._lock:
            while True:
                if self.closed:
                    return "closed"
                if self._breaks != breaks:
                    return "abrupt" if self._abrupt else "broken"
                if since < self.compacted:
                    return "expired"
                if self.resource_version > since:
                    return [e for e in self.history if e.resource_version > since]
                left = deadline - time.monotonic()
                if left <= 0:
                    return "timeout"
                self._lock.wait(left)


# -- the API server -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    kind: str  # the resource's plural
    namespace: str | None
    name: str | None
    sub: str | None  # "log"
    api_version: str
    query: dict[str, str]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.namespace or "", self.name or ""


def _route(path: str) -> _Route | None:
    parts = urlsplit(path)
    query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    core, everywhere = _CORE.match(parts.path), _CORE_ALL.match(parts.path)
    if core and core["ns"] and core["kind"]:
        return _Route(core["kind"], core["ns"], core["name"], core["sub"], "v1", query)
    if core:  # /api/v1/namespaces or /api/v1/namespaces/NAME
        return _Route("namespaces", None, core["ns"], None, "v1", query)
    if everywhere:  # /api/v1/pods: across namespaces
        return _Route(everywhere["kind"], None, None, None, "v1", query)
    group = _GROUP.match(parts.path)
    if group:
        api_version = f"{group['group']}/{group['version']}"
        return _Route(group["kind"], group["ns"], group["name"], None, api_version, query)
    return None


def _kind_of(plural: str) -> str:
    return KINDS.get(plural) or plural.removesuffix("s").capitalize()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked watch streams
    disable_nagle_algorithm = True  # headers and body go out at once

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, _status(code, reason, message))

    def _raw_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _body(self) -> dict[str, Any]:
        return dict(json.loads(self._raw_body() or b"{}"))

    def _proxy(self, method: str) -> bool:
        """The API server's service proxy: pass the request on to the service's URL."""
        match = _PROXY.match(urlsplit(self.path).path)
        if not match:
            return False
        self.cluster.requests.append((method, self.path))
        body = self._raw_body() or None
        target = self.cluster.services.get((match["ns"], match["name"]))
        if target is None:
            self._status(503, "ServiceUnavailable", f"no endpoints for {match['name']}")
            return True
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}
        answer = httpx.request(method, target + match["rest"], headers=headers, content=body)
        self._send(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))
        return True

    def _routed(self, method: str) -> _Route | None:
        self.cluster.requests.append((method, self.path))
        route = _route(self.path)
        if route is None:
            self._status(404, "NotFound", f"the server could not find {self.path}")
        return route

    # -- creating, applying, deleting ---------------------------------------------------------

    def do_POST(self) -> None:
        if self._proxy("POST"):
            return
        body = self._body()
        route = self._routed("POST")
        if route is None:
            return
        kind, cluster = route.kind, self.cluster
        meta = body.setdefault("metadata", {})
        name = meta.get("name", "")
        if route.namespace:
            meta.setdefault("namespace", route.namespace)
        key = (kind, meta.get("namespace", ""), name)
        refused = invalid(body)
        if refused:
            self._status(422, "Invalid", refused)
            return
        if key in cluster.forbidden:
            user = "system:serviceaccount:insitu:insitu"
            message = f'{kind} "{name}" is forbidden: User "{user}" cannot create "{kind}"'
            self._status(403, "Forbidden", message)
            return
        if kind == "daskjobs":
            try:
                jsonschema.validate(body, cluster.crd_schema)
            except jsonschema.ValidationError as exc:
                self._status(422, "Invalid", f"DaskJob.kubernetes.dask.org {name!r} is invalid: "
                             f"{exc.message}")  # fmt: skip
                return
        if kind == "secrets":  # stored as the API server stores it: base64 data
            given = body.pop("stringData", {})
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in given.items()}
            body["data"] = {**body.get("data", {}), **encoded}
        answer: bytes | dict[str, Any]
        with cluster._lock:
            if key in cluster.objects:
                answer = _status(409, "AlreadyExists", f"{kind} {name!r} already exists")
            else:
                meta.update(uid=cluster._uid(), creationTimestamp=CREATED_AT)
                answer = json.dumps(cluster._store(key, body, "ADDED")).encode()
        self._send(201 if isinstance(answer, bytes) else 409, answer)

    def do_PATCH(self) -> None:
        """Server-side apply, as one field manager sees it: create the object, or make it
        what was applied (fields the manager no longer applies go; the status stays)."""
        body = self._body()
        route = self._routed("PATCH")
        if route is None:
            return
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            self._status(415, "UnsupportedMediaType", "this fake serves server-side apply only")
            return
        if not route.query.get("fieldManager"):
            self._status(422, "Invalid", "PATCH with apply requires a fieldManager")
            return
        if body.get("metadata", {}).get("name") != route.name:
            self._status(400, "BadRequest", "the name in the body does not match the URL")
            return
        if route.namespace:
            body["metadata"].setdefault("namespace", route.namespace)
        refused = invalid(body)
        if refused:
            self._status(422, "Invalid", refused)
            return
        cluster = self.cluster
        with cluster._lock:
            before = cluster.objects.get(route.key)
            self._apply(body, before)
            if body != before:  # a change: a new version
                cluster._store(route.key, body, "MODIFIED" if before else "ADDED")
            answer = json.dumps(cluster.objects[route.key]).encode()
        self._send(200 if before else 201, answer)

    def _apply(self, body: dict[str, Any], before: dict[str, Any] | None) -> None:
        """What the API server keeps of the object ``body`` is applied to."""
        if before is None:
            body["metadata"].update(uid=self.cluster._uid(), creationTimestamp=CREATED_AT)
            return
        kept = ("uid", "creationTimestamp", "resourceVersion")
        body["metadata"].update({k: before["metadata"][k] for k in kept})
        if "status" in before:
            body["status"] = before["status"]

    def do_DELETE(self) -> None:
        self._raw_body()  # delete options, read to keep the connection usable
        route = self._routed("DELETE")
        if route is None:
            return
        with self.cluster._lock:
            gone = self.cluster.objects.get(route.key)
            if gone is not None:
                self.cluster._store(route.key, gone, "DELETED")
        if gone is None:
            self._status(404, "NotFound", f'{route.kind} "{route.name}" not found')
            return
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    # -- reading --------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self._proxy("GET"):
            return
        route = self._routed("GET")
        if route is None:
            return
        if route.kind == "pods" and route.sub == "log" and route.name:
            self._log(route)
            return
        watching = _true(route.query.get("watch"))
        if route.name is not None and not watching:
            with self.cluster._lock:
                obj = self.cluster.objects.get(route.key)
                answer = json.dumps(obj).encode() if obj else None
            if answer is None:
                self._status(404, "NotFound", f'{route.kind} "{route.name}" not found')
            else:
                self._send(200, answer)
            return
        try:
            selection = self._selection(route)
        except SelectorError as exc:
            self._status(400, "BadRequest", str(exc))
            return
        if watching:
            self._watch(route, selection)
        else:
            self._list(route, selection)

    def _selection(self, route: _Route) -> Selection:
        fields = parse_field_selector(route.query.get("fieldSelector", ""), route.kind)
        if route.name:  # a watch of one object by its URL
            fields.append(("metadata.name", True, route.name))
        labels = parse_label_selector(route.query.get("labelSelector", ""))
        return Selection(route.kind, route.namespace, tuple(labels), tuple(fields))

    def _list(self, route: _Route, selection: Selection) -> None:
        cluster = self.cluster
        with cluster._lock:
            items = [o for (k, n, _), o in sorted(cluster.objects.items())
                     if selection.matches(k, n, o)]  # fmt: skip
            listed = {
                "kind": f"{_kind_of(route.kind)}List",
                "apiVersion": route.api_version,
                "metadata": {"resourceVersion": str(cluster.resource_version)},
                "items": items,
            }
            answer = json.dumps(listed).encode()
        self._send(200, answer)

    def _log(self, route: _Route) -> None:
        pod, query, cluster = route.name or "", route.query, self.cluster
        container = query.get("container")
        with cluster._lock:
            spec = cluster.objects.get(("pods", route.namespace or "", pod), {}).get("spec", {})
        names = [c["name"] for c in spec.get("initContainers", []) + spec.get("containers", [])]
        if container and names and container not in names:
            self._status(400, "BadRequest", f"container {container} is not valid for pod {pod}")
            return
        if not container and len(spec.get("containers", [])) > 1:
            choices = " ".join(names)
            message = f"a container name must be specified for pod {pod}, choose one of: "
            self._status(400, "BadRequest", f"{message}[{choices}]")
            return
        log = cluster.logs.get(f"{pod}/{container}") if container else None
        log = cluster.logs.get(pod) if log is None else log
        if log is None:
            self._status(404, "NotFound", f'pods "{pod}" not found')
            return
        try:
            text = render_log(log, query)
        except ValueError as exc:
            self._status(400, "BadRequest", str(exc))
            return
        self._send(200, text, "text/plain")

    # -- watching -------------------------------------------------------------------------

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, change: str, obj: dict[str, Any]) -> None:
        self._chunk(json.dumps({"type": change, "object": obj}).encode() + b"\n")

    def _watch(self, route: _Route, selection: Selection) -> None:
        """Stream the changes ``selection`` sees, from a resourceVersion or from now with the
        current objects first, until the timeout, a break or the server's shutdown."""
        cluster, query = self.cluster, route.query
        start = query.get("resourceVersion", "")
        if not re.fullmatch(r"\d*", start):
            self._status(400, "BadRequest", f"invalid resource version: {start!r}")
            return
        seconds = float(query.get("timeoutSeconds") or 0) or cluster.watch_timeout
        deadline = time.monotonic() + seconds
        with cluster._lock:
            breaks = cluster._breaks
            since = int(start or 0) or cluster.resource_version
            current = [] if int(start or 0) else [
                json.dumps({"type": "ADDED", "object": o}).encode() + b"\n"
                for (k, n, _), o in sorted(cluster.objects.items()) if selection.matches(k, n, o)
            ]  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        try:
            for line in current:
                self._chunk(line)
            ended = self._follow(selection, since, breaks, deadline)
            if isinstance(ended, int):  # timed out
                if _true(query.get("allowWatchBookmarks")):
                    bookmark = {"kind": _kind_of(route.kind), "apiVersion": route.api_version,
                                "metadata": {"resourceVersion": str(ended)}}  # fmt: skip
                    self._event("BOOKMARK", bookmark)
            elif ended == "abrupt":
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            pass

    def _follow(self, selection: Selection, since: int, breaks: int, deadline: float) -> int | str:
        """Send the changes after ``since``; the version reached when the watch times out,
        else why it ended."""
        cluster = self.cluster
        while True:
            changes = cluster.changes_after(since, breaks, deadline)
            if changes == "timeout":
                return since
            if changes == "expired":
                message = f"too old resource version: {since} ({cluster.compacted})"
                self._event("ERROR", _status(410, "Expired", message))
            if isinstance(changes, str):
                return changes
            for change in changes:
                if selection.matches(change.kind, change.namespace, change.object):
                    self._event(change.type, change.object)
            since = changes[-1].resource_version


@contextmanager
def fake_cluster(crd_schema: dict[str, Any]) -> Iterator[FakeCluster]:
    """A fake API server on 127.0.0.1 for the duration of a ``with`` block."""
    cluster = FakeCluster(crd_schema)
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield cluster
    finally:
        cluster.close()
        server.shutdown()
        server.server_close()


def api_client(url: str) -> Any:
    """An official-client ApiClient for ``url``."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)
