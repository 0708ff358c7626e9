"""Docker for the tests: the engine, and images built here with no registry.

The base images are Debian root filesystems made by ``debootstrap`` and imported with
``docker import`` (``examples/base-image/debian.sh``; kept in the engine between runs).
Analysis images are built on them with ``insitu image build``'s machinery, with the
host's CA bundle so that pip reaches PyPI through the TLS-intercepting proxy.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from helpers import missing

ROOT = Path(__file__).resolve().parents[1]
BASE_SCRIPT = ROOT / "examples" / "base-image" / "debian.sh"
BASE_IMAGE = "insitu-base:bookworm"  # Debian 12, Python 3.11
OLD_PYTHON_IMAGE = "insitu-base:bullseye"  # Debian 11, Python 3.9: too old for insitu
NO_PYTHON_IMAGE = "insitu-test-no-python:latest"
OPHYS_IMAGE = "insitu-ophys:test"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LABEL_JOB = "insitu.io/job-id"


def engine() -> Any:
    """A client of the local Docker engine, or skip (fail under INSITU_REQUIRE=docker)."""
    try:
        from insitu.images import docker_client

        return docker_client()
    except Exception as exc:
        missing("docker", str(exc))


def ca_bundle() -> Path | None:
    return HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None


def debian_base(tag: str = BASE_IMAGE, suite: str = "bookworm") -> str:
    """A Debian base image with Python on PATH, built once per engine."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        missing("docker", "building a base image needs root and debootstrap")
    env = {**os.environ, "SUITE": suite}
    done = subprocess.run(
        ["bash", str(BASE_SCRIPT), tag], env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"{BASE_SCRIPT} {tag} failed:\n{done.stdout}\n{done.stderr}")
    return tag


def no_python_image(client: Any) -> str:
    """An image with a shell-less, Python-less root filesystem: one text file."""
    if client.images.list(name=NO_PYTHON_IMAGE):
        return NO_PYTHON_IMAGE
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = b"not an analysis image\n"
        member = tarfile.TarInfo("README")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    repository, tag = NO_PYTHON_IMAGE.split(":")
    client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
    return NO_PYTHON_IMAGE


def job_containers(client: Any, job_id: str | None = None) -> list[Any]:
    """Containers of one job (or of every insitu job) on the engine, stopped ones included."""
    label = f"{LABEL_JOB}={job_id}" if job_id else LABEL_JOB
    return list(client.containers.list(all=True, filters={"label": label}, ignore_removed=True))


def prune_test_images(client: Any) -> None:
    """Remove analysis images that rebuilds left untagged (they carry insitu's label)."""
    client.images.prune(filters={"dangling": True, "label": "insitu.io/runtime-version"})
