"""A job's workspace: the URL prefix where its inputs, progress, logs and results live.

The server writes ``job.json`` (and ``code.tar.gz``); the runtime writes
``status.json`` while it runs, ``results/`` and ``outcome.json`` when it ends. What the
runtime writes is a report: the server lists, counts and checks it itself
(:mod:`insitu.trusted`) and writes the provenance from its own records.
Every backend uses the same layout, so the server reads a job the same way wherever
it ran.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from insitu.blocks import ReadPlan
from insitu.catalog import ArrayInfo
from insitu.errors import InsituError
from insitu.storage import filesystem
from insitu.units import format_size

JOB_FILE = "job.json"
CODE_FILE = "code.tar.gz"
STATUS_FILE = "status.json"
OUTCOME_FILE = "outcome.json"
LOG_FILE = "runner.log"
RESULTS_DIR = "results"
OUTPUTS_DIR = "outputs"  # insitu.Output arrays, as OME-Zarr (insitu.runtime.outputs)
PROVENANCE_FILE = "provenance.json"


class JobInput(BaseModel):
    """Everything the runtime needs to run one job (``job.json``)."""

    job_id: str
    spec: dict[str, Any]
    spec_digest: str
    dataset: str
    dataset_url: str
    dataset_version: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    array: ArrayInfo
    ranges: list[tuple[int, int]]
    result_cap_bytes: int
    result_fraction: float | None = None
    code_bundle_digest: str | None = None
    backend: str = "local"
    worker_processes: bool = True
    image: str | None = None
    insitu_version: str = ""
    read: ReadPlan | None = None  # planned by the server; the runtime plans it when absent


class Progress(BaseModel):
    """What the runtime reports while it runs (``status.json``)."""

    phase: Literal["starting", "running", "writing", "finished"] = "starting"
    chunks_done: int = 0
    chunks_total: int = 0
    bytes_scanned: int = 0
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class ResultFile(BaseModel):
    """One result the job returned."""

    key: str
    filename: str
    kind: Literal["array", "table", "json", "image"]
    media_type: str
    size: int
    sha256: str
    shape: list[int] | None = None
    dtype: str | None = None


class OutputRecord(BaseModel):
    """One output the job wrote next to the data (its word; the server checks the store)."""

    key: str
    path: str
    shape: list[int]
    dtype: str
    levels: int
    labels: bool = False


class Outcome(BaseModel):
    """How the job ended (``outcome.json``), written last by the runtime."""

    ok: bool
    error: str | None = None
    error_kind: str | None = None
    results: list[ResultFile] = Field(default_factory=list)
    outputs: list[OutputRecord] = Field(default_factory=list)
    bytes_scanned: int = 0
    bytes_selected: int = 0
    bytes_returned: int = 0
    chunks_read: int = 0
    core_seconds: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict)
    environment: dict[str, str] = Field(default_factory=dict)


class WorkspaceFull(InsituError, OSError):
    """The disk that holds a job's workspace has no space left."""

    status_code = 507
    code = "disk_full"


_FULL = (errno.ENOSPC, errno.EDQUOT)


class Workspace:
    """Read and write the files of one job's workspace."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = filesystem(self.url, storage_options)
        self._local = "file" in self.fs.protocol

    def path(self, name: str) -> str:
        """Path of a file in the workspace, inside its filesystem."""
        return f"{self.root}/{name}"

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write a file whole: readers never see half of it, even with concurrent writers.

        An object store's PUT is atomic already; on a filesystem the bytes go to a
        temporary file of this writer's own, renamed into place.
        """
        path = self.path(name)
        if not self._local:
            self.fs.pipe_file(path, data)
            return
        parent = path.rsplit("/", 1)[0]
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):  # a partial file would keep the disk full
                self.fs.rm_file(tmp)
            if exc.errno in _FULL:
                raise self._full(name, len(data)) from exc
            raise

    def _full(self, name: str, size: int) -> WorkspaceFull:
        """The error for a write of ``size`` bytes to ``name`` that found the disk full."""
        free = ""
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(self.root)
            free = f", {format_size(usage.free)} free of {format_size(usage.total)}"
        return WorkspaceFull(
            f"the disk of the job's workspace is full: no space left to write {name} "
            f"({format_size(size)}) in {self.root}{free}. The server's operator must free "
            "space there; then run the job again"
        )

    def read_bytes(self, name: str) -> bytes | None:
        """A file's bytes, or None if it does not exist."""
        try:
            return bytes(self.fs.cat_file(self.path(name)))
        except FileNotFoundError:
            return None

    def write_model(self, name: str, model: BaseModel) -> None:
        """Write a pydantic model as JSON."""
        self.write_bytes(name, model.model_dump_json(indent=2).encode())

    def write_json(self, name: str, value: Any) -> None:
        """Write a JSON document."""
        self.write_bytes(name, json.dumps(value, indent=2, default=str).encode())

    def read_model(self, name: str, model: type[BaseModel]) -> Any:
        """Read a JSON file into ``model``, or None if it is missing or half-written."""
        data = self.read_bytes(name)
        if data is None:
            return None
        try:
            return model.model_validate_json(data)
        except ValueError:
            return None

    def size(self, name: str) -> int | None:
        """Size of a file in bytes, or None if it is missing."""
        try:
            return int(self.fs.size(self.path(name)))
        except FileNotFoundError:
            return None

    def listdir(self, name: str) -> list[tuple[str, int]]:
        """(file name, size) of the files directly under a folder, sorted."""
        try:
            entries = self.fs.ls(self.path(name), detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            (e["name"].rstrip("/").rsplit("/", 1)[-1], int(e.get("size") or 0))
            for e in entries
            if e.get("type") == "file"
        )

    def open(self, name: str, mode: str = "rb") -> Any:
        """An open file object."""
        return self.fs.open(self.path(name), mode)

    def remove_results(self) -> None:
        """Delete what the job wrote under ``results/`` (e.g. to make room on a full disk)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(RESULTS_DIR), recursive=True)

    def remove_outputs(self) -> None:
        """Delete what the job wrote under ``outputs/`` (none of it becomes a dataset)."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(OUTPUTS_DIR), recursive=True)

    def remove(self) -> None:
        """Delete the whole workspace."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)
