"""The kubernetes backend: one DaskJob of the dask-kubernetes operator per job.

The manifests come from :mod:`insitu.backends.k8s_manifests`; this module creates them
with the official ``kubernetes`` client, maps what the cluster reports (the DaskJob's
status, its pods' states) to a job's phase with reasons a person can act on (an image
that cannot be pulled, pods that cannot be scheduled, a container killed for memory, the
deadline), reads the runner pod's log, deletes the DaskJob to cancel, and keeps the log
once the pods are gone. Handles name the namespace and DaskJob, so a restarted API
server picks its jobs up again. A job whose data is in object storage also gets its store
gateway (:mod:`insitu.backends.k8s_gateway`) in the server's namespace: the server asks it
for the bytes it let through and seals it when the job ends, with a token only it holds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from insitu.backends.base import (
    LABEL_COMPONENT,
    LABEL_JOB,
    LOG_CHUNK,
    Backend,
    BackendPhase,
    BackendStatus,
    JobHandle,
    LaunchRequest,
    Metered,
    server_id,
)
from insitu.backends.k8s_gateway import TOKEN_KEY, gateway_manifests
from insitu.backends.k8s_logs import LogTail, pod_log
from insitu.backends.k8s_manifests import (
    DASK_GROUP,
    DASK_VERSION,
    DASKJOB_PLURAL,
    GATEWAY_COMPONENT,
    LABEL_SERVER,
    daskjob,
    gateway_endpoint,
    gateway_name,
    job_network_policy,
    quota_problems,
    tenant_manifests,
    tenant_namespace,
)
from insitu.backends.k8s_reasons import event_problem, pod_problem, runner_exit
from insitu.backends.k8s_watch import ClusterCache, about_job
from insitu.backends.store_gateway import (
    STORE_ACCESS,
    behind_gateway,
    dataset_in_store,
    uses_store,
    write_limit,
)
from insitu.config import Settings
from insitu.errors import BackendError, InvalidInput
from insitu.gateway.policy import ADMIN_HEADER, ADMIN_PREFIX
from insitu.objectstore import state_store
from insitu.runtime.workspace import Workspace
from insitu.spec import Resources

# An image reference: [registry[:port]/]path[:tag][@digest]
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
log = logging.getLogger(__name__)


def _component(pod: dict[str, Any]) -> str | None:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT)


def _unscheduled(pods: list[dict[str, Any]]) -> str | None:
    """Why a pod waits for a node (the scheduler's message), while it may yet get one."""
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                message = condition.get("message") or "no node fits yet"
                return f"waiting for a node for pod {pod['metadata'].get('name')}: {message}"
    return None


def _starting(state: str, pods: list[dict[str, Any]]) -> str:
    """What a job whose cluster is not up yet is doing, when nothing is wrong."""
    if not pods:
        return "the Dask operator is making the job's cluster"
    return f"the job's {len(pods)} pod(s) are starting (pulling the image, joining the cluster)"


PARTS = ("runner", "scheduler", "worker")  # components of a job's own pods
LOG_TAILS = 256  # runner logs followed at once in one process (the least recently read go)
KEPT_MEMORY = 4096  # jobs remembered as kept, so late pod events read no more logs

FIELD_MANAGER = "insitu"  # who owns the fields insitu applies to the cluster
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def check_pods_reach(settings: Settings) -> None:
    """Refuse settings under which a job's pods could not reach its workspace, or API
    replicas would not share their state.

    Pods run on the cluster's nodes: a ``file://`` workspace is a folder of the server's pod,
    and a store on ``localhost`` is the pod's own loopback.
    """
    url = settings.resolved_workspace_url
    if not url.startswith("s3://"):
        raise InvalidInput(
            f"the kubernetes backend runs jobs in pods, which cannot reach the workspace {url}: "
            "set INSITU_WORKSPACE_URL to an s3:// prefix (e.g. s3://insitu-results/jobs) in "
            "a bucket the cluster reaches"
        )
    state = settings.resolved_state_url
    if not state.startswith("s3://"):
        raise InvalidInput(
            f"the kubernetes backend's API replicas would each keep code bundles and job logs "
            f"in {state}, a folder of their own pod: set INSITU_STATE_URL to an s3:// prefix "
            "(or leave it unset to use the workspace's)"
        )
    endpoint = settings.storage.endpoint_url
    host = urlsplit(endpoint).hostname if endpoint else None
    if host in LOOPBACK_HOSTS:
        raise InvalidInput(
            f"the kubernetes backend runs jobs in pods, for which the object store at "
            f"{endpoint} is their own loopback: set INSITU_STORAGE__ENDPOINT_URL to an address "
            "the cluster reaches (or leave it unset for AWS S3)"
        )


class KubernetesBackend(Backend):
    """Runs each job as a DaskJob in its tenant's namespace."""

    name = "kubernetes"

    def __init__(self, settings: Settings, api_client: Any = None) -> None:
        self.settings = settings
        self.config = settings.kubernetes
        self.server_id = server_id(settings)
        self._api_client = api_client
        self._tenants: set[str] = set()
        self._sealed: dict[str, dict[str, Any]] = {}  # gateway counts at the seal, by job
        self._lock = threading.Lock()
        self._cache: ClusterCache | None = None
        self._tails: OrderedDict[str, LogTail] = OrderedDict()  # runner logs read so far
        self._kept: OrderedDict[str, None] = OrderedDict()  # jobs whose log is kept, recent
        self._restarts: dict[str, int] = {}  # by pod: restarts whose log was read
        self._part_logs: dict[str, dict[str, bytes]] = {}  # by job: its other pods' logs
        self._collections: dict[str, list[Future[None]]] = {}  # those logs being read
        self._collecting = ThreadPoolExecutor(4, thread_name_prefix="k8s-logs")
        self._first_sync = True  # the first status pass waits for the watches' first lists
        self._closed = False

    # -- the cluster ------------------------------------------------------------------------

    @property
    def api_client(self) -> Any:
        with self._lock:
            if self._api_client is None:
                from kubernetes import client, config

                try:
                    if self.config.in_cluster:
                        config.load_incluster_config()
                    else:
                        config.load_kube_config(
                            config_file=self.config.kubeconfig, context=self.config.context
                        )
                except Exception as exc:
                    raise BackendError(
                        f"cannot configure the Kubernetes client: {exc}; set "
                        "INSITU_KUBERNETES__IN_CLUSTER=true inside the cluster, or "
                        "KUBECONFIG / INSITU_KUBERNETES__KUBECONFIG outside"
                    ) from None
                self._api_client = client.ApiClient()
            return self._api_client

    def _apis(self) -> tuple[Any, Any, Any]:
        from kubernetes import client

        api = self.api_client
        return client.CoreV1Api(api), client.CustomObjectsApi(api), client.NetworkingV1Api(api)

    @staticmethod
    def _status_code(exc: Exception) -> int | None:
        return getattr(exc, "status", None)

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """A Kubernetes API call whose failure is a BackendError naming what was tried."""
        from kubernetes.client.exceptions import ApiException

        try:
            return function(*args, **kwargs)
        except ApiException as exc:
            raise BackendError(
                f"Kubernetes refused to {what}: {exc.status} {exc.reason}: {(exc.body or '')[:300]}"
            ) from None
        except Exception as exc:
            raise BackendError(f"could not reach Kubernetes to {what}: {exc}") from None

    # -- images -----------------------------------------------------------------------------

    def _image(self, image: str | None) -> str:
        name = image or self.config.default_image
        if not name:
            raise InvalidInput(
                "the kubernetes backend runs each job in a container image: set analysis.image "
                "in the job spec (an image the cluster can pull, with the insitu runtime)"
            )
        if not _IMAGE.match(name):
            raise InvalidInput(f"analysis.image {name!r} is not a valid image reference")
        return name

    def check_image(self, image: str | None) -> None:
        self._image(image)

    def check_resources(self, resources: Resources) -> None:
        problems = quota_problems(resources, self.config)
        if problems:
            raise InvalidInput(
                "the job could never start on this cluster: " + "; ".join(problems) + ". Ask "
                "for less in resources, or ask the operator to raise the quota"
            )

    # -- tenants ------------------------------------------------------------------------------

    def _create_or_keep(self, manifest: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        core, _, networking = self._apis()
        kind, namespace = manifest["kind"], manifest["metadata"].get("namespace")
        create = {
            "Pod": lambda: core.create_namespaced_pod(namespace, manifest),
            "Service": lambda: core.create_namespaced_service(namespace, manifest),
            "NetworkPolicy": lambda: networking.create_namespaced_network_policy(
                namespace, manifest
            ),
        }[kind]
        try:
            create()
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: a tenant's namespace outlives its jobs
                raise BackendError(
                    f"Kubernetes refused to create {kind} {manifest['metadata']['name']}: "
                    f"{exc.status} {exc.reason}"
                ) from None

    def _apply(self, manifest: dict[str, Any]) -> None:
        """Create ``manifest``'s object or bring it to ``manifest`` (server-side apply, as
        insitu's field manager): a quota or a policy changed in the settings takes effect."""
        from kubernetes.client.exceptions import ApiException

        core, _, networking = self._apis()
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace")
        options = {"field_manager": FIELD_MANAGER, "force": True,
                   "_content_type": "application/apply-patch+yaml"}  # fmt: skip
        patch = {
            "Namespace": lambda: core.patch_namespace(name, manifest, **options),
            "ResourceQuota": lambda: core.patch_namespaced_resource_quota(
                name, namespace, manifest, **options
            ),
            "LimitRange": lambda: core.patch_namespaced_limit_range(
                name, namespace, manifest, **options
            ),
            "ServiceAccount": lambda: core.patch_namespaced_service_account(
                name, namespace, manifest, **options
            ),
            "NetworkPolicy": lambda: networking.patch_namespaced_network_policy(
                name, namespace, manifest, **options
            ),
        }[kind]
        try:
            patch()
        except ApiException as exc:
            raise BackendError(
                f"Kubernetes refused to apply {kind} {name}: {exc.status} {exc.reason}"
            ) from None

    def ensure_tenant(self, tenant: str) -> str:
        """Apply the tenant's namespace and its bounds (once per server start, so changed
        settings reach namespaces made before); return the namespace."""
        namespace = tenant_namespace(self.config, tenant)
        if tenant in self._tenants:
            return namespace
        for manifest in tenant_manifests(self.config, tenant, self.server_id):
            self._apply(manifest)
        self._tenants.add(tenant)
        return namespace

    # -- jobs ---------------------------------------------------------------------------------

    def manifests(self, request: LaunchRequest, token: str | None = None) -> list[dict[str, Any]]:
        """What :meth:`start` creates for a job, in order: its store gateway (when its data
        is in object storage), its NetworkPolicy and its DaskJob."""
        image = self._image(request.image)
        made: list[dict[str, Any]] = []
        if uses_store(request):
            try:
                made += gateway_manifests(
                    request,
                    settings=self.config,
                    storage=self.settings.storage,
                    server_id=self.server_id,
                    token=token or secrets.token_urlsafe(32),
                    max_write_bytes=request.max_write_bytes or write_limit(self.settings),
                )
            except ValueError as exc:
                raise BackendError(str(exc)) from None
            request = behind_gateway(request, gateway_endpoint(self.config, request.job_id))
        return [
            *made,
            job_network_policy(request, settings=self.config, server_id=self.server_id),
            daskjob(
                request,
                image=image,
                settings=self.config,
                server_id=self.server_id,
                runner_env={"INSITU_IMAGE": image},
            ),
        ]

    def _secret_token(self, name: str) -> str:
        """The token of a gateway Secret made before (a restarted server adopts it)."""
        core, _, _ = self._apis()
        secret = self._call("read the gateway's Secret", core.read_namespaced_secret, name,
                            self.config.platform_namespace)  # fmt: skip
        return base64.b64decode(secret.data[TOKEN_KEY]).decode()

    def _create_gateway(self, manifests: list[dict[str, Any]], token: str) -> str:
        """Create the gateway's objects; return the token its Secret holds."""
        from kubernetes.client.exceptions import ApiException

        core, _, _ = self._apis()
        for manifest in manifests:
            if manifest["kind"] == "Secret":
                try:
                    core.create_namespaced_secret(self.config.platform_namespace, manifest)
                except ApiException as exc:
                    if exc.status != 409:
                        raise BackendError(
                            f"Kubernetes refused the job's gateway Secret: {exc.status} "
                            f"{exc.reason}"
                        ) from None
                    token = self._secret_token(manifest["metadata"]["name"])
            else:
                self._create_or_keep(manifest)
        return token

    def _start(self, request: LaunchRequest) -> JobHandle:
        from kubernetes.client.exceptions import ApiException

        namespace = self.ensure_tenant(request.tenant)
        token = secrets.token_urlsafe(32)
        *gateway, policy, job = self.manifests(request, token)
        _, custom, _ = self._apis()
        name = job["metadata"]["name"]
        facts: dict[str, Any] = {}
        if gateway:
            facts = {
                "gateway": gateway_name(request.job_id),
                "gateway_token": self._create_gateway(gateway, token),
                "gateway_scan": dataset_in_store(request),
                "store_access": STORE_ACCESS,
            }
        try:  # without its policy the job's pods could reach anything: it does not start
            self._create_or_keep(policy)
        except BackendError:
            if gateway:
                self._delete_gateway(request.job_id)
            raise
        try:
            custom.create_namespaced_custom_object(
                DASK_GROUP, DASK_VERSION, namespace, DASKJOB_PLURAL, job
            )
        except ApiException as exc:
            if exc.status != 409:  # the same job started before a restart: adopt it
                raise BackendError(
                    f"Kubernetes refused the job's DaskJob {namespace}/{name}: "
                    f"{exc.status} {exc.reason}: {(exc.body or '')[:300]}"
                ) from None
        return JobHandle(
            "kubernetes",
            request.job_id,
            {"namespace": namespace, "name": name, "server": self.server_id, **facts},
        )

    def _start_or_explain(self, request: LaunchRequest) -> JobHandle:
        try:
            return self._start(request)
        except (BackendError, InvalidInput):
            raise
        except Exception as exc:  # connection refused, TLS, DNS: the cluster is not reachable
            host = getattr(getattr(self.api_client, "configuration", None), "host", "?")
            raise BackendError(f"could not reach the Kubernetes API at {host}: {exc}") from None

    async def start(self, request: LaunchRequest) -> JobHandle:
        return await asyncio.to_thread(self._start_or_explain, request)

    # -- what the cluster says of a job ---------------------------------------------------

    def watches(self, wait: float = 10.0) -> ClusterCache | None:
        """The watched cache of the server's pods, DaskJobs and events, started on first
        use (which waits up to ``wait`` for the first lists). None when watching is off, or
        the cache cannot be trusted now (not listed yet, or its watches keep failing): then
        each pass asks the API server for each job's objects."""
        if not self.config.watch:
            return None
        api = self.api_client
        with self._lock:
            if self._cache is None:
                self._cache = ClusterCache(
                    api,
                    server_label=f"{LABEL_SERVER}={self.server_id}",
                    namespace_prefix=self.config.namespace_prefix,
                    daskjobs=(DASK_GROUP, DASK_VERSION, DASKJOB_PLURAL),
                    resync_s=self.config.resync,
                )
                self._cache.pods.on_change = self._pod_changed
                self._cache.start()
            cache, first, self._first_sync = self._cache, self._first_sync, False
        return cache if cache.current(wait if first else 0.0) else None

    def _watching(self) -> ClusterCache | None:
        """The watches if this process follows the cluster already (its dispatcher does);
        an API replica that only serves logs asks for what it needs instead."""
        cache = self._cache
        return cache if cache is not None and cache.current() else None

    def _pods(self, namespace: str, job_id: str) -> list[dict[str, Any]]:
        core, _, _ = self._apis()
        pods = self._call(
            "list the job's pods",
            core.list_namespaced_pod,
            namespace,
            label_selector=f"{LABEL_JOB}={job_id}",
            _preload_content=False,
        )
        return list(json.loads(pods.data).get("items", []))

    def _events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        core, _, _ = self._apis()
        listed = self._call(
            "list the job's events",
            core.list_namespaced_event,
            namespace,
            field_selector="type!=Normal",
            _preload_content=False,
        )
        return about_job(json.loads(listed.data).get("items", []), namespace, name)

    def _daskjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        _, custom, _ = self._apis()
        try:
            return dict(
                custom.get_namespaced_custom_object(
                    DASK_GROUP, DASK_VERSION, namespace, DASKJOB_PLURAL, name
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise BackendError(f"could not read DaskJob {namespace}/{name}: {exc.reason}") from None

    def _observed(
        self, handle: JobHandle, cache: ClusterCache | None
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """The job's DaskJob, pods and warning events: from the watches, else asked for."""
        namespace, name = handle.data["namespace"], handle.data["name"]
        if cache is None:
            job = self._daskjob(namespace, name)
            if job is None:
                return None, [], []
            return job, self._pods(namespace, handle.job_id), self._events(namespace, name)
        job = cache.daskjob(namespace, name)
        if job is None:  # not seen yet, or gone: only the API server can tell which
            job = self._daskjob(namespace, name)
        # The job's own pods (in its namespace): not its store gateway, in the server's.
        pods = [p for p in cache.pods_of(LABEL_JOB, handle.job_id) if _component(p) in PARTS]
        return job, pods, cache.events_of(namespace, name)

    def _status_one(self, handle: JobHandle, cache: ClusterCache | None) -> BackendStatus:
        namespace, name = handle.data["namespace"], handle.data["name"]
        job, pods, events = self._observed(handle, cache)
        if job is None:
            return BackendStatus(
                BackendPhase.MISSING, detail=f"DaskJob {namespace}/{name} is gone from the cluster"
            )
        state = (job.get("status") or {}).get("jobStatus") or "JobCreated"
        runner_name = (job.get("status") or {}).get("jobRunnerPodName")
        runner = next(
            (p for p in pods if p["metadata"]["name"] == runner_name),
            next((p for p in pods if _component(p) == "runner"), None),
        )
        if state in ("Successful", "Failed"):
            code, detail = runner_exit(runner)
            if code is None and state == "Successful":
                code = 0
            return BackendStatus(BackendPhase.EXITED, exit_code=code, detail=detail)
        now = datetime.now(timezone.utc)
        for pod in pods:
            problem = pod_problem(pod, now, self.config.pending_timeout)
            if problem:
                return BackendStatus(BackendPhase.EXITED, detail=problem)
        if runner is not None and runner.get("status", {}).get("phase") in ("Failed",):
            code, detail = runner_exit(runner)
            return BackendStatus(BackendPhase.EXITED, exit_code=code, detail=detail)
        expected = int(((job.get("spec") or {}).get("cluster") or {}).get("spec", {})
                       .get("worker", {}).get("replicas", 0)) + 2  # fmt: skip
        live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
        runner_ended = (runner or {}).get("status", {}).get("phase") in ("Succeeded", "Failed")
        problem, waiting = event_problem(
            events, now, self.config.pending_timeout, 0 if runner_ended else expected - len(live)
        )
        if problem:
            return BackendStatus(BackendPhase.EXITED, detail=problem)
        if state == "Running" and runner is not None:
            return BackendStatus(BackendPhase.RUNNING)
        return BackendStatus(
            BackendPhase.PENDING, detail=waiting or _unscheduled(pods) or _starting(state, live)
        )

    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        handles = list(handles)

        def all_of() -> dict[str, BackendStatus]:
            cache = self.watches()
            return {h.job_id: self._status_one(h, cache) for h in handles}

        return await asyncio.to_thread(all_of)

    # -- logs -----------------------------------------------------------------------------

    def _kept_logs(self) -> Workspace:
        return state_store(self.settings, "logs")

    def _runner_pod(self, handle: JobHandle) -> str | None:
        runners = [p for p in self._pods_now(handle) if _component(p) == "runner"]
        return runners[0]["metadata"]["name"] if runners else None

    def _tail(self, handle: JobHandle) -> LogTail | None:
        """The runner's log as followed so far (made on first use)."""
        with self._lock:
            tail = self._tails.get(handle.job_id)
            if tail is not None:
                self._tails.move_to_end(handle.job_id)
                return tail
        pod = self._runner_pod(handle)
        if pod is None:
            return None
        namespace, limit = handle.data["namespace"], int(self.config.runner_log_bytes)

        def fetch(since: str | None) -> bytes:
            return pod_log(self.api_client, namespace, pod, container="runner",
                           since_time=since, timestamps=True, limit_bytes=2 * limit)  # fmt: skip

        with self._lock:
            tail = self._tails.setdefault(handle.job_id, LogTail(fetch, limit))
            while len(self._tails) > LOG_TAILS:
                self._tails.popitem(last=False)
            return tail

    def _read_log(self, handle: JobHandle, offset: int) -> tuple[bytes, int]:
        kept = self._kept_logs()
        name = f"{handle.job_id}.log"
        size = kept.size(name)
        if size is not None:  # the job ended: its log is kept where every replica reads
            with self._lock:
                self._tails.pop(handle.job_id, None)
            if offset >= size:
                return b"", offset
            with kept.open(name) as log:
                log.seek(offset)
                data = log.read(LOG_CHUNK)
            return data, offset + len(data)
        tail = self._tail(handle)
        if tail is None:
            return b"", offset
        if offset + LOG_CHUNK > len(tail.data):  # the reader has all we have: ask for more
            with contextlib.suppress(Exception):
                tail.refresh()
        chunk = tail.read(offset, LOG_CHUNK)
        return chunk, offset + len(chunk)

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        return await asyncio.to_thread(self._read_log, handle, offset)

    def _pod_changed(self, pod: dict[str, Any], *, going: bool = False) -> Future[None] | None:
        """A watch saw a pod change: read the log of a scheduler or worker that is going
        (deleted with its cluster as the job ends, or ``going`` as its job is cleaned up),
        or of the run before its restart (an out-of-memory kill, say), while Kubernetes
        still has it."""
        component = _component(pod)
        metadata = pod.get("metadata") or {}
        job_id = (metadata.get("labels") or {}).get(LABEL_JOB)
        name, namespace = metadata.get("name"), metadata.get("namespace")
        if component not in ("scheduler", "worker") or not (job_id and name and namespace):
            return None
        going = going or bool(metadata.get("deletionTimestamp"))
        restarts = sum(
            int(c.get("restartCount") or 0)
            for c in (pod.get("status") or {}).get("containerStatuses") or []
        )
        with self._lock:
            if job_id in self._kept:
                return None
            restarted = not going and restarts > self._restarts.get(name, 0)
            if not (going or restarted):
                return None
            self._restarts[name] = restarts
            part = name if going else f"{name} (before restart {restarts})"
            parts = self._part_logs.setdefault(job_id, {})
            if part in parts:
                return None
            parts[part] = b""  # claimed: each part's log is read once
            if not self._closed:
                future = self._collecting.submit(
                    self._collect, job_id, namespace, name, part, component, restarted
                )
                self._collections.setdefault(job_id, []).append(future)
                return future
        self._collect(job_id, namespace, name, part, component, restarted)  # no pool any more
        return None

    def _collect(
        self, job_id: str, namespace: str, pod: str, part: str, container: str, previous: bool
    ) -> None:
        limit = int(self.config.worker_log_bytes)
        try:  # the end of it: how the part ended
            data = pod_log(self.api_client, namespace, pod, container=container,
                           previous=previous, limit_bytes=None,
                           tail_lines=max(limit // 40, 100))  # fmt: skip
        except Exception as exc:
            data = f"[insitu: the log of pod {pod} could not be read: {exc}]\n".encode()
        if len(data) > limit:
            data = b"[insitu: earlier lines left out]\n" + data[-limit:]
        with self._lock:
            if job_id not in self._kept:
                self._part_logs.setdefault(job_id, {})[part] = data

    def _keep_log(self, handle: JobHandle) -> None:
        """Keep the job's log where every replica finds it once its pods are gone: the
        runner's log, then the end of each scheduler's and worker's."""
        kept = self._kept_logs()
        name = f"{handle.job_id}.log"
        if kept.size(name) is not None:
            return
        tail = self._tail(handle)
        if tail is not None:
            with contextlib.suppress(Exception):
                tail.refresh(final=True)
        for pod in self._pods_now(handle):  # the parts still here, going now
            self._pod_changed(pod, going=True)
        with self._lock:
            collections = self._collections.pop(handle.job_id, [])
        futures.wait(collections, timeout=60)
        with self._lock:
            parts = self._part_logs.pop(handle.job_id, {})
            self._tails.pop(handle.job_id, None)
            self._kept[handle.job_id] = None
            while len(self._kept) > KEPT_MEMORY:
                self._kept.popitem(last=False)
            for part in parts:
                self._restarts.pop(part.split(" ")[0], None)
        text = bytearray(tail.data if tail is not None else b"")
        for part, data in sorted(parts.items()):
            if data:
                text += f"\n---- the log of {part} ----\n".encode() + data
        kept.write_bytes(name, bytes(text))

    def _pods_now(self, handle: JobHandle) -> list[dict[str, Any]]:
        """The job's pods as the watches have them, else as the API server lists them (none
        when it cannot be reached)."""
        cache = self._watching()
        if cache is not None:
            return cache.pods_of(LABEL_JOB, handle.job_id)
        with contextlib.suppress(BackendError):
            return self._pods(handle.data["namespace"], handle.job_id)
        return []

    # -- the job's store gateway ------------------------------------------------------------

    def _gateway_call(self, handle: JobHandle, method: str, what: str) -> dict[str, Any]:
        """Ask the job's gateway (``counts`` or ``seal``) with the server's token."""
        name, port = handle.data["gateway"], self.config.gateway_port
        namespace, token = self.config.platform_namespace, handle.data["gateway_token"]
        if self.config.in_cluster:  # straight to its Service, as the policy allows
            import httpx

            url = f"http://{name}.{namespace}.svc:{port}{ADMIN_PREFIX}{what}"
            try:
                response = httpx.request(method, url, headers={ADMIN_HEADER: token}, timeout=30)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise BackendError(f"could not reach the job's store gateway: {exc}") from None
            return dict(response.json())
        path = f"/api/v1/namespaces/{namespace}/services/{name}:{port}/proxy{ADMIN_PREFIX}{what}"
        response = self._call(
            f"reach the job's store gateway ({what})",
            self.api_client.call_api,
            path,
            method,
            header_params={ADMIN_HEADER: token, "Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        return dict(json.loads(response.data))

    async def seal(self, handle: JobHandle) -> None:
        """End the job's store access; keep the gateway's last counts."""
        if handle.data.get("gateway"):
            counts = await asyncio.to_thread(self._gateway_call, handle, "POST", "seal")
            with self._lock:
                self._sealed[handle.job_id] = counts

    async def bytes_scanned(self, handle: JobHandle) -> Metered | None:
        """The dataset bytes the job's store gateway let through."""
        if not handle.data.get("gateway_scan"):
            return None
        with self._lock:
            counts = self._sealed.pop(handle.job_id, None)
        if counts is None:
            try:
                counts = await asyncio.to_thread(self._gateway_call, handle, "GET", "counts")
            except BackendError:
                return None
        return Metered(float(counts["scanned"]), "counted by insitu's store gateway")

    def _delete_gateway(self, job_id: str) -> None:
        from kubernetes.client.exceptions import ApiException

        core, _, networking = self._apis()
        name, namespace = gateway_name(job_id), self.config.platform_namespace
        for delete in (
            core.delete_namespaced_pod,
            core.delete_namespaced_service,
            core.delete_namespaced_secret,
            networking.delete_namespaced_network_policy,
        ):
            with contextlib.suppress(ApiException):
                delete(name, namespace)

    # -- stopping -----------------------------------------------------------------------------

    def _delete(self, handle: JobHandle) -> None:
        from kubernetes.client.exceptions import ApiException

        namespace, name = handle.data["namespace"], handle.data["name"]
        _, custom, networking = self._apis()
        try:
            custom.delete_namespaced_custom_object(
                DASK_GROUP,
                DASK_VERSION,
                namespace,
                DASKJOB_PLURAL,
                name,
                body={"propagationPolicy": "Background"},
            )
        except ApiException as exc:
            if exc.status != 404:
                raise BackendError(
                    f"could not delete DaskJob {namespace}/{name}: {exc.reason}"
                ) from None
        with contextlib.suppress(ApiException):
            networking.delete_namespaced_network_policy(f"{name}-network", namespace)
        if handle.data.get("gateway"):
            self._delete_gateway(handle.job_id)

    def _cleanup(self, handle: JobHandle) -> None:
        try:
            self._keep_log(handle)
        except Exception as exc:  # the store is down: the job's objects go all the same
            log.warning("could not keep the log of job %s: %s", handle.job_id, exc)
        self._delete(handle)

    async def cancel(self, handle: JobHandle, grace: float = 5.0) -> None:
        await asyncio.to_thread(self._cleanup, handle)

    async def cleanup(self, handle: JobHandle) -> None:
        await asyncio.to_thread(self._cleanup, handle)

    def _orphans(self, live_job_ids: set[str]) -> list[str]:
        _, custom, _ = self._apis()
        listed = self._call(
            "list DaskJobs",
            custom.list_cluster_custom_object,
            DASK_GROUP,
            DASK_VERSION,
            DASKJOB_PLURAL,
            label_selector=f"{LABEL_SERVER}={self.server_id}",
        )
        removed = []
        for item in listed.get("items", []):
            labels = item["metadata"].get("labels", {})
            job_id = labels.get(LABEL_JOB)
            if job_id and job_id not in live_job_ids:
                handle = JobHandle(
                    "kubernetes",
                    job_id,
                    {"namespace": item["metadata"]["namespace"], "name": item["metadata"]["name"]},
                )
                self._cleanup(handle)
                removed.append(job_id)
        # Gateways whose job is over (their DaskJob may be gone already).
        core, _, _ = self._apis()
        secrets_listed = self._call(
            "list the store gateways",
            core.list_namespaced_secret,
            self.config.platform_namespace,
            label_selector=f"{LABEL_SERVER}={self.server_id}",
            _preload_content=False,
        )
        for item in json.loads(secrets_listed.data).get("items", []):
            labels = item["metadata"].get("labels", {})
            job_id = labels.get(LABEL_JOB)
            if labels.get(LABEL_COMPONENT) == GATEWAY_COMPONENT and job_id not in live_job_ids:
                self._delete_gateway(job_id)
                if job_id not in removed:
                    removed.append(job_id)
        return removed

    async def cleanup_orphans(self, live_job_ids: set[str]) -> list[str]:
        return await asyncio.to_thread(self._orphans, live_job_ids)

    async def close(self) -> None:
        with self._lock:
            cache, self._cache = self._cache, None
        if cache is not None:
            await asyncio.to_thread(cache.close)
        with self._lock:
            self._closed = True
        self._collecting.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            api, self._api_client = self._api_client, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()
