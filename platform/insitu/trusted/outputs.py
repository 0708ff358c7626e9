"""Check the outputs a job left in its workspace, with the server's own eyes.

An output is a folder ``outputs/KEY.ome.zarr`` the job wrote; everything about it is the
job's word until the server has looked. Here the server lists every object under
``outputs/`` with its own credentials (and walks the folder without following links on
a file store), refuses anything that is not a plain Zarr v3 OME-Zarr image (links, files
outside an output, metadata documents too large to parse, codecs it does not know,
another OME-NGFF version), counts the bytes each output takes, and describes each one
with the catalog's own reader.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from insitu.catalog import DatasetInfo, inspect_store, sizes_by_array
from insitu.errors import InsituError
from insitu.runtime.outputs import NGFF_VERSION, OME_SUFFIX
from insitu.runtime.workspace import OUTPUTS_DIR, Workspace
from insitu.spec import RESULT_KEY
from insitu.storage import local_path

MAX_METADATA_BYTES = 1 << 20  # one zarr.json
ALLOWED_CODECS = {"bytes", "transpose", "zstd", "blosc", "gzip", "crc32c", "sharding_indexed"}
METADATA = "zarr.json"


class RejectedOutputs(Exception):
    """What the job left under ``outputs/`` cannot become a dataset; the message says why."""


@dataclass(frozen=True)
class CheckedOutput:
    """One output as the server found it: where it is, what it holds, what it takes."""

    key: str
    url: str
    info: DatasetInfo
    stored_bytes: int
    objects: int
    labels: bool


def _listing(workspace: Workspace, max_objects: int) -> dict[str, int] | None:
    """Every object under ``outputs/`` (path inside it -> size), or None if there is none."""
    root = workspace.path(OUTPUTS_DIR)
    if workspace.url.startswith("file://"):
        return _walk(local_path(f"{workspace.url}/{OUTPUTS_DIR}"), max_objects)
    workspace.fs.invalidate_cache(root)
    _abort_uploads(workspace, root)
    try:
        found = workspace.fs.find(root, detail=True, maxdepth=None)
    except FileNotFoundError:
        return None
    if len(found) > max_objects:
        raise RejectedOutputs(_too_many(len(found), max_objects))
    return {
        name[len(root) + 1 :]: int(entry.get("size") or 0)
        for name, entry in found.items()
        if entry.get("type") != "directory"
    } or None


def _too_many(count: int, limit: int) -> str:
    return (
        f"the outputs hold {count:,} objects or more, over the limit of {limit:,}; write "
        "larger chunks (insitu.Output(..., chunks=...))"
    )


def _walk(folder: Path, max_objects: int) -> dict[str, int] | None:
    """The files under ``folder``, refusing links and anything but files and folders."""
    if folder.is_symlink():
        raise RejectedOutputs("the outputs folder is a symbolic link")
    if not folder.is_dir():
        return None
    sizes: dict[str, int] = {}
    entries = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        entries += len(dirs) + len(files)
        if entries > max_objects:  # folders count too: millions of empty ones cost as much
            raise RejectedOutputs(_too_many(entries, max_objects))
        for name in dirs + files:
            path = Path(top) / name
            relative = path.relative_to(folder).as_posix()
            info = path.lstat()
            if path.is_symlink():
                raise RejectedOutputs(f"outputs/{relative} is a symbolic link; insitu keeps none")
            if name in files:
                if not path.is_file():
                    raise RejectedOutputs(f"outputs/{relative} is not a regular file")
                sizes[relative] = info.st_size
                if len(sizes) > max_objects:
                    raise RejectedOutputs(_too_many(len(sizes), max_objects))
    return sizes or None


def _abort_uploads(workspace: Workspace, root: str) -> None:
    """Abort multipart uploads the job left open: unlisted parts would still take room."""
    fs = workspace.fs
    if "s3" not in fs.protocol:
        return
    bucket, _, prefix = root.partition("/")
    with contextlib.suppress(Exception):
        listed = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
        for upload in listed.get("Uploads", []):
            fs.call_s3(
                "abort_multipart_upload",
                Bucket=bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )


def _codec_names(codecs: Any) -> set[str]:
    names: set[str] = set()
    for codec in codecs if isinstance(codecs, list) else []:
        if isinstance(codec, str):
            names.add(codec)
        elif isinstance(codec, dict):
            names.add(str(codec.get("name")))
            config = codec.get("configuration") or {}
            if isinstance(config, dict):
                names |= _codec_names(config.get("codecs"))
                names |= _codec_names(config.get("index_codecs"))
    return names


def _check_metadata(workspace: Workspace, key: str, documents: list[str]) -> bool:
    """Read each ``zarr.json`` of one output (bounded); return whether it is a label image."""
    labels = False
    for document in documents:
        with workspace.open(f"{OUTPUTS_DIR}/{document}") as handle:
            raw = handle.read(MAX_METADATA_BYTES + 1)
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError):
            raise RejectedOutputs(f"outputs/{document} is not JSON") from None
        if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
            raise RejectedOutputs(f"outputs/{document} is not Zarr v3 metadata")
        if meta.get("node_type") == "array":
            unknown = _codec_names(meta.get("codecs")) - ALLOWED_CODECS
            if unknown:
                raise RejectedOutputs(
                    f"outputs/{document} uses codecs insitu does not read "
                    f"({', '.join(sorted(unknown))}); use {', '.join(sorted(ALLOWED_CODECS))}"
                )
        elif document == f"{key}{OME_SUFFIX}/{METADATA}":
            attributes = meta.get("attributes")
            ome = attributes.get("ome") if isinstance(attributes, dict) else None
            if not isinstance(ome, dict) or ome.get("version") != NGFF_VERSION:
                raise RejectedOutputs(
                    f"output {key!r} is not an OME-Zarr {NGFF_VERSION} image; return it as "
                    "insitu.Output and let the runtime write it"
                )
            labels = "image-label" in ome
    return labels


def check_outputs(
    workspace: Workspace, options: dict[str, Any] | None, max_objects: int
) -> list[CheckedOutput]:
    """Every output of the job, checked and described; :class:`RejectedOutputs` if any
    object under ``outputs/`` is not part of a valid output, or there are more than
    ``max_objects``."""
    listing = _listing(workspace, max_objects)
    if not listing:
        return []
    by_key: dict[str, dict[str, int]] = {}
    for path, size in listing.items():
        folder, _, inside = path.partition("/")
        key = folder.removesuffix(OME_SUFFIX)
        if not inside or not folder.endswith(OME_SUFFIX) or not RESULT_KEY.match(key):
            raise RejectedOutputs(
                f"outputs/{path} is not part of an output; return outputs from the analysis "
                "as insitu.Output, and do not write into the workspace yourself"
            )
        if inside.rsplit("/", 1)[-1] == METADATA and size > MAX_METADATA_BYTES:
            raise RejectedOutputs(f"outputs/{path} is {size:,} bytes, too large for metadata")
        by_key.setdefault(key, {})[inside] = size
    checked: list[CheckedOutput] = []
    for key, objects in sorted(by_key.items()):
        documents = [f"{key}{OME_SUFFIX}/{p}" for p in objects if p.rsplit("/", 1)[-1] == METADATA]
        if METADATA not in objects:
            raise RejectedOutputs(f"output {key!r} has no {METADATA}: it was not written whole")
        labels = _check_metadata(workspace, key, documents)
        url = f"{workspace.url}/{OUTPUTS_DIR}/{key}{OME_SUFFIX}"
        try:
            info = inspect_store(url, options, list_sizes=False)  # listed above already
        except InsituError as exc:
            raise RejectedOutputs(f"output {key!r} cannot be read back: {exc.message}") from None
        except Exception as exc:  # metadata of the wrong shape breaks the reader somewhere
            raise RejectedOutputs(
                f"output {key!r} cannot be read back: its OME-Zarr metadata is malformed "
                f"({type(exc).__name__})"
            ) from None
        if info.format != f"ome-ngff-{NGFF_VERSION}":
            raise RejectedOutputs(f"output {key!r} is not an OME-Zarr {NGFF_VERSION} image")
        info.stored_bytes = sizes_by_array(objects, info.arrays)
        checked.append(CheckedOutput(key, url, info, sum(objects.values()), len(objects), labels))
    return checked
