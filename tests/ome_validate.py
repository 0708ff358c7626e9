"""Validate OME-Zarr groups with a third-party reader, ome-zarr-models (its own venv).

Run by tests/test_derived.py as ``.venv/tools/ome-zarr/bin/python tests/ome_validate.py
PATH...``; prints one JSON line per path: the model it validated as, or the error.
"""

import json
import sys

import zarr
from ome_zarr_models import open_ome_zarr

for path in sys.argv[1:]:
    try:
        model = open_ome_zarr(zarr.open_group(path, mode="r"))
        print(json.dumps({"path": path, "model": type(model).__name__}))
    except Exception as exc:  # the error is the answer
        print(json.dumps({"path": path, "error": f"{type(exc).__name__}: {exc}"[:2000]}))
