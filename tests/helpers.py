"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

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
