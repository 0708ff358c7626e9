"""The job spec: what a researcher writes to run an analysis next to a dataset.

The runtime imports this module too, so it depends only on pydantic and PyYAML.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from insitu.errors import InvalidInput
from insitu.units import parse_duration, parse_size

API_VERSION = "insitu/v1"
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[a-zA-Z]*\s*$"},
            ],
            "examples": ["16MiB", "2GB", 1048576],
        }
    ),
]
Seconds = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string"}],
            "examples": ["30m", "1h30m", "45s", 600],
        }
    ),
]
_ENTRYPOINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
#: A result's or output's name: it becomes a file or folder name in the job's workspace.
RESULT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: A catalog name: lower-case words separated by '/', e.g. 'ophys/session-001'.
DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*$")
MAX_DATASET_NAME = 200
MAX_OUTPUTS = 16
MAX_STEPS = 16
#: Another job's output as a job's input: ``job:<id>/<output>``, or in a pipeline file
#: ``step:<step name>/<output>``.
INPUT_REF = re.compile(
    r"^(?P<kind>job|step):(?P<ref>[A-Za-z0-9][A-Za-z0-9._-]{0,62})/"
    r"(?P<key>[A-Za-z0-9][A-Za-z0-9_.-]{0,99})$"
)
#: Largest spec accepted, as text and once YAML aliases are expanded (params included).
MAX_SPEC_BYTES = 256 * 1024
#: Most YAML aliases (``*name``) in one spec, and deepest nesting of its values.
MAX_SPEC_ALIASES = 64
MAX_SPEC_DEPTH = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Analysis(_Strict):
    """The code to run and its environment."""

    image: str | None = Field(
        None,
        description="Container image holding the analysis environment "
        "(ignored by the local backend, which uses the server's Python).",
    )
    entrypoint: str = Field(
        description="The function to call, as 'package.module:function'.",
        examples=["ophys_analyses.projection:mean_projection"],
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments passed to the function (JSON values)."
    )

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, value: str) -> str:
        if not _ENTRYPOINT_RE.match(value):
            raise ValueError(
                f"{value!r} is not of the form 'package.module:function', e.g. 'my_analysis:run'"
            )
        return value


class Resources(_Strict):
    """The Dask cluster the job runs on."""

    workers: int = Field(1, ge=1, description="Number of Dask workers.")
    threads_per_worker: int = Field(2, ge=1, description="Threads in each worker.")
    memory_per_worker: ByteSize = Field(
        parse_size("2GiB"), description="Memory limit of each worker, e.g. '4GiB'."
    )
    gpu: int = Field(0, ge=0, description="GPUs per worker (Kubernetes backend only).")

    @property
    def cores(self) -> int:
        """Cores the job holds while it runs."""
        return self.workers * self.threads_per_worker


class Limits(_Strict):
    """Ceilings the job agrees to; the platform's own caps apply on top."""

    timeout: Seconds = Field(parse_duration("30m"), description="Wall time, e.g. '30m' or '2h'.")
    max_result_bytes: ByteSize = Field(
        parse_size("64MiB"), description="Largest total size of the results, e.g. '16MiB'."
    )


class OutputSpec(_Strict):
    """How an output the analysis returns as ``insitu.Output`` enters the catalog."""

    name: str | None = Field(
        None,
        description="Catalog name of the derived dataset, e.g. 'ophys/session-001/corrected'; "
        "default 'derived/<job id>/<output>'.",
    )
    description: str | None = Field(None, max_length=2000)

    @field_validator("name")
    @classmethod
    def _dataset_name(cls, value: str | None) -> str | None:
        if value is not None and (not DATASET_NAME.match(value) or len(value) > MAX_DATASET_NAME):
            raise ValueError(
                f"{value!r} is not a valid dataset name; use lower-case words separated "
                "by '/', e.g. 'ophys/session-001/corrected'"
            )
        return value


