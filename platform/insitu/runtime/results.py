"""Turn what an analysis returns into result files, and refuse results over the cap."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from insitu.errors import AnalysisFailed, ResultTooLarge
from insitu.spec import RESULT_KEY
from insitu.units import format_size

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Bytes a job may return on top of its cap, for its record (provenance, error and event
# texts); the server's egress budget allows the same.
RECORD_ALLOWANCE = 8 << 10


class PNG(bytes):
    """Bytes of a PNG image, returned by an analysis as a picture result."""


def png(
    image: Any, *, cmap: str | None = None, percentiles: tuple[float, float] = (1, 99.5)
) -> PNG:
    """Render a 2D array as a PNG with automatic contrast (or encode an RGB(A) array).

    ``cmap`` is a matplotlib colormap name; without it a grey scale is used.
    """
    from PIL import Image

    array = np.asarray(image)
    if array.ndim == 2:
        finite = array[np.isfinite(array)] if array.dtype.kind == "f" else array
        low, high = np.percentile(finite, percentiles) if finite.size else (0.0, 1.0)
        scaled = np.clip((array.astype(np.float64) - low) / max(high - low, 1e-12), 0, 1)
        if cmap:
            from matplotlib import colormaps

            array = (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
        else:
            array = (scaled * 255).astype(np.uint8)
    elif array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"png() needs a 2D array or an RGB(A) image, got shape {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return PNG(buffer.getvalue())


@dataclass(frozen=True)
class Encoded:
    """A result serialised to the bytes of its file."""

    key: str
    filename: str
    kind: str
    media_type: str
    data: bytes
    shape: list[int] | None = None
    dtype: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size <= 10_000:
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def encode(key: str, value: Any) -> Encoded:
    """Serialise one computed result by its type."""
    if not isinstance(key, str) or not RESULT_KEY.match(key):
        raise AnalysisFailed(
            f"result name {key!r} cannot be a file name; use letters, digits, '.', '_' or '-'"
        )
    if key == "provenance":
        raise AnalysisFailed("'provenance' is the name of insitu's own record; rename the result")
    if isinstance(value, PNG) or (isinstance(value, bytes) and value.startswith(_PNG_MAGIC)):
        return Encoded(key, f"{key}.png", "image", "image/png", bytes(value))
    if type(value).__module__.startswith("PIL.") and hasattr(value, "save"):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return Encoded(key, f"{key}.png", "image", "image/png", buffer.getvalue())
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return Encoded(
            key,
            f"{key}.npy",
            "array",
            "application/x-npy",
            buffer.getvalue(),
            list(value.shape),
            str(value.dtype),
        )
    import pandas as pd

    if isinstance(value, pd.Series):
        value = value.to_frame()
    if isinstance(value, pd.DataFrame):
        buffer = io.BytesIO()
        frame = value.copy()
        frame.columns = [str(c) for c in frame.columns]
        frame.to_parquet(buffer, index=True)
        return Encoded(
            key,
            f"{key}.parquet",
            "table",
            "application/vnd.apache.parquet",
            buffer.getvalue(),
            list(value.shape),
        )
    try:
        text = json.dumps(value, default=_json_default, allow_nan=True, indent=1)
    except (TypeError, ValueError):
        raise AnalysisFailed(
            f"result {key!r} is a {type(value).__name__}; return a NumPy array, a pandas "
            "DataFrame, a JSON-able value (dict, list, number, string) or a PNG image"
        ) from None
    return Encoded(key, f"{key}.json", "json", "application/json", text.encode())


def result_cap(
    absolute: int, fraction: float | None = None, scanned: int | None = None
) -> tuple[int, str]:
    """The cap in force and where it comes from: the absolute cap, or a share of the scan.

    The runtime checks it early, as a courtesy; the server's egress budget decides, and
    allows as much plus :data:`RECORD_ALLOWANCE` for the job's record.
    """
    allowance = f" + {format_size(RECORD_ALLOWANCE)} for the job's record"
    if fraction is not None and scanned is not None:
        relative = int(fraction * scanned)
        if relative < absolute:
            source = f"{fraction:.0%} of the {format_size(scanned)} it scanned{allowance}"
            return relative + RECORD_ALLOWANCE, source
    source = f"limits.max_result_bytes = {format_size(absolute)}{allowance}"
    return absolute + RECORD_ALLOWANCE, source


def check_cap(
    encoded: list[Encoded], cap: int, fraction: float | None = None, scanned: int | None = None
) -> int:
    """Total size of the results; raise :class:`ResultTooLarge` above the cap in force."""
    total = sum(len(e.data) for e in encoded)
    limit, source = result_cap(cap, fraction, scanned)
    if total > limit:
        largest = sorted(encoded, key=lambda e: -len(e.data))[:3]
        parts = ", ".join(f"{e.key}: {format_size(len(e.data))}" for e in largest)
        raise ResultTooLarge(too_large_message(total, limit, parts, source))
    return total


def too_large_message(
    total: int, cap: int, parts: str = "", source: str = "limits.max_result_bytes"
) -> str:
    """The message a job over its result cap fails with."""
    detail = f" ({parts})" if parts else ""
    return (
        f"the results total {format_size(total)}{detail}, over this job's result cap of "
        f"{format_size(cap)} ({source}) by {format_size(total - cap)}. insitu returns only "
        "reduced results: reduce further in the analysis (a projection, a table, a "
        "downsampled level), select less, or ask for a larger cap (limits.max_result_bytes, "
        "or the operator's limits.result_fraction)"
    )
