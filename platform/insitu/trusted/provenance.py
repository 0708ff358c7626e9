"""The provenance record of a job, written by the server from its own records.

It is kept in the database and served as ``provenance.json``; a file of that name the
job wrote is never served. What the job said about itself is kept apart, under
``reported_by_job``, validated and bounded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from insitu import __version__
from insitu.db.models import Job
from insitu.trusted.report import JobReport


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def build(
    job: Job,
    results: list[dict[str, Any]],
    report: JobReport,
    accounting: dict[str, Any],
    *,
    finished_at: datetime,
) -> dict[str, Any]:
    """Provenance of a succeeded job: spec, code, image, data version, timings, bytes."""
    handle = (job.handle or {}).get("data", {})
    info = job.dataset.info
    axes: list[str] = next((a["axes"] for a in info["arrays"] if a["path"] == job.array_path), [])
    return {
        "job_id": job.id,
        "written_by": "the insitu server, from its own records",
        "created_at": datetime.now(UTC).isoformat(),
        "insitu_version": __version__,
        "spec": job.spec,
        "spec_sha256": job.spec_digest,
        "image": job.spec.get("analysis", {}).get("image"),
        "image_id": handle.get("image_id"),
        "image_digest": handle.get("image_digest"),
        "code_bundle_sha256": job.code_bundle_digest,
        "backend": job.backend,
        "dataset": {
            "name": job.dataset.name,
            "url": job.dataset.url,
            "version": job.dataset.version,
            "array": job.array_path,
            "selection": {a: list(r) for a, r in zip(axes, job.ranges, strict=False)},
        },
        "timings": {
            "submitted_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": finished_at.isoformat(),
            "queued_s": _seconds(job.created_at, job.started_at),
            "run_s": _seconds(job.started_at, finished_at),
        },
        "store_access": accounting.get("store_access"),
        "bytes_scanned": accounting["bytes_scanned"],
        "bytes_scanned_source": accounting["bytes_scanned_source"],
        "core_seconds": accounting["core_seconds"],
        "core_seconds_source": accounting["core_seconds_source"],
        "bytes_returned": sum(r["size"] for r in results),
        "results": [
            {"file": r["filename"], "sha256": r["sha256"], "size": r["size"]} for r in results
        ],
        "reported_by_job": {
            "note": "what the job's own code reported about itself; not checked by the server",
            "environment": report.environment,
            "timings": report.timings,
            "bytes_scanned": report.bytes_scanned,
            "core_seconds": report.core_seconds,
        },
    }
