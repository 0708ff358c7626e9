"""List, check and hash a job's results on the server's side.

The server never takes the job's word for which results exist or how large they are:
it lists the workspace's ``results/`` folder itself, accepts only files named by the
result-key rule with a known extension, takes sizes from the listing and hashes the
bytes it will serve.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from insitu.runtime.results import RESULT_KEY
from insitu.runtime.workspace import PROVENANCE_FILE, RESULTS_DIR, Workspace

KINDS = {
    "npy": ("array", "application/x-npy"),
    "parquet": ("table", "application/vnd.apache.parquet"),
    "json": ("json", "application/json"),
    "png": ("image", "image/png"),
}
MAX_RESULTS = 1000
RESERVED_KEYS = {PROVENANCE_FILE.rsplit(".", 1)[0]}


class RejectedResults(Exception):
    """The job's results folder holds something that is not a result; the message says what."""


@dataclass(frozen=True)
class Listed:
    """A result file as the server found it."""

    key: str
    filename: str
    kind: str
    media_type: str
    size: int


def _check_name(name: str, kind: str) -> Listed | str:
    if kind != "file":
        return f"{name!r} is a folder"
    key, dot, extension = name.rpartition(".")
    if not dot or extension not in KINDS:
        return f"{name!r} has no result extension ({', '.join(sorted(KINDS))})"
    if not RESULT_KEY.match(key) or key in RESERVED_KEYS:
        return f"{name!r} is not a valid result name"
    result_kind, media_type = KINDS[extension]
    return Listed(key, name, result_kind, media_type, 0)


def list_results(workspace: Workspace) -> list[Listed]:
    """Every result file of the job; :class:`RejectedResults` if anything else is there."""
    folder = workspace.path(RESULTS_DIR)
    workspace.fs.invalidate_cache(folder)  # what the store holds now, not a cached listing
    try:
        entries = workspace.fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    if len(entries) > MAX_RESULTS:
        raise RejectedResults(f"the job wrote {len(entries)} files; at most {MAX_RESULTS} allowed")
    listed: list[Listed] = []
    problems: list[str] = []
    keys: set[str] = set()
    for entry in entries:
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        checked = _check_name(name, str(entry.get("type")))
        if isinstance(checked, str):
            problems.append(checked)
        elif checked.key in keys:
            problems.append(f"two results are named {checked.key!r}")
        else:
            keys.add(checked.key)
            size = int(entry.get("size") or 0)
            listed.append(Listed(checked.key, name, checked.kind, checked.media_type, size))
    if problems:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise RejectedResults(
            f"the job's results folder holds files insitu does not return: {shown}. Return "
            "results from the analysis as a dict; do not write into the workspace yourself"
        )
    return sorted(listed, key=lambda item: item.filename)


def _npy_header(data: bytes) -> tuple[list[int], str] | None:
    """Shape and dtype from an .npy header, parsed without unpickling anything."""
    try:
        buffer = io.BytesIO(data[:65536])
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(buffer)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(buffer)
        return [int(n) for n in shape], str(dtype)
    except Exception:
        return None


def records(workspace: Workspace, listed: list[Listed]) -> list[dict[str, Any]]:
    """The records the server keeps of its results: its own sizes and hashes.

    Shapes come from the .npy header of arrays; the job's own word on shapes is not
    served (it would be a channel outside the egress budget).
    """
    rows: list[dict[str, Any]] = []
    for item in listed:
        try:
            with workspace.open(f"{RESULTS_DIR}/{item.filename}") as handle:
                data = handle.read(item.size + 1)  # never more than the listing said, plus one
        except FileNotFoundError:
            raise RejectedResults(
                f"result {item.filename!r} vanished while the server read it"
            ) from None
        if len(data) != item.size:
            raise RejectedResults(f"result {item.filename!r} changed while the server read it")
        row: dict[str, Any] = {
            "key": item.key,
            "filename": item.filename,
            "kind": item.kind,
            "media_type": item.media_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "shape": None,
            "dtype": None,
        }
        if item.kind == "array":
            header = _npy_header(data)
            if header is not None:
                row["shape"], row["dtype"] = header
        rows.append(row)
    return rows
