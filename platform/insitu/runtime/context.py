"""The ``context`` an analysis receives next to its data."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import dask.array as da
import zarr

from insitu.catalog import ArrayInfo
from insitu.errors import PermissionDenied
from insitu.runtime.metering import CountingStore
from insitu.storage import job_retry_timeout, open_store

log = logging.getLogger("insitu.analysis")


@dataclass
class RunContext:
    """What an analysis may know and use besides its data.

    ``selection`` maps each axis name to the [start, stop) range taken from the
    full array, so results can be placed back in the array's coordinates.
    """

    job_id: str
    dataset: str
    array: ArrayInfo
    selection: dict[str, tuple[int, int]]
    params: dict[str, Any]
    client: Any = None
    _dataset_url: str = ""
    _storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def axes(self) -> list[str]:
        """Axis names of ``data``, outermost first."""
        return list(self.array.axes)

    def axis(self, name: str) -> int:
        """Position of a named axis in ``data``."""
        try:
            return self.axes.index(name)
        except ValueError:
            raise KeyError(f"axis {name!r} is not one of {self.axes}") from None

    def log(self, message: str) -> None:
        """Write a line to the job's log."""
        log.info(message)

    def open_array(self, path: str) -> da.Array:
        """Another array of the same dataset (a labels image, a pyramid level), lazily.

        Only paths inside the job's own dataset can be opened.
        """
        relative = PurePosixPath(path.rstrip("/"))
        if relative.is_absolute() or ".." in relative.parts or "://" in path or not path.strip("/"):
            raise PermissionDenied(
                f"open_array({path!r}): only arrays inside dataset {self.dataset!r} can be "
                "opened, by a relative path such as 'labels/cells/0'"
            )
        opened = open_store(
            self._dataset_url,
            storage_options=self._storage_options,
            retry_timeout=job_retry_timeout(),
        )
        store = CountingStore(opened, self.job_id)
        try:
            array = zarr.open_array(store=store, path=str(relative), mode="r")
        except (FileNotFoundError, KeyError):
            raise FileNotFoundError(
                f"dataset {self.dataset!r} has no array at {str(relative)!r}"
            ) from None
        return da.from_zarr(array)
