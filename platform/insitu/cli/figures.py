"""The demo's two figures, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def projection(mean: np.ndarray, path: Path, *, title: str) -> Path:
    """The mean image with a colorbar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    low, high = np.percentile(mean, [0.5, 99.8])
    image = ax.imshow(mean, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="mean fluorescence (counts)")
    ax.set_title(title)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def traces(frame: Any, path: Path, *, title: str, count: int = 8) -> Path:
    """The ``count`` most active ROIs' dF/F traces, stacked with an offset."""
    plt = _pyplot()
    active = frame.std().sort_values(ascending=False).index[:count]
    chosen = frame[sorted(active, key=lambda c: list(frame.columns).index(c))]
    spacing = float(np.nanmax(chosen.max() - chosen.min())) or 1.0
    fig, ax = plt.subplots(figsize=(9, 1 + 0.7 * len(chosen.columns)), dpi=120)
    ticks = []
    for i, column in enumerate(chosen.columns):
        offset = i * spacing
        ax.plot(chosen.index, chosen[column] + offset, linewidth=0.8)
        ticks.append(offset)
    ax.set_yticks(ticks, [str(c).replace("roi_", "ROI ") for c in chosen.columns])
    ax.set_xlabel("frame")
    ax.set_ylabel(f"dF/F (traces {spacing:.2g} apart)")
    ax.set_title(f"{title} (offset for clarity)")
    ax.margins(x=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
