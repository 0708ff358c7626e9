"""All of insitu's configuration, in one pydantic-settings model.

Every field can be set from the environment with the ``INSITU_`` prefix; nested
sections use a double underscore, e.g. ``INSITU_LIMITS__MAX_RESULT_BYTES=64MiB``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from insitu.units import parse_duration, parse_size

ByteSize = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]


class ServerSettings(BaseModel):
    """Where the API listens, and how much of it runs at once."""

    host: str = Field("127.0.0.1", description="Interface the API binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the API.")
    threads: int = Field(
        12,
        ge=1,
        description="Worker threads of one API process for requests' database work; its "
        "connection pool keeps as many connections (plus the dispatcher's). More threads "
        "than this only wait for the interpreter's lock (profiled in docs/profile-api.md).",
    )
    processes: int = Field(
        1,
        ge=1,
        description="Processes serving the API on the one port (PostgreSQL only): the first "
        "also runs the dispatcher and the warm pool, the others serve requests only, so a "
        "busy API uses more than one core.",
    )


class LimitSettings(BaseModel):
    """Platform-wide ceilings; a job spec may ask for less, never more."""

    max_result_bytes: ByteSize = Field(
        parse_size("256MiB"), description="Largest result a job may return, whatever its spec says."
    )
    max_workers: int = Field(8, ge=1, description="Most Dask workers one job may ask for.")
    max_threads_per_worker: int = Field(8, ge=1, description="Most threads per worker.")
    max_memory_per_worker: ByteSize = Field(
        parse_size("16GiB"), description="Most memory per worker."
    )
    max_timeout: Seconds = Field(parse_duration("24h"), description="Longest wall time of a job.")
    max_code_bundle_bytes: ByteSize = Field(
        parse_size("20MiB"), description="Largest uploaded code bundle (compressed)."
    )
    max_code_bundle_unpacked_bytes: ByteSize = Field(
        parse_size("100MiB"), description="Largest code bundle once unpacked (headers included)."
    )
    max_code_bundle_files: int = Field(
        10_000, ge=1, description="Most files and folders in one code bundle."
    )
    max_request_bytes: ByteSize = Field(
        parse_size("1MiB"),
        description="Largest request body the API reads (code bundles have their own limit).",
    )
    max_queued_jobs_per_user: int = Field(
        100,
        ge=1,
        description="Most jobs one user may have waiting in the queue; more are refused with "
        "429 until some have started.",
    )
    max_output_bytes: ByteSize = Field(
        parse_size("2TiB"),
        description="Most bytes of outputs (insitu.Output, kept next to the data) one job may "
        "write, whatever the storage quotas leave.",
    )
    max_output_objects: int = Field(
        1_000_000, ge=1, description="Most objects (chunks) the outputs of one job may take."
    )
    result_fraction: float = Field(
        0.5,
        gt=0,
        description="A job may return at most this fraction of the bytes it scanned "
        "(on top of its absolute cap), so that raw data never leaves.",
    )


class DispatcherSettings(BaseModel):
    """How queued jobs are claimed and watched."""

    id: str = Field(
        default_factory=socket.gethostname,
        description="Stable name of this dispatcher; after a restart it re-adopts its own jobs.",
    )
    poll_interval: Seconds = Field(0.2, description="Seconds between reconciliation passes.")
    max_running_jobs: int = Field(
        4, ge=1, description="Jobs this dispatcher runs at once; the rest wait in the queue."
    )
    lease: Seconds = Field(
        30.0, description="A job whose dispatcher has not renewed it this long may be adopted."
    )
    cancel_grace: Seconds = Field(5.0, description="Seconds a cancelled job gets to stop cleanly.")


class StorageSettings(BaseModel):
    """Object storage for datasets and job workspaces (AWS S3 or an S3-compatible server)."""

    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://127.0.0.1:8333 for SeaweedFS; unset for AWS."
    )
    region: str = Field("us-east-1", description="Region of the buckets.")
    access_key_id: SecretStr | None = Field(
        None, description="The platform's own key (catalog, workspaces); never given to jobs."
    )
    secret_access_key: SecretStr | None = Field(None, description="Secret of the platform's key.")
    scoping: Literal["none", "sts"] = Field(
        "none",
        description="'sts': each job gets an AssumeRole session limited to its dataset and "
        "results prefixes; 'none': jobs get the job key below and the runtime opens only "
        "the job's dataset.",
    )
    job_role_arn: str | None = Field(None, description="Role jobs assume when scoping is 'sts'.")
    job_access_key_id: SecretStr | None = Field(
        None, description="Key handed to jobs when the store cannot scope credentials."
    )
    job_secret_access_key: SecretStr | None = Field(None, description="Secret of the job key.")
    credential_lifetime: Seconds = Field(
        3600.0, description="Lifetime of a job's scoped credentials (at least 15 min on AWS)."
    )
    presign_expiry: Seconds = Field(300.0, description="How long a result download URL works.")


class ReaderSettings(BaseModel):
    """How jobs read their selection: the size of a Dask task and the decoder behind it."""

    block_bytes: ByteSize = Field(
        parse_size("128MiB"),
        ge=1,
        description="Target decoded size of one read block (one Dask task): whole chunks "
        "(or shards) are grouped up to it, so an array of millions of small chunks does not "
        "flood the scheduler. Capped per job by its workers' memory.",
    )
    engine: Literal["auto", "zarrs", "zarr"] = Field(
        "auto",
        description="Codec pipeline that decodes chunks: 'zarrs' (Rust, parallel), 'zarr' "
        "(zarr-python's default) or 'auto' (zarrs where it is installed, else zarr). zarrs "
        "decodes only where every byte still passes the job's byte count; elsewhere zarr does.",
    )
    concurrency: int = Field(
        32, ge=1, description="Chunks of one block fetched from the store at once."
    )


class LocalBackendSettings(BaseModel):
    """The local backend: one process with a Dask LocalCluster per job."""

    worker_processes: bool = Field(
        True, description="Run Dask workers as separate processes (False: threads in the runner)."
    )
    warm_pool_workers: int = Field(
        0,
        ge=0,
        description="Dask workers kept warm for small jobs (0: no warm pool). Small jobs start "
        "in well under a second on them (for courses).",
    )
    warm_pool_threads: int = Field(2, ge=1, description="Threads of each warm worker.")
    warm_pool_memory: ByteSize = Field(
        parse_size("2GiB"), description="Memory of each warm worker."
    )
    warm_pool_max_workers: int = Field(
        1, ge=1, description="Jobs asking for at most this many workers use the warm pool."
    )
    installed_analyses: list[str] = Field(
        default_factory=lambda: ["ophys_analyses", "em_analyses"],
        description="Top-level packages whose functions every user may name as an entrypoint "
        "on the local backend (the operator's installed analyses).",
    )
    allow_untrusted_code: bool = Field(
        False,
        description="Let every user upload code and name any entrypoint on the local backend. "
        "Local jobs run as the server's own user and could read its files (tokens, database): "
        "turn this on only where every user is trusted with them. Admins may always.",
    )


class DockerBackendSettings(BaseModel):
    """The docker backend: each job's scheduler, workers and runner as containers."""

    base_url: str | None = Field(
        None,
        description="Docker engine to use, e.g. unix:///var/run/docker.sock; default: "
        "DOCKER_HOST or the local engine.",
    )
    default_image: str | None = Field(
        None, description="Image for jobs whose spec names none (analysis.image)."
    )
    user: str = Field(
        "auto",
        description="uid:gid the containers run as. 'auto': the server's own uid:gid, or "
        "10001:10001 when the server runs as root. Never root.",
    )
    pull: bool = Field(
        False, description="Pull an image the engine does not have (needs a registry)."
    )
    runner_memory: ByteSize = Field(
        parse_size("2GiB"), description="Memory of the container that runs the analysis."
    )
    scheduler_memory: ByteSize = Field(
        parse_size("1GiB"), description="Memory of the job's Dask scheduler container."
    )
    tmp_size: ByteSize = Field(
        parse_size("1GiB"), description="Size of each container's /tmp (the root is read-only)."
    )
    pids_limit: int = Field(1024, ge=64, description="Most processes and threads per container.")
    worker_start_timeout: Seconds = Field(
        120.0, description="How long a job waits for its Dask workers to join."
    )
    warm_pool_size: int = Field(
        0,
        ge=0,
        le=64,
        description="Sandboxes kept started and waiting (gateway, scheduler, workers and "
        "runner of warm_pool_image): a job that fits one starts in it at once; each sandbox "
        "serves one job and is removed with it. 0 turns the pool off.",
    )
    warm_pool_image: str | None = Field(
        None, description="Image of the warm sandboxes; default: default_image."
    )
    warm_pool_workers: int = Field(1, ge=1, description="Dask workers of each warm sandbox.")
    warm_pool_threads: int = Field(2, ge=1, description="Threads of each warm sandbox's workers.")
    warm_pool_memory: ByteSize = Field(
        parse_size("2GiB"), description="Memory of each warm sandbox's workers."
    )


