"""Bound the texts a job's own code can put into its record (errors, reasons)."""

from __future__ import annotations

ERROR_LIMIT = 4096  # bytes of a job's error kept in its record
REASON_LIMIT = 512  # bytes of a job's words in a state's reason


def bounded(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` bytes of UTF-8, saying how much was cut and where to look."""
    if text is None:
        return None
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    note = f" [... {len(data) - limit} more bytes cut; the job's log has its details]"
    kept = data[: max(limit - len(note), 0)].decode("utf-8", errors="ignore")
    return kept + note


def utf8_size(*texts: str | None) -> int:
    """Bytes these texts take when served as UTF-8."""
    return sum(len(t.encode("utf-8", errors="replace")) for t in texts if t)
