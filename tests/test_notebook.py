"""Notebooks: functions sent with their code, results as Python values, shown as HTML; and
the example notebook executed for real (nbclient, a Jupyter kernel) against a live server."""

from __future__ import annotations

import linecache
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pandas as pd
import pytest

from insitu.client import Client
from insitu.config import Settings
from insitu.errors import AnalysisFailed, InvalidInput
from insitu.notebook import NOTEBOOK_MODULE, JobView, RunResult, package
from insitu.server import BackgroundServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARTIFACTS = Path(__file__).parent / "artifacts"


def in_a_cell(source: str, name: str, **names: Any) -> types.FunctionType:
    """A function defined as a notebook cell defines it: in __main__, its source kept
    where ``inspect`` finds it (as IPython keeps a cell's)."""
    filename = f"<ipython-input-{uuid.uuid4().hex[:8]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__", **names}
    exec(compile(source, filename, "exec"), namespace)
    function = namespace[name]
    assert isinstance(function, types.FunctionType)
    return function


CELL = """
def helper(image):
    return float(np.max(image))


def analysis(data, *, context, scale=1.0):
    mean = data.mean(axis=context.axis("t")) * scale
    return {"mean": mean, "peak": helper(mean.compute()), "table": DataFrame({"a": [1, 2]})}
"""


def test_a_notebook_function_ships_its_source_helpers_and_imports(tmp_path: Path) -> None:
    function = in_a_cell(CELL, "analysis", np=np, DataFrame=pd.DataFrame)
    entrypoint = package(function, tmp_path)
    assert entrypoint == f"{NOTEBOOK_MODULE}:analysis"
    source = (tmp_path / f"{NOTEBOOK_MODULE}.py").read_text()
    assert "import numpy as np" in source and "from pandas import DataFrame" in source
    assert "def helper(image)" in source and "def analysis(data" in source
    module: dict[str, Any] = {}
    exec(compile(source, "shipped", "exec"), module)
    assert module["helper"](np.arange(4)) == 3.0


@pytest.mark.parametrize(
    ("source", "name", "names", "refusal"),
    [
        ("def f(data, *, context):\n    return {'m': data * threshold}\n", "f",
         {"threshold": 3}, "uses threshold from the notebook"),
        ("f = lambda data, *, context: {}\n", "f", {}, "lambda"),
        ("def outer():\n    k = 2\n    def f(data, *, context):\n        return {'k': k}\n"
         "    return f\nf = outer()\n", "f", {}, "not defined at the top level"),
    ],
)  # fmt: skip
def test_what_cannot_be_shipped_is_refused_saying_what_to_do(
    tmp_path: Path, source: str, name: str, names: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(InvalidInput, match=refusal):
        package(in_a_cell(source, name, **names), tmp_path)


def test_a_module_function_ships_its_module_file(tmp_path: Path, analysis_code: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_analysis", analysis_code / "my_analysis.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert package(module.time_mean, tmp_path / "b") == "my_analysis:time_mean"
    assert (tmp_path / "b" / "my_analysis.py").read_text() == (
        analysis_code / "my_analysis.py"
    ).read_text()


def test_jobs_and_results_show_as_html_with_pictures() -> None:
    job = {"id": "j-1", "name": "run", "state": "succeeded", "reason": "done <b>",
           "progress": {"chunks_done": 3, "chunks_total": 4}, "bytes_scanned": 10,
           "bytes_returned": 2}  # fmt: skip
    shown = JobView(job)._repr_html_()
    assert "<progress max='4' value='3'" in shown and "done &lt;b&gt;" in shown
    result = RunResult(job, {"image": np.eye(8), "table": pd.DataFrame({"x": [1]}), "n": 3})
    page = result._repr_html_()
    assert page.count("data:image/png;base64,") == 1 and "array of shape (8, 8)" in page
    assert "<table" in page and "<code>3</code>" in page


@pytest.fixture
def live(settings: Settings) -> Iterator[tuple[str, str]]:
    server = BackgroundServer(settings).start()
    yield server.url, settings.admin_token_path.read_text().strip()
    server.stop()


def test_client_run_returns_values_and_raises_the_job_s_error(
    live: tuple[str, str], movie: tuple[Path, np.ndarray]
) -> None:
    url, token = live
    with Client(url, token) as client:
        client.register_dataset("test/movie", str(movie[0]))
        function = in_a_cell(CELL, "analysis", np=np, DataFrame=pd.DataFrame)
        result = client.run(function, "test/movie", select={"t": [0, 30]},
                            params={"scale": 2.0}, progress=False)  # fmt: skip
        expected = movie[1][:30].mean(axis=0) * 2.0
        np.testing.assert_allclose(result["mean"], expected, rtol=1e-6)
        assert result["peak"] == pytest.approx(expected.max())
        assert list(result["table"]["a"]) == [1, 2] and result.job["name"] == "analysis"
        broken = in_a_cell("def broken(data, *, context):\n    raise ValueError('no cells')\n",
                           "broken")  # fmt: skip
        with pytest.raises(AnalysisFailed, match="no cells"):
            client.run(broken, "test/movie", progress=False)


def test_the_example_notebook_runs_top_to_bottom(live: tuple[str, str], tmp_path: Path) -> None:
    """register, plan, run, plot: executed in a real kernel; it must raise nothing."""
    import os

    from nbclient import NotebookClient

    url, token = live
    notebook = nbformat.read(EXAMPLES / "notebooks" / "quickstart.ipynb", as_version=4)
    environment = {"INSITU_URL": url, "INSITU_TOKEN": token, "INSITU_EXAMPLES": str(EXAMPLES),
                   "INSITU_NOTEBOOK_DATA": str(tmp_path),
                   "MPLBACKEND": "module://matplotlib_inline.backend_inline"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)  # the kernel inherits the test's environment
    try:
        NotebookClient(notebook, timeout=240, kernel_name="python3").execute(
            cwd=str(EXAMPLES / "notebooks")
        )
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    ARTIFACTS.mkdir(exist_ok=True)
    nbformat.write(notebook, ARTIFACTS / "quickstart.executed.ipynb")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "succeeded" in shown and shown.count("data:image/png;base64,") >= 2  # mean, max
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plot
