"""Write ``jobspecs/jobspec.schema.json`` and ``pipeline.schema.json`` from the models.

    python jobspecs/export_schema.py
"""

from __future__ import annotations

import json
from pathlib import Path

from insitu.spec import json_schema, pipeline_json_schema

SCHEMA_PATH = Path(__file__).with_name("jobspec.schema.json")
PIPELINE_SCHEMA_PATH = Path(__file__).with_name("pipeline.schema.json")


def render(pipeline: bool = False) -> str:
    """The schema as it should be on disk."""
    schema = pipeline_json_schema() if pipeline else json_schema()
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(render())
    PIPELINE_SCHEMA_PATH.write_text(render(pipeline=True))
    print(f"wrote {SCHEMA_PATH} and {PIPELINE_SCHEMA_PATH}")