class TenantQuota(BaseModel):
    """What one tenant's namespace may use at once (a ResourceQuota and a LimitRange)."""

    cpu: str = Field("16", description="Most CPU the tenant's pods may request and use.")
    memory: str = Field("64Gi", description="Most memory the tenant's pods may request and use.")
    pods: int = Field(64, ge=1, description="Most pods at once.")
    jobs: int = Field(8, ge=1, description="Most DaskJobs at once.")
    gpus: int = Field(0, ge=0, description="Most GPUs at once.")
    container_cpu: str = Field(
        "8", description="Most CPU of one container (a worker's threads_per_worker)."
    )
    container_memory: str = Field("16Gi", description="Most memory of one container.")


class KubernetesBackendSettings(BaseModel):
    """The kubernetes backend: a DaskJob of the dask-kubernetes operator per job."""

    in_cluster: bool = Field(
        False, description="Use the pod's service account (inside the cluster), not a kubeconfig."
    )
    kubeconfig: str | None = Field(None, description="Path of a kubeconfig (default: KUBECONFIG).")
    context: str | None = Field(None, description="kubeconfig context to use.")
    namespace_prefix: str = Field(
        "insitu-tenant-", description="Tenants' namespaces are this prefix plus the tenant name."
    )
    job_service_account: str = Field(
        "insitu-job", description="Service account of job pods in each tenant namespace."
    )
    platform_namespace: str = Field(
        "insitu",
        description="Namespace of the insitu server, where each job's store gateway runs.",
    )
    gateway_image: str | None = Field(
        None,
        description="Image of the jobs' store gateway pods: the server's own image (the chart "
        "sets it). Needed for jobs whose data is in object storage.",
    )
    gateway_service_account: str = Field(
        "insitu-gateway",
        description="Service account of the store gateway pods; its cloud role (IRSA) reads "
        "datasets and writes workspaces. Job pods get no role at all.",
    )
    gateway_port: int = Field(8080, ge=1024, le=65535, description="Port of the store gateways.")
    server_pod_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "insitu"},
        description="Labels of the server's pods, which alone may ask a gateway for its "
        "counts or seal it (the chart sets them).",
    )
    default_image: str | None = Field(None, description="Image for specs that name none.")
    data_zone: str | None = Field(
        None, description="Availability zone of the data; job pods are pinned to it."
    )
    bucket_zones: dict[str, str] = Field(
        default_factory=dict, description="Zone per bucket, where buckets live in several zones."
    )
    zone_label: str = Field("topology.kubernetes.io/zone", description="Node label of zones.")
    spot_toleration: bool = Field(
        True, description="Workers tolerate the spot pool's taint (insitu.io/spot=true)."
    )
    worker_node_selector: dict[str, str] = Field(
        default_factory=dict,
        description='Node labels worker pods need, e.g. {"insitu.io/pool": "cpu-spot"} '
        "(the terraform output job_node_selector).",
    )
    store_cidrs: list[str] = Field(
        default_factory=list,
        description="Address ranges of the object store that the store gateways may reach "
        "(e.g. the region's S3 prefix list); empty: any address on the store port. Job pods "
        "reach only their gateway.",
    )
    store_port: int = Field(443, ge=1, le=65535, description="Port of the object store.")
    operator_namespace: str = Field(
        "dask-operator",
        description="Namespace of the dask-kubernetes operator (it reaches the schedulers).",
    )
    pending_timeout: Seconds = Field(
        parse_duration("10m"),
        description="A job whose pods cannot be scheduled (no node fits, the tenant's quota "
        "refuses them) this long fails, saying why. The runner waits for its workers this "
        "long plus a minute, so the reason is always Kubernetes'.",
    )
    watch: bool = Field(
        True,
        description="Follow the server's pods, DaskJobs and tenants' warning events with "
        "watches (one cache for all jobs); off: ask for each job's objects on every pass.",
    )
    resync: Seconds = Field(
        parse_duration("5m"), ge=30, description="Read the watched lists whole again this often."
    )
    runner_log_bytes: ByteSize = Field(
        parse_size("64MiB"), description="Most of a runner's log kept (and shown) per job."
    )
    worker_log_bytes: ByteSize = Field(
        parse_size("256KiB"),
        description="The end of each scheduler's and worker's log kept in the job's log.",
    )
    scheduler_memory: str = Field("1Gi", description="Memory of a job's scheduler pod.")
    runner_memory: str = Field("2Gi", description="Memory of a job's runner pod.")
    quota: TenantQuota = Field(default_factory=TenantQuota)


