"""The job spec: what is accepted, and the messages for what is not."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from insitu.errors import InvalidInput
from insitu.spec import JobSpec, Pipeline, load_document, load_spec

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"dataset": "ophys/session-001", "analysis": {"entrypoint": "pkg.mod:run"}}


def test_minimal_spec_gets_defaults() -> None:
    spec = load_spec(MINIMAL)
    assert spec.api_version == "insitu/v1" and spec.kind == "Job"
    assert spec.select == {} and spec.array is None
    assert spec.resources.workers == 1 and spec.resources.memory_per_worker == 2 * 1024**3
    assert spec.limits.timeout == 1800 and spec.limits.max_result_bytes == 64 * 1024**2
    assert spec.display_name() == "run"


def test_full_spec_from_yaml() -> None:
    text = """
apiVersion: insitu/v1
kind: Job
name: mean-projection
dataset: ophys/session-001
array: "0"
select: {t: [0, 1000], y: [10, null]}
analysis:
  image: insitu-ophys:1.0
  entrypoint: ophys_analyses.projection:mean_projection
  params: {preview: true}
resources: {workers: 2, threads_per_worker: 4, memory_per_worker: 4GiB}
limits: {timeout: 1h30m, max_result_bytes: 16MiB}
"""
    spec = load_spec(text)
    assert spec.select == {"t": (0, 1000), "y": (10, None)}
    assert spec.resources.cores == 8
    assert spec.resources.memory_per_worker == 4 * 1024**3
    assert spec.limits.timeout == 5400 and spec.limits.max_result_bytes == 16 * 1024**2
    assert spec.analysis.params == {"preview": True}
    assert load_spec(json.dumps(spec.model_dump(mode="json", by_alias=True))) == spec


def test_digest_ignores_key_order_and_sees_changes() -> None:
    one = load_spec({"analysis": {"entrypoint": "a:b"}, "dataset": "d"})
    two = load_spec({"dataset": "d", "analysis": {"entrypoint": "a:b"}})
    assert one.digest() == two.digest()
    three = load_spec({"dataset": "d", "analysis": {"entrypoint": "a:b", "params": {"k": 1}}})
    assert three.digest() != one.digest()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datset": "x"}, "spec.datset: unknown field"),
        ({"resources": {"wrkers": 2}}, "spec.resources.wrkers: unknown field"),
        ({"analysis": {"entrypoint": "a:b", "parms": {}}}, "spec.analysis.parms: unknown field"),
        (
            {"resources": {"workers": "many"}},
            "spec.resources.workers: Input should be a valid integer",
        ),
        (
            {"resources": {"workers": 0}},
            "spec.resources.workers: Input should be greater than or equal to 1",
        ),
        (
            {"analysis": {"entrypoint": "no_colon"}},
            "spec.analysis.entrypoint: 'no_colon' is not of the form",
        ),
        ({"select": {"t": [-1, 5]}}, "negative bounds"),
        ({"select": {"t": [5, 5]}}, "empty range [5, 5)"),
        ({"select": {"t": [1, 2, 3]}}, "spec.select.t"),
        ({"resources": {"memory_per_worker": "lots"}}, "cannot read 'lots' as a size"),
        ({"limits": {"timeout": "soon"}}, "cannot read 'soon' as a duration"),
        ({"apiVersion": "insitu/v2"}, "spec.apiVersion"),
        ({"kind": "Pipeline"}, "spec.kind"),
        ({"name": "Has Spaces"}, "is not a valid job name"),
    ],
)
def test_invalid_specs_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput) as error:
        load_spec({**MINIMAL, **change})
    assert message in str(error.value)
    assert str(error.value).startswith("invalid job spec")


def test_missing_required_fields() -> None:
    with pytest.raises(InvalidInput) as error:
        load_spec({"analysis": {}})
    assert "spec.dataset: required field is missing" in str(error.value)
    assert "spec.analysis.entrypoint: required field is missing" in str(error.value)


def test_malformed_yaml_names_the_line() -> None:
    with pytest.raises(InvalidInput, match="not valid YAML or JSON at line 2, column 1"):
        load_spec("dataset: d\n\tanalysis: x\n")


@pytest.mark.parametrize("text", ["- a\n- b\n", "42", ""])
def test_a_spec_must_be_a_mapping(text: str) -> None:
    with pytest.raises(InvalidInput, match="must be a mapping"):
        load_spec(text)


def test_published_schema_is_in_sync() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "jobspecs"))
    from export_schema import PIPELINE_SCHEMA_PATH, SCHEMA_PATH, render

    assert SCHEMA_PATH.read_text() == render(), (
        "jobspecs/jobspec.schema.json is out of date: run 'python jobspecs/export_schema.py'"
    )
    assert PIPELINE_SCHEMA_PATH.read_text() == render(pipeline=True), (
        "jobspecs/pipeline.schema.json is out of date: run 'python jobspecs/export_schema.py'"
    )


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "jobspecs" / "examples").glob("*.yaml"))
    + sorted(ROOT.glob("examples/*/jobs/*.yaml")),
    ids=lambda p: p.name,
)
def test_example_specs_are_valid(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    if document.get("kind") == "Pipeline":
        schema = json.loads((ROOT / "jobspecs" / "pipeline.schema.json").read_text())
        jsonschema.validate(document, schema)
        assert isinstance(load_document(path.read_text()), Pipeline)
        return
    schema = json.loads((ROOT / "jobspecs" / "jobspec.schema.json").read_text())
    jsonschema.validate(document, schema)
    assert isinstance(load_spec(path.read_text()), JobSpec)


def test_schema_rejects_what_the_models_reject() -> None:
    schema = json.loads((ROOT / "jobspecs" / "jobspec.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**MINIMAL, "resources": {"wrkers": 1}}, schema)
