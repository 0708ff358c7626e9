"""Write ``jobspecs/jobspec.schema.json`` from the job spec models.

    python jobspecs/export_schema.py
"""

from __future__ import annotations

import json
from pathlib import Path

from insitu.spec import json_schema

SCHEMA_PATH = Path(__file__).with_name("jobspec.schema.json")


def render() -> str:
    """The schema as it should be on disk."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}")