class Settings(BaseSettings):
    """insitu's settings. Read once per process with :func:`get_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="INSITU_", env_nested_delimiter="__", extra="ignore"
    )

    home: Path = Field(
        default_factory=lambda: Path.home() / ".insitu",
        description="Directory for the embedded database, job workspaces and the admin token.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the job database; default is SQLite under home. "
        "Use postgresql+psycopg://... in production.",
    )
    backend: Literal["local", "docker", "kubernetes", "noop"] = Field(
        "local",
        description="Execution backend: 'local' (processes on this machine), 'docker' "
        "(each job in containers from its image) or 'kubernetes' (a DaskJob per job); "
        "'noop' (benchmarks and tests only) ends every job at once, having run nothing.",
    )
    workspace_url: str | None = Field(
        None,
        description="Where job inputs, logs and results live (a file:// or s3:// prefix); "
        "default is home/jobs.",
    )
    state_url: str | None = Field(
        None,
        description="Where the server keeps what every API replica must see: uploaded code "
        "bundles and the logs of ended jobs (a file:// or s3:// prefix). Default: home for a "
        "file:// workspace, else the workspace's _server prefix (no job id looks like it).",
    )
    url: str = Field("http://127.0.0.1:8000", description="Base URL clients use to reach the API.")
    token: str | None = Field(None, description="API token the client sends.")
    admin_token: SecretStr | None = Field(
        None,
        min_length=32,
        description="The admin's API token, e.g. from a Kubernetes Secret: the first start "
        "gives the admin user this token instead of writing a new one under home (whose "
        "file a pod's disk would lose). At least 32 characters.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    dispatcher: DispatcherSettings = Field(default_factory=DispatcherSettings)
    local: LocalBackendSettings = Field(default_factory=LocalBackendSettings)
    docker: DockerBackendSettings = Field(default_factory=DockerBackendSettings)
    kubernetes: KubernetesBackendSettings = Field(default_factory=KubernetesBackendSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    reader: ReaderSettings = Field(default_factory=ReaderSettings)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        """A relative or ``~`` home becomes absolute: job processes run in other folders."""
        return home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force, defaulting to SQLite under ``home``."""
        return self.database_url or f"sqlite:///{self.home / 'insitu.db'}"

    @property
    def resolved_workspace_url(self) -> str:
        """The URL prefix under which each job gets its own workspace."""
        return (self.workspace_url or (self.home / "jobs").as_uri()).rstrip("/")

    @property
    def resolved_state_url(self) -> str:
        """Where bundles and kept logs live: shared by every replica wherever jobs' are."""
        if self.state_url:
            return self.state_url.rstrip("/")
        workspace = self.resolved_workspace_url
        return self.home.as_uri() if workspace.startswith("file://") else f"{workspace}/_server"

    @property
    def admin_token_path(self) -> Path:
        """Where the first start writes the admin token (mode 600)."""
        return self.home / "admin-token"

    def ensure_home(self) -> Path:
        """Create ``home`` (mode 700) if needed and return it."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        return self.home


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
