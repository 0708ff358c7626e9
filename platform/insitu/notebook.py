"""Running a function from a notebook (or a module) as an insitu job.

:func:`package` turns an analysis function into a code bundle folder: a function of an
importable module ships its module's file; a function defined in a notebook ships its own
source, the source of the notebook functions it calls, and ``import`` lines for the
modules it uses. Anything else it refers to (a variable of the notebook, a lambda, a
closure) cannot be shipped: it is refused, saying what to do instead (pass values as
``params``). :class:`JobView` and :class:`RunResult` show a job and its results as HTML in
Jupyter, with pictures.
"""

from __future__ import annotations

import base64
import builtins
import html
import inspect
import re
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from insitu.errors import InvalidInput

NOTEBOOK_MODULE = "insitu_notebook"  # the module name a notebook's function ships under
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _global_names(function: types.FunctionType) -> set[str]:
    """The global names a function (and the code nested in it) refers to."""
    names: set[str] = set()
    for code in _code_objects(function.__code__):
        names.update(code.co_names)
    return names


def _importable(value: Any) -> tuple[str, str] | None:
    """(module, name) that import ``value`` (a function or class of an installed module)."""
    module, attribute = getattr(value, "__module__", None), getattr(value, "__name__", None)
    if not module or not attribute or module == "__main__":
        return None
    return (
        (module, attribute) if getattr(sys.modules.get(module), attribute, None) is value else None
    )


def _notebook_source(function: types.FunctionType) -> str:
    """A module's text that defines ``function`` and what it needs from the notebook."""
    lines: dict[str, str] = {}  # import lines, by the name they bind
    functions: dict[str, str] = {}  # sources of notebook functions, by name
    refused: list[str] = []

    def visit(current: types.FunctionType) -> None:
        if current.__name__ in functions:
            return
        if current.__closure__:
            raise InvalidInput(
                f"{current.__name__} uses variables of an enclosing function "
                f"({', '.join(current.__code__.co_freevars)}); define it at the top level of "
                "the notebook"
            )
        try:
            source = textwrap.dedent(inspect.getsource(current))
        except (OSError, TypeError):
            raise InvalidInput(
                f"the source of {current.__name__} cannot be found; define it in a notebook "
                "cell or a module file"
            ) from None
        if current.__name__ == "<lambda>" or not source.lstrip().startswith(("def ", "@", "async")):
            raise InvalidInput("a lambda cannot be shipped; define the analysis with def")
        functions[current.__name__] = source
        for name in sorted(_global_names(current)):
            if name not in current.__globals__:
                continue  # a builtin, or an attribute name
            value = current.__globals__[name]
            if isinstance(value, types.ModuleType):
                module = value.__name__
                lines[name] = f"import {module}" if module == name else f"import {module} as {name}"
            elif isinstance(value, types.FunctionType) and value.__module__ == "__main__":
                visit(value)
            elif (imported := _importable(value)) is not None:
                module, attribute = imported
                alias = f" as {name}" if attribute != name else ""
                lines[name] = f"from {module} import {attribute}{alias}"
            elif not hasattr(builtins, name):
                refused.append(name)

    visit(function)
    if refused:
        raise InvalidInput(
            f"{function.__name__} uses {', '.join(sorted(set(refused)))} from the notebook, "
            "which cannot be sent with it; pass such values as params=..., or define them "
            "inside the function"
        )
    header = "\n".join(lines[name] for name in sorted(lines))
    body = "\n\n".join(functions[name] for name in sorted(functions))
    return f'"""Sent from a notebook by insitu."""\n\n{header}\n\n\n{body}\n'


