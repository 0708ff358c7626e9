"""One egress budget per job, and what each channel the owner reads has used of it.

Channels: the result files, the provenance, the texts of the job's record (error,
reason, events) and the log as served to the owner. The budget is the smallest of the
job's result cap (spec, platform, quota) and a fraction of the bytes the server counts
as scanned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from insitu.runtime.results import result_cap
from insitu.units import format_size

CHANNELS = ("results", "provenance", "texts", "log")


@dataclass
class Egress:
    """A job's budget, where it comes from, and the bytes each channel used."""

    budget: int
    source: str
    results: int = 0
    provenance: int = 0
    texts: int = 0
    log: int = 0

    @property
    def used(self) -> int:
        return self.results + self.provenance + self.texts + self.log

    def room_for(self, channel: str) -> int:
        """Bytes ``channel`` may still use: the budget less what the other channels used."""
        others = self.used - int(getattr(self, channel))
        return max(self.budget - others, 0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any] | None, budget: int, source: str) -> Egress:
        """The stored figures, or a fresh budget."""
        if not value:
            return cls(budget, source)
        known = {k: int(value.get(k) or 0) for k in CHANNELS}
        return cls(int(value.get("budget", budget)), str(value.get("source", source)), **known)


def budget(cap: int, fraction: float | None, scanned: int | None) -> tuple[int, str]:
    """The budget in force and where it comes from: the result cap or a share of the scan,
    plus a small fixed allowance for the job's record (the runtime's early check agrees)."""
    return result_cap(cap, fraction, scanned)


def over_budget_message(egress: Egress, wanted: int) -> str:
    """What a job whose results do not fit its budget fails with."""
    room = egress.room_for("results")
    spent = egress.used - egress.results
    others = f"; its log, texts and provenance used {format_size(spent)}" if spent else ""
    return (
        f"the results total {format_size(wanted)}, over the {format_size(room)} left of this "
        f"job's egress budget of {format_size(egress.budget)} ({egress.source}) by "
        f"{format_size(wanted - room)}{others}. insitu returns only reduced results: reduce "
        "further in the analysis (a projection, a table, a downsampled level), select less, "
        "or ask for a larger cap (limits.max_result_bytes)"
    )
