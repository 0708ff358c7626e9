"""Choose the codec pipeline that decodes chunks: zarrs (Rust) where installed, else zarr's.

zarr-python picks an array's pipeline from ``zarr.config`` when the array is opened, and
the pipeline travels with the array when Dask pickles it; so call :func:`configure` in the
process that opens arrays (and in workers, for the fetch concurrency read at read time).

zarrs decodes only arrays whose store is, by class name, one it can open itself (zarr's
``LocalStore``, ``ObjectStore``, an HTTP ``FsspecStore``): it then reads the files or the
bucket in Rust, past any Python wrapper. On every other store, insitu's ``CountingStore``
among them, zarr-python falls back to its own pipeline, reading through the store's API.
The job reader (:mod:`insitu.runtime.reader`) therefore reads with zarrs from the store
unwrapped and counts those reads by the stored size of the objects they fetched;
:func:`engine_of` says which pipeline actually decodes an array.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Literal, get_args

import zarr

from insitu.errors import InvalidInput

log = logging.getLogger("insitu.runtime")
_fallback_logged = False  # say once per process that zarrs is missing

Engine = Literal["auto", "zarrs", "zarr"]
ENGINES: tuple[str, ...] = get_args(Engine)
PIPELINES = {
    "zarr": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "zarrs": "zarrs.ZarrsCodecPipeline",
}


def zarrs_available() -> bool:
    """Whether the zarrs package imports here (cheap once imported)."""
    try:
        importlib.import_module("zarrs")
    except ImportError:
        return False
    return True


def _choose(engine: str) -> str:
    if engine not in ENGINES:
        raise InvalidInput(
            f"reader engine {engine!r} is not one of {', '.join(map(repr, ENGINES))} "
            "(setting reader.engine, INSITU_READER__ENGINE)"
        )
    if engine == "zarr":
        return "zarr"
    if zarrs_available():
        return "zarrs"
    if engine == "zarrs":
        raise InvalidInput(
            "reader engine 'zarrs' is set (reader.engine, INSITU_READER__ENGINE) but the "
            "zarrs package is not installed in this environment: install zarrs, or set the "
            "engine to 'auto' or 'zarr'"
        )
    return "zarr"


def configure(engine: str = "auto", concurrency: int | None = None) -> str:
    """Set the codec pipeline process-wide and return the engine in force ("zarrs" or "zarr").

    ``auto`` uses zarrs where it imports and zarr's own pipeline otherwise; ``zarrs`` where
    it is missing raises :class:`InvalidInput`. ``concurrency`` (chunks fetched at once;
    None leaves zarr's setting) applies to both pipelines. Idempotent: when everything is
    already set, nothing changes.
    """
    global _fallback_logged
    chosen = _choose(engine)
    if engine == "auto" and chosen == "zarr" and not _fallback_logged:
        log.info("reader engine: zarrs is not installed; decoding with zarr's own pipeline")
        _fallback_logged = True
    wanted: dict[str, Any] = {"codec_pipeline.path": PIPELINES[chosen]}
    if concurrency is not None:
        if concurrency < 1:
            raise InvalidInput(f"reader concurrency must be at least 1, not {concurrency}")
        wanted["async.concurrency"] = concurrency
        if chosen == "zarrs":
            wanted["codec_pipeline.chunk_concurrent_maximum"] = concurrency
    if all(zarr.config.get(key, None) == value for key, value in wanted.items()):
        return chosen
    zarr.config.set(wanted)
    return chosen


def engine_of(array: Any) -> str:
    """Which pipeline decodes ``array`` (a zarr Array or AsyncArray): "zarrs" or "zarr"."""
    pipeline = getattr(array, "_async_array", array).codec_pipeline
    # zarrs keeps zarr's pipeline inside for what it cannot decode; ``impl`` is its Rust one
    in_rust = type(pipeline).__module__.startswith("zarrs") and pipeline.impl is not None
    return "zarrs" if in_rust else "zarr"
