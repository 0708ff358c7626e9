"""A Kubernetes API server on loopback that answers with recorded responses.

It serves what the kubernetes backend calls (namespaced creates, DaskJobs, pods, logs)
from the JSON in ``tests/data/k8s/``: pod lists and DaskJob statuses in the shape the
API server returns them. It checks created DaskJobs against the operator's CRD schema as
the real API server would (422 when invalid), answers 409 for objects that exist and
404 for ones that do not, and records every request, so tests can assert on the calls.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jsonschema
import kubernetes_validate

DATA = Path(__file__).parent / "data" / "k8s"
_CORE = re.compile(
    r"^/api/v1/namespaces(?:/(?P<ns>[^/]+)(?:/(?P<kind>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>log))?)?)?)?$"
)
_PROXY = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?P<name>[^/:]+)(?::\d+)?/proxy(?P<rest>/.*)$"
)
_GROUP = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<kind>[^/]+)(?:/(?P<name>[^/]+))?$"
)


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


@dataclass
class FakeCluster:
    """What the fake API server holds, and what it was asked."""

    crd_schema: dict[str, Any]
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    pod_lists: dict[str, dict[str, Any]] = field(default_factory=dict)  # by job id
    logs: dict[str, bytes] = field(default_factory=dict)  # by pod name
    requests: list[tuple[str, str]] = field(default_factory=list)
    services: dict[tuple[str, str], str] = field(default_factory=dict)  # proxied, to a URL
    #: (kind, namespace, name) of objects the API server refuses to create (403)
    forbidden: set[tuple[str, str, str]] = field(default_factory=set)
    url: str = ""

    def created(self, kind: str) -> list[dict[str, Any]]:
        return [o for (k, _, _), o in self.objects.items() if k == kind]

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.objects[("daskjobs", namespace, name)]["status"] = status


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster

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
        self._send(
            code,
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
             "reason": reason, "code": code},
        )  # fmt: skip

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return dict(json.loads(self.rfile.read(length) or b"{}"))

    def _route(self) -> tuple[str, str | None, str | None, str | None, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        core = _CORE.match(parts.path)
        if parts.path == "/api/v1/namespaces":
            return "namespaces", None, None, None, query
        if core:
            ns, kind, name, sub = core["ns"], core["kind"], core["name"], core["sub"]
            if kind is None:  # /api/v1/namespaces/NAME
                return "namespaces", None, ns, None, query
            return kind, ns, name, sub, query
        group = _GROUP.match(parts.path)
        if group:
            return group["kind"], group["ns"], group["name"], None, query
        return "?", None, None, None, query

    def _proxy(self, method: str) -> bool:
        """The API server's service proxy: pass the request on to the service's URL."""
        match = _PROXY.match(urlsplit(self.path).path)
        if not match:
            return False
        self.cluster.requests.append((method, self.path))
        target = self.cluster.services.get((match["ns"], match["name"]))
        if target is None:
            self._status(503, "ServiceUnavailable", f"no endpoints for {match['name']}")
            return True
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-")}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        answer = httpx.request(method, target + match["rest"], headers=headers, content=body)
        self._send(answer.status_code, answer.content, answer.headers.get("Content-Type", ""))
        return True

    def do_POST(self) -> None:
        if self._proxy("POST"):
            return
        kind, ns, _, _, _ = self._route()
        self.cluster.requests.append(("POST", self.path))
        body = self._body()
        name = body["metadata"]["name"]
        key = (kind, body["metadata"].get("namespace", ns) or "", name)
        refused = invalid(body)
        if refused:
            self._status(422, "Invalid", refused)
            return
        if key in self.cluster.forbidden:
            user = "system:serviceaccount:insitu:insitu"
            message = f'{kind} "{name}" is forbidden: User "{user}" cannot create "{kind}"'
            self._status(403, "Forbidden", message)
            return
        if kind == "daskjobs":
            try:
                jsonschema.validate(body, self.cluster.crd_schema)
            except jsonschema.ValidationError as exc:
                self._status(422, "Invalid", f"DaskJob.kubernetes.dask.org {name!r} is invalid: "
                             f"{exc.message}")  # fmt: skip
                return
        if key in self.cluster.objects:
            self._status(409, "AlreadyExists", f"{kind} {name!r} already exists")
            return
        body.setdefault("metadata", {}).update(
            uid=f"uid-{len(self.cluster.objects)}", creationTimestamp="2026-11-25T09:00:00Z"
        )
        if kind == "secrets":  # stored as the API server stores it: base64 data
            given = body.pop("stringData", {})
            encoded = {k: base64.b64encode(v.encode()).decode() for k, v in given.items()}
            body["data"] = {**body.get("data", {}), **encoded}
        self.cluster.objects[key] = body
        self._send(201, body)

    def do_GET(self) -> None:
        if self._proxy("GET"):
            return
        kind, ns, name, sub, query = self._route()
        self.cluster.requests.append(("GET", self.path))
        if kind == "pods" and sub == "log" and name:
            if name not in self.cluster.logs:
                self._status(404, "NotFound", f'pods "{name}" not found')
                return
            self._send(200, self.cluster.logs[name], "text/plain")
            return
        if kind == "pods" and name is None:
            selector = query.get("labelSelector", [""])[0]
            job_id = selector.partition("=")[2]
            listed = self.cluster.pod_lists.get(job_id, {"kind": "PodList", "items": []})
            self._send(200, listed)
            return
        if name is None:  # a list, maybe across namespaces
            selector = query.get("labelSelector", [""])[0]
            label, _, value = selector.partition("=")
            items = [
                o
                for (k, n, _), o in self.cluster.objects.items()
                if k == kind and (ns is None or n == ns)
                and (not label or o["metadata"].get("labels", {}).get(label) == value)
            ]  # fmt: skip
            self._send(200, {"kind": "List", "items": items})
            return
        obj = self.cluster.objects.get((kind, ns or "", name))
        if obj is None:
            self._status(404, "NotFound", f'{kind} "{name}" not found')
            return
        self._send(200, obj)

    def do_PATCH(self) -> None:
        """Server-side apply, as one field manager sees it: create the object, or make it
        what was applied (fields the manager no longer applies go)."""
        kind, ns, name, _, query = self._route()
        self.cluster.requests.append(("PATCH", self.path))
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            self._status(415, "UnsupportedMediaType", "this fake serves server-side apply only")
            return
        if not query.get("fieldManager"):
            self._status(422, "Invalid", "PATCH with apply requires a fieldManager")
            return
        body = self._body()
        if body.get("metadata", {}).get("name") != name:
            self._status(400, "BadRequest", "the name in the body does not match the URL")
            return
        refused = invalid(body)
        if refused:
            self._status(422, "Invalid", refused)
            return
        key = (kind, ns or "", name or "")
        before = self.cluster.objects.get(key)
        kept = {k: before["metadata"][k] for k in ("uid", "creationTimestamp")} if before else {
            "uid": f"uid-{len(self.cluster.objects)}", "creationTimestamp": "2026-11-25T09:00:00Z"
        }  # fmt: skip
        body["metadata"].update(kept)
        self.cluster.objects[key] = body
        self._send(200 if before else 201, body)

    def do_DELETE(self) -> None:
        kind, ns, name, _, _ = self._route()
        self.cluster.requests.append(("DELETE", self.path))
        if self.cluster.objects.pop((kind, ns or "", name or ""), None) is None:
            self._status(404, "NotFound", f'{kind} "{name}" not found')
            return
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


@contextmanager
def fake_cluster(crd_schema: dict[str, Any]) -> Iterator[FakeCluster]:
    """A fake API server on 127.0.0.1 for the duration of a ``with`` block."""
    cluster = FakeCluster(crd_schema)
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    cluster.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield cluster
    finally:
        server.shutdown()
        server.server_close()


def api_client(url: str) -> Any:
    """An official-client ApiClient for ``url``."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = url
    return client.ApiClient(configuration)
