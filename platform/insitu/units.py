"""Parse and print sizes (``16MiB``) and durations (``30m``) the way people write them."""

from __future__ import annotations

import re

from insitu.errors import InvalidInput

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "": 1}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)?", re.IGNORECASE)


def parse_size(value: str | int | float) -> int:
    """Return a size in bytes from ``1024``, ``"16MiB"``, ``"2 GB"`` or ``"512k"``."""
    if isinstance(value, bool):
        raise InvalidInput(f"expected a size like '16MiB', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidInput(f"a size cannot be negative, got {value}")
        return int(value)
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise InvalidInput(
            f"cannot read {value!r} as a size; write it like '512KiB', '16MiB' or '2GB'"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: str | int | float) -> float:
    """Return seconds from ``90``, ``"30m"``, ``"1h30m"`` or ``"45s"``."""
    if isinstance(value, bool):
        raise InvalidInput(f"expected a duration like '30m', got {value!r}")
    if isinstance(value, int | float):
        if value <= 0:
            raise InvalidInput(f"a duration must be positive, got {value}")
        return float(value)
    text = str(value).strip().replace(" ", "")
    parts = _DURATION_RE.findall(text)
    if not text or "".join(n + u for n, u in parts).lower() != text.lower():
        raise InvalidInput(
            f"cannot read {value!r} as a duration; write it like '45s', '30m' or '1h30m'"
        )
    seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise InvalidInput(f"a duration must be positive, got {value!r}")
    return seconds


def format_size(nbytes: int | float | None) -> str:
    """Print a byte count for people: ``52.4 MB``."""
    if nbytes is None:
        return "-"
    value = float(nbytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    """Print seconds for people: ``1.2 s``, ``3 min 5 s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
