"""Settle a job that ended: decide its state, results, metering and provenance.

Everything here comes from what the server measured or checked: it lists and hashes
the results, meters core-seconds through the backend, bounds the job's own byte count
by what its selection can hold, fits every channel into one egress budget and writes
the provenance. The job's report only says whether it thinks it succeeded, and why not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from insitu.backends.base import Metered
from insitu.db.models import Job
from insitu.runtime.workspace import RESULTS_DIR, Workspace
from insitu.states import JobState
from insitu.trusted import provenance, results
from insitu.trusted.egress import Egress, budget, over_budget_message
from insitu.trusted.report import JobReport, RefusedReport
from insitu.trusted.texts import REASON_LIMIT, bounded, utf8_size
from insitu.units import format_size


@dataclass
class Settlement:
    """The state a job ends in, why, and the fields of its record."""

    state: JobState
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)
    discard_results: bool = False


def count_scan(job: Job, reported: int, measured: Metered | None = None) -> tuple[int, str]:
    """Bytes scanned as the server counts them: what the trusted side measured, or else the
    job's own figure, at most what its selection holds."""
    bound = int((job.accounting or {}).get("scan_bound") or job.bytes_selected)
    if measured is not None:  # re-reads count once: never more than the selection holds
        if measured.value <= bound:
            return int(measured.value), measured.source
        return bound, f"{measured.source}, at most its selection's stored size"
    if reported <= bound:
        return reported, "reported by the job, at most its selection's stored size"
    return bound, (
        f"the job reported {format_size(reported)}, more than its selection can hold; "
        "counted as the selection's stored size"
    )


def start_egress(job: Job, fraction: float | None, scanned_bytes: int) -> Egress:
    """The job's budget now that its scan is known, with what its log used already."""
    cap, source = budget(job.result_cap_bytes, fraction, scanned_bytes)
    stored = (job.accounting or {}).get("egress")
    egress = Egress.from_json(stored, cap, source)
    egress.budget, egress.source = cap, source
    return egress


def _texts(job: Job, *extra: str | None) -> int:
    return utf8_size(job.error, *(e.reason for e in job.events), *extra)


def settle(
    job: Job,
    workspace: Workspace,
    report: JobReport | RefusedReport,
    metered: Metered,
    *,
    scanned: Metered | None = None,
    fraction: float | None,
    now: datetime,
) -> Settlement:
    """How ``job`` ends, from its (validated) report and the server's own measurements."""
    reported_scan = report.bytes_scanned if isinstance(report, JobReport) else 0
    scan, scan_source = count_scan(job, reported_scan, scanned)
    egress = start_egress(job, fraction, scan)
    accounting = {
        **(job.accounting or {}),
        "bytes_scanned": scan,
        "bytes_scanned_source": scan_source,
        "core_seconds": round(metered.value, 3),
        "core_seconds_source": metered.source,
    }
    if isinstance(report, JobReport):
        accounting["reported_by_job"] = {
            "bytes_scanned": report.bytes_scanned,
            "core_seconds": report.core_seconds,
            "chunks_read": report.chunks_read,
        }
    fields: dict[str, Any] = {
        "bytes_scanned": scan,
        "core_seconds": metered.value,
        "accounting": accounting,
    }

    def failed(error: str, kind: str, *, discard: bool = False) -> Settlement:
        error = bounded(error, max(min(4096, egress.room_for("texts") // 2), 256)) or ""
        reason = bounded(error, REASON_LIMIT) or ""
        egress.texts = _texts(job, error, reason)
        accounting["egress"] = egress.to_json()
        fields.update(error=error, error_kind=kind, results=[], bytes_returned=0)
        return Settlement(JobState.FAILED, reason, fields, discard_results=discard)

    if isinstance(report, RefusedReport):
        return failed(
            f"the job's runner reported an outcome insitu cannot accept ({report.problem}); "
            "its figures were ignored",
            "invalid_report",
            discard=True,
        )
    fields["chunks_done"] = report.chunks_read
    if not report.ok:
        return failed(report.error or "the job failed", report.error_kind or "analysis_failed")
    try:
        listed = results.list_results(workspace)
    except results.RejectedResults as exc:
        return failed(str(exc), "invalid_results", discard=True)
    total = sum(item.size for item in listed)
    summary = (
        f"scanned {format_size(scan)}, returned {format_size(total)} in {len(listed)} result(s)"
    )
    egress.texts = _texts(job, summary)
    if total > egress.room_for("results"):
        return failed(over_budget_message(egress, total), "result_too_large", discard=True)
    try:
        rows = results.records(workspace, listed)
    except results.RejectedResults as exc:
        return failed(str(exc), "invalid_results", discard=True)
    egress.results = sum(r["size"] for r in rows)
    record = provenance.build(job, rows, report, accounting, finished_at=now)
    egress.provenance = len(json.dumps(record, indent=2).encode())
    if egress.used > egress.budget:
        return failed(over_budget_message(egress, egress.results), "result_too_large", discard=True)
    accounting["egress"] = egress.to_json()
    fields.update(
        results=rows,
        provenance=record,
        bytes_returned=egress.results + egress.provenance,
        chunks_done=job.chunks_total or report.chunks_read,
    )
    return Settlement(JobState.SUCCEEDED, summary, fields)


def discard(workspace: Workspace) -> None:
    """Remove every file the job left under ``results/`` (none of it will be served)."""
    if workspace.fs.exists(workspace.path(RESULTS_DIR)):
        workspace.fs.rm(workspace.path(RESULTS_DIR), recursive=True)