def package(function: Callable[..., Any], folder: Path) -> str:
    """Write ``function``'s code into ``folder`` (a bundle); return its entrypoint."""
    if not isinstance(function, types.FunctionType):
        raise InvalidInput(
            f"{function!r} is not a plain Python function; define the analysis with def"
        )
    name = function.__name__
    if not _IDENTIFIER.match(name) or "<locals>" in function.__qualname__:
        raise InvalidInput(
            f"{function.__qualname__} is not defined at the top level of its module or notebook"
        )
    folder.mkdir(parents=True, exist_ok=True)
    module = function.__module__
    source_file = inspect.getsourcefile(function) if module != "__main__" else None
    if source_file and Path(source_file).is_file():
        if "." in module:
            raise InvalidInput(
                f"{module} is a module of the package {module.split('.')[0]}; ship the package "
                "with client.submit(spec, code=DIR) instead"
            )
        (folder / f"{module}.py").write_text(Path(source_file).read_text())
        return f"{module}:{name}"
    (folder / f"{NOTEBOOK_MODULE}.py").write_text(_notebook_source(function))
    return f"{NOTEBOOK_MODULE}:{name}"


# -- showing jobs and results in Jupyter -------------------------------------------------


def in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (which shows HTML)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _size(n: float) -> str:
    from insitu.units import format_size

    return format_size(n)


def progress_html(job: dict[str, Any]) -> str:
    """A job's state and progress as a small HTML block."""
    progress = job.get("progress") or {}
    done, total = progress.get("chunks_done", 0), progress.get("chunks_total", 0) or 1
    reason = html.escape(job.get("reason") or "")
    error = job.get("error")
    return (
        f"<div><b>{html.escape(job['name'])}</b> <code>{html.escape(job['id'])}</code>: "
        f"<b>{html.escape(job['state'])}</b> <span style='color:#57606a'>{reason}</span><br>"
        f"<progress max='{int(total)}' value='{int(done)}' style='width:20em'></progress> "
        f"{int(done)}/{int(total)} chunks, scanned {_size(job.get('bytes_scanned', 0))}, "
        f"returned {_size(job.get('bytes_returned', 0))}"
        + (f"<br><span style='color:#b3261e'>{html.escape(error)}</span>" if error else "")
        + "</div>"
    )


class JobView:
    """A job as a notebook shows it: its record, and HTML with its state and progress."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job

    def __getitem__(self, key: str) -> Any:
        return self.job[key]

    def __repr__(self) -> str:
        return f"<insitu job {self.job['id']} {self.job['name']}: {self.job['state']}>"

    def _repr_html_(self) -> str:
        return progress_html(self.job)


def _value_html(key: str, value: Any) -> str:
    import numpy as np
    import pandas as pd

    from insitu.runtime.results import PNG, png

    title = f"<h4 style='margin:0.6em 0 0.2em'>{html.escape(key)}</h4>"
    if isinstance(value, PNG | bytes) and bytes(value[:8]) == b"\x89PNG\r\n\x1a\n":
        data = base64.b64encode(bytes(value)).decode()
        return f"{title}<img src='data:image/png;base64,{data}' style='max-width:320px'>"
    if isinstance(value, np.ndarray):
        text = f"array of shape {value.shape}, {value.dtype}"
        if value.dtype.kind in "biuf" and value.size:
            text += f", from {np.nanmin(value):.4g} to {np.nanmax(value):.4g}"
        picture = ""
        if value.ndim == 2 and value.dtype.kind in "biuf" and value.size:
            data = base64.b64encode(bytes(png(np.nan_to_num(value.astype("float64"))))).decode()
            picture = f"<br><img src='data:image/png;base64,{data}' style='width:256px'>"
        return f"{title}{html.escape(text)}{picture}"
    if isinstance(value, pd.DataFrame):
        return f"{title}{value.head(10).to_html(max_cols=12)}<small>{len(value)} rows</small>"
    return f"{title}<code>{html.escape(repr(value))[:2000]}</code>"


class RunResult:
    """A finished job's results by key (NumPy arrays, DataFrames, JSON values, pictures)."""

    def __init__(self, job: dict[str, Any], values: dict[str, Any]) -> None:
        self.job = job
        self.values = values

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def keys(self) -> list[str]:
        return list(self.values)

    def __repr__(self) -> str:
        return f"<insitu results of {self.job['id']}: {', '.join(self.values)}>"

    def _repr_html_(self) -> str:
        return progress_html(self.job) + "".join(
            _value_html(key, value) for key, value in self.values.items()
        )
