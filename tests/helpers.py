"""Small helpers shared by the tests."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def required() -> set[str]:
    """Components CI must provide (``INSITU_REQUIRE=docker,postgres,s3``)."""
    return {c.strip() for c in os.environ.get("INSITU_REQUIRE", "").split(",") if c.strip()}


def missing(component: str, why: str) -> None:
    """Skip a test that needs ``component`` — or fail it when CI requires the component."""
    if component in required():
        pytest.fail(f"{component} is required (INSITU_REQUIRE) but unavailable: {why}")
    pytest.skip(f"{component} unavailable: {why}")


def example_module(example: str, name: str = "generate") -> ModuleType:
    """Load ``examples/<example>/<name>.py`` under a unique module name."""
    path = Path(__file__).resolve().parents[1] / "examples" / example / f"{name}.py"
    module_name = f"insitu_example_{example}_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def assert_one_error_line(result: Any, *fragments: str) -> None:
    """A CLI result that exited 1 with one ``error: ...`` line naming each fragment."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def require_seaweedfs() -> None:
    """Skip (or, under INSITU_REQUIRE=s3, fail) a test when SeaweedFS is not installed."""
    from insitu.errors import StoreUnreachable
    from insitu.seaweedfs import weed_binary

    try:
        weed_binary()
    except StoreUnreachable as exc:
        missing("s3", str(exc))