class JobSpec(_Strict):
    """A job: an analysis applied to a selection of one array of a dataset."""

    api_version: Literal["insitu/v1"] = Field("insitu/v1", alias="apiVersion")
    kind: Literal["Job"] = "Job"
    name: str | None = Field(
        None, description="Short name for people (lower case, digits, '.', '_', '-')."
    )
    dataset: str = Field(
        description="Catalog name of the dataset, e.g. 'ophys/session-001'; or another "
        "job's output, 'job:<id>/<output>' (in a pipeline, 'step:<name>/<output>')."
    )
    array: str | None = Field(
        None, description="Array path inside the dataset; default is the full-resolution level."
    )
    select: dict[str, tuple[int | None, int | None]] = Field(
        default_factory=dict,
        description="Half-open [start, stop) ranges per named axis; null means the axis' end. "
        "Axes not named are taken whole.",
    )
    analysis: Analysis
    resources: Resources = Field(default_factory=Resources)
    limits: Limits = Field(default_factory=Limits)
    outputs: dict[str, OutputSpec] = Field(
        default_factory=dict,
        description="Outputs the analysis returns as insitu.Output, by result name: they stay "
        "next to the data and become derived datasets, named here.",
    )

    @field_validator("outputs")
    @classmethod
    def _output_keys(cls, value: dict[str, OutputSpec]) -> dict[str, OutputSpec]:
        if len(value) > MAX_OUTPUTS:
            raise ValueError(f"at most {MAX_OUTPUTS} outputs per job, got {len(value)}")
        for key in value:
            if not RESULT_KEY.match(key):
                raise ValueError(
                    f"output name {key!r} must be letters, digits, '.', '_' or '-', as the "
                    "analysis returns it"
                )
        names = [o.name for o in value.values() if o.name]
        if len(set(names)) != len(names):
            raise ValueError("two outputs are given the same dataset name")
        return value

    @field_validator("name")
    @classmethod
    def _name_form(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid job name; use up to 63 lower-case letters, "
                "digits, '.', '_' or '-'"
            )
        return value

    @field_validator("select")
    @classmethod
    def _ranges_ordered(
        cls, value: dict[str, tuple[int | None, int | None]]
    ) -> dict[str, tuple[int | None, int | None]]:
        for axis, (start, stop) in value.items():
            if (start is not None and start < 0) or (stop is not None and stop < 0):
                raise ValueError(
                    f"axis {axis!r}: negative bounds are not allowed, got [{start}, {stop}]"
                )
            if start is not None and stop is not None and stop <= start:
                raise ValueError(
                    f"axis {axis!r}: empty range [{start}, {stop}); stop must exceed start"
                )
        return value

    def display_name(self) -> str:
        """The job's name, or one derived from its entrypoint."""
        return self.name or self.analysis.entrypoint.rsplit(":", 1)[-1].replace("_", "-")

    def canonical_json(self) -> str:
        """The spec as canonical JSON (sorted keys), the input of :meth:`digest`."""
        return json.dumps(
            self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
        )

    def digest(self) -> str:
        """SHA-256 of the canonical spec, recorded in every result's provenance."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class Pipeline(_Strict):
    """A short list of jobs, each step able to read an earlier step's output."""

    api_version: Literal["insitu/v1"] = Field("insitu/v1", alias="apiVersion")
    kind: Literal["Pipeline"]
    name: str | None = Field(None, description="Short name for people.")
    steps: list[JobSpec] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The jobs, in order; each needs a name, and a step reads an earlier "
        "one's output as dataset 'step:<name>/<output>'.",
    )

    @field_validator("steps")
    @classmethod
    def _steps_refer_back(cls, steps: list[JobSpec]) -> list[JobSpec]:
        seen: set[str] = set()
        for number, step in enumerate(steps):
            if step.name is None:
                raise ValueError(f"step {number + 1} needs a name, e.g. name: correct")
            if step.name in seen:
                raise ValueError(f"two steps are named {step.name!r}")
            ref = INPUT_REF.match(step.dataset)
            if ref and ref["kind"] == "step" and ref["ref"] not in seen:
                raise ValueError(
                    f"step {step.name!r} reads {step.dataset!r}, but no earlier step is named "
                    f"{ref['ref']!r}; a step can read only the outputs of steps before it"
                )
            seen.add(step.name)
        return steps


