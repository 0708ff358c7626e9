"""Execution backends: where a job's Dask cluster and runner run."""

from __future__ import annotations

from insitu.backends.base import Backend, BackendPhase, BackendStatus, JobHandle, LaunchRequest
from insitu.config import Settings

__all__ = ["Backend", "BackendPhase", "BackendStatus", "JobHandle", "LaunchRequest", "make_backend"]


def make_backend(settings: Settings) -> Backend:
    """The backend named in the settings."""
    if settings.backend == "local":
        from insitu.backends.local import LocalBackend

        return LocalBackend(settings)
    if settings.backend == "docker":
        from insitu.backends.docker_backend import DockerBackend

        return DockerBackend(settings)
    if settings.backend == "kubernetes":
        from insitu.backends.kubernetes_backend import KubernetesBackend

        return KubernetesBackend(settings)
    if settings.backend == "noop":
        from insitu.backends.noop import NoopBackend

        return NoopBackend(settings)
    raise ValueError(f"unknown backend {settings.backend!r}")  # pragma: no cover
