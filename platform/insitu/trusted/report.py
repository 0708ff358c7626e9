"""Read what a job reports about itself (``outcome.json``, ``status.json``), validated and bounded.

A report is a claim, not a fact: its figures are kept as "reported by the job", every
field has a type and a range, and a file too large or malformed is refused as a whole.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from insitu.runtime.workspace import OUTCOME_FILE, STATUS_FILE, Progress, Workspace
from insitu.trusted.texts import ERROR_LIMIT, bounded

MAX_REPORT_BYTES = 256 << 10  # an outcome larger than this is not an honest one
MAX_FIGURE = 1 << 62  # bytes or chunks no job can have read
MAX_SECONDS = 1e9
ERROR_KINDS = {
    "analysis_failed",
    "result_too_large",
    "store_unreachable",
    "invalid_input",
    "backend_error",
    "out_of_memory",
    "disk_full",
    "internal",
    "error",
}
_SHORT = re.compile(r"^[\w.+\- /:=<>|\[\],()]{0,120}$")


class JobReport(BaseModel):
    """The job's own account of how it ended, after validation."""

    model_config = ConfigDict(extra="ignore")
    ok: bool
    error: str | None = None
    error_kind: str | None = None
    bytes_scanned: int = Field(0, ge=0, le=MAX_FIGURE)
    bytes_selected: int = Field(0, ge=0, le=MAX_FIGURE)
    bytes_returned: int = Field(0, ge=0, le=MAX_FIGURE)
    chunks_read: int = Field(0, ge=0, le=MAX_FIGURE)
    core_seconds: float = Field(0.0, ge=0.0, le=MAX_SECONDS)
    timings: dict[str, float] = Field(default_factory=dict, max_length=32)
    environment: dict[str, str] = Field(default_factory=dict, max_length=32)

    @field_validator("error")
    @classmethod
    def _error(cls, error: str | None) -> str | None:
        return bounded(error, ERROR_LIMIT)

    @field_validator("error_kind")
    @classmethod
    def _kind(cls, kind: str | None) -> str | None:
        return kind if kind is None or kind in ERROR_KINDS else "analysis_failed"

    @field_validator("timings")
    @classmethod
    def _timings(cls, timings: dict[str, float]) -> dict[str, float]:
        for name, value in timings.items():
            if len(name) > 40 or not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
                raise ValueError(f"timing {name[:40]!r} is not a duration")
        return timings

    @field_validator("environment")
    @classmethod
    def _environment(cls, environment: dict[str, str]) -> dict[str, str]:
        for name, value in environment.items():
            if not (_SHORT.match(name) and _SHORT.match(value)):
                raise ValueError("an environment entry is not a short version string")
        return environment


class RefusedReport(BaseModel):
    """A report the server would not take, and why (said to the job's owner)."""

    problem: str


def _read(workspace: Workspace, name: str) -> bytes | RefusedReport | None:
    try:  # a ranged read: the file may grow between a size check and a read
        data = bytes(workspace.fs.cat_file(workspace.path(name), start=0, end=MAX_REPORT_BYTES + 1))
    except FileNotFoundError:
        return None
    if len(data) > MAX_REPORT_BYTES:
        return RefusedReport(problem=f"{name} is over the {MAX_REPORT_BYTES} bytes allowed")
    return data


def read_outcome(workspace: Workspace) -> JobReport | RefusedReport | None:
    """The job's outcome, validated; None while it has written none."""
    data = _read(workspace, OUTCOME_FILE)
    if data is None or isinstance(data, RefusedReport):
        return data
    try:
        return JobReport.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        return RefusedReport(problem=f"{OUTCOME_FILE}: {where}: {first['msg']}"[:300])


def read_progress(workspace: Workspace) -> Progress | None:
    """The job's progress report, or None if it is missing, too large or out of range."""
    data = _read(workspace, STATUS_FILE)
    if data is None or isinstance(data, RefusedReport):
        return None
    try:
        progress = Progress.model_validate_json(data)
    except ValidationError:
        return None
    figures: list[Any] = [progress.chunks_done, progress.chunks_total, progress.bytes_scanned]
    if any(not 0 <= n <= MAX_FIGURE for n in figures):
        return None
    return progress
