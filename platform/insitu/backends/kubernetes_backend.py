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
import re
import secrets
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
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
    job_log_path,
    read_log,
    server_id,
)
from insitu.backends.k8s_gateway import TOKEN_KEY, gateway_manifests
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
from insitu.spec import Resources

# An image reference: [registry[:port]/]path[:tag][@digest]
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._/-][a-z0-9]+)*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def out_of_memory(component: str | None, name: str) -> str:
    """What to do about a container of ``component`` that the kernel killed for memory."""
    if component == "worker":
        return (
            f"a worker (pod {name}) ran out of memory (OOMKilled): ask for more "
            "resources.memory_per_worker, or select less per task"
        )
    if component == "runner":
        return (
            f"the job's runner (pod {name}) ran out of memory (OOMKilled): the analysis brought "
            "too much into it; reduce before returning (results are small), or ask the "
            "operator for more INSITU_KUBERNETES__RUNNER_MEMORY"
        )
    return (
        f"pod {name} ran out of memory (OOMKilled); ask the operator for more "
        "INSITU_KUBERNETES__SCHEDULER_MEMORY"
    )


def pod_problem(pod: dict[str, Any], now: datetime, pending_timeout: float) -> str | None:
    """A reason a person can act on, when a pod of the job cannot run; else None."""
    metadata = pod.get("metadata", {})
    name = metadata.get("name", "a pod")
    component = (metadata.get("labels") or {}).get(LABEL_COMPONENT)
    status = pod.get("status", {})
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _PULL_ERRORS:
            return (
                f"the image {container.get('image')!r} cannot be pulled ({reason}: "
                f"{waiting.get('message', 'no message')}); check its name and that the "
                "cluster may pull it"
            )
        if reason in _CONFIG_ERRORS:
            return f"pod {name} cannot start its container ({reason}: {waiting.get('message')})"
        terminated = (container.get("state") or {}).get("terminated") or {}
        # A container restarted after the kernel killed it runs again, but will again.
        last = (container.get("lastState") or {}).get("terminated") or {}
        if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
            return out_of_memory(component, name)
        if reason == "CrashLoopBackOff":
            restarts = container.get("restartCount", 0)
            exited = f"exit code {last['exitCode']}" if "exitCode" in last else "no exit code"
            detail = f": {last['reason']}" if last.get("reason") else ""
            return (
                f"pod {name} keeps crashing (CrashLoopBackOff after {restarts} restarts, "
                f"{exited}{detail}); check that analysis.image runs the insitu runtime"
            )
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            since = _parse_time(condition.get("lastTransitionTime")) or now
            if (now - since).total_seconds() >= pending_timeout:
                return (
                    f"pod {name} could not be scheduled for {pending_timeout:.0f} s: "
                    f"{condition.get('message', 'no node fits')}; ask for fewer or smaller "
                    "workers, or add nodes in the data's zone"
                )
    return None


def runner_exit(pod: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """Exit code and a reason from the runner pod's final state."""
    if pod is None:
        return None, None
    status = pod.get("status", {})
    if status.get("reason") == "DeadlineExceeded":
        return None, "the runner pod reached its deadline (activeDeadlineSeconds)"
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            oom = terminated.get("reason") == "OOMKilled"
            name = pod.get("metadata", {}).get("name", "the runner's pod")
            return terminated.get("exitCode"), out_of_memory("runner", name) if oom else None
    return None, None


FIELD_MANAGER = "insitu"  # who owns the fields insitu applies to the cluster
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


def check_pods_reach(settings: Settings) -> None:
    """Refuse settings under which a job's pods could not reach its workspace.

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
        self.log_dir = settings.home / "logs"
        self._api_client = api_client
        self._tenants: set[str] = set()
        self._sealed: dict[str, dict[str, Any]] = {}  # gateway counts at the seal, by job
        self._lock = threading.Lock()

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
                    max_write_bytes=write_limit(self.settings),
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

    def _pods(self, namespace: str, job_id: str) -> list[dict[str, Any]]:
        core, _, _ = self._apis()
        pods = self._call(
            "list the job's pods",
            core.list_namespaced_pod,
            namespace,
            label_selector=f"{LABEL_JOB}={job_id}",
            _preload_content=False,
        )
        import json

        return list(json.loads(pods.data).get("items", []))

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

    def _status_one(self, handle: JobHandle) -> BackendStatus:
        namespace, name = handle.data["namespace"], handle.data["name"]
        job = self._daskjob(namespace, name)
        if job is None:
            return BackendStatus(
                BackendPhase.MISSING, detail=f"DaskJob {namespace}/{name} is gone from the cluster"
            )
        state = (job.get("status") or {}).get("jobStatus") or "JobCreated"
        pods = self._pods(namespace, handle.job_id)
        runner_name = (job.get("status") or {}).get("jobRunnerPodName")
        runner = next(
            (p for p in pods if p["metadata"]["name"] == runner_name),
            next(
                (
                    p
                    for p in pods
                    if p["metadata"].get("labels", {}).get("insitu.io/component") == "runner"
                ),
                None,
            ),
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
        if state == "Running" and runner is not None:
            return BackendStatus(BackendPhase.RUNNING)
        return BackendStatus(BackendPhase.PENDING)

    async def status(self, handles: Iterable[JobHandle]) -> dict[str, BackendStatus]:
        handles = list(handles)

        def all_of() -> dict[str, BackendStatus]:
            return {h.job_id: self._status_one(h) for h in handles}

        return await asyncio.to_thread(all_of)

    # -- logs -----------------------------------------------------------------------------

    def log_path(self, job_id: str) -> Path:
        return job_log_path(self.settings, job_id)

    def _runner_log(self, handle: JobHandle) -> bytes | None:
        namespace = handle.data["namespace"]
        core, _, _ = self._apis()
        runners = [
            p
            for p in self._pods(namespace, handle.job_id)
            if p["metadata"].get("labels", {}).get("insitu.io/component") == "runner"
        ]
        if not runners:
            return None
        response = self._call(
            "read the runner's log",
            core.read_namespaced_pod_log,
            runners[0]["metadata"]["name"],
            namespace,
            _preload_content=False,
        )
        return bytes(response.data)

    def _read_log(self, handle: JobHandle, offset: int) -> tuple[bytes, int]:
        path = self.log_path(handle.job_id)
        if path.exists():  # kept when the job's pods went
            return read_log(path, offset)
        try:
            data = self._runner_log(handle) or b""
        except BackendError:
            data = b""
        chunk = data[offset : offset + LOG_CHUNK]
        return chunk, offset + len(chunk)

    async def logs(self, handle: JobHandle, offset: int = 0) -> tuple[bytes, int]:
        return await asyncio.to_thread(self._read_log, handle, offset)

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
        path = self.log_path(handle.job_id)
        if not path.exists():
            with contextlib.suppress(BackendError):
                log = self._runner_log(handle)
                if log is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(log)
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
            api, self._api_client = self._api_client, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()