def format_validation_error(error: ValidationError, root: str = "spec") -> str:
    """Turn pydantic's error list into lines like ``spec.resources.workers: ...``."""
    lines = []
    for item in error.errors():
        path = ".".join([root, *(str(p) for p in item["loc"])])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against jobspecs/jobspec.schema.json"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{path}: {message}")
    return "invalid job spec:\n  " + "\n  ".join(lines)


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting aliases so a few bytes cannot expand to gigabytes."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_SPEC_ALIASES:
                raise InvalidInput(
                    f"job spec uses more than {MAX_SPEC_ALIASES} YAML aliases ('*name'); "
                    "write the values out instead"
                )
        return super().compose_node(parent, index)


def _parse_text(source: str | bytes) -> Any:
    if len(source) > MAX_SPEC_BYTES:
        raise InvalidInput(
            f"job spec is {len(source):,} bytes, over the limit of {MAX_SPEC_BYTES:,}; "
            "pass large inputs as a dataset or a code bundle, not as params"
        )
    try:
        loader = _SpecLoader(source)  # its reader refuses control characters at once
    except yaml.YAMLError as exc:
        raise InvalidInput(f"job spec is not valid YAML or JSON: {exc}") from None
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed"
        raise InvalidInput(f"job spec is not valid YAML or JSON{where}: {problem}") from None
    except RecursionError:
        raise InvalidInput(
            f"job spec is nested deeper than {MAX_SPEC_DEPTH} levels; flatten its params"
        ) from None
    finally:
        loader.dispose()


def check_spec_size(data: Any) -> None:
    """Refuse a parsed spec that is too deep or too large once aliases are expanded.

    Walks the values with a budget, so a spec whose aliases would expand to gigabytes
    (or refer to themselves) is refused after reading at most ``MAX_SPEC_BYTES``.
    """
    budget = MAX_SPEC_BYTES
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_SPEC_DEPTH:
            raise InvalidInput(
                f"job spec is nested deeper than {MAX_SPEC_DEPTH} levels (or refers to "
                "itself through a YAML alias); flatten its params"
            )
        if isinstance(value, dict):
            budget -= 2 + len(value)
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list | tuple):
            budget -= 2 + len(value)
            stack.extend((v, depth + 1) for v in value)
        else:
            budget -= len(value) if isinstance(value, str | bytes) else 8
        if budget < 0:
            raise InvalidInput(
                f"job spec expands to more than {MAX_SPEC_BYTES:,} bytes (YAML aliases "
                "count once per use); pass large inputs as a dataset or a code bundle"
            )


def load_document(source: str | bytes | dict[str, Any]) -> JobSpec | Pipeline:
    """A job spec, or a pipeline file (``kind: Pipeline``), with readable errors."""
    data = _parse_text(source) if isinstance(source, bytes | str) else source
    if isinstance(data, dict) and data.get("kind") == "Pipeline":
        check_spec_size(data)
        try:
            return Pipeline.model_validate(data)
        except ValidationError as exc:
            text = format_validation_error(exc, root="pipeline")
            raise InvalidInput(text.replace("invalid job spec", "invalid pipeline", 1)) from None
    return load_spec(data)


def load_spec(source: str | bytes | dict[str, Any]) -> JobSpec:
    """Parse a spec from YAML or JSON text, or from a dict, with readable errors."""
    data = _parse_text(source) if isinstance(source, bytes | str) else source
    if not isinstance(data, dict):
        raise InvalidInput(
            f"a job spec must be a mapping of fields (apiVersion, dataset, analysis, ...), "
            f"got {type(data).__name__}"
        )
    check_spec_size(data)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error(exc)) from None


def _published(model: type[BaseModel], file: str, title: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://insitu.dev/schemas/{file}"
    schema["title"] = title
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema published as ``jobspecs/jobspec.schema.json``."""
    return _published(JobSpec, "jobspec.schema.json", "insitu job spec")


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema published as ``jobspecs/pipeline.schema.json``."""
    return _published(Pipeline, "pipeline.schema.json", "insitu pipeline")
