"""Dask plugins of the runtime, for clusters whose workers run apart from the runner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from insitu.runtime import bundle


class CodeBundlePlugin(WorkerPlugin):
    """Unpacks the job's code bundle on each worker (also ones that join later) onto sys.path."""

    name = "insitu-code"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def setup(self, worker: Any) -> None:
        target = Path(worker.local_directory) / "insitu-code"
        if not target.exists():
            bundle.extract(self.data, target)
        if str(target) not in sys.path:
            sys.path.insert(0, str(target))
