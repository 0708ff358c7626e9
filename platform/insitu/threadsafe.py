"""Calls onto an asyncio event loop from any thread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any


def call_in_loop(
    loop: asyncio.AbstractEventLoop | None, call: Callable[..., Any], *args: Any
) -> None:
    """Run ``call(*args)`` on ``loop``: now if this thread runs it, else at its next turn.

    Asyncio's objects (events, futures) are not thread-safe; a worker thread must hand its
    call to their loop. Without a loop (not started, or closed), ``call`` runs here.
    """
    if loop is None or loop.is_closed():
        call(*args)
        return
    try:
        here = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    if here is loop:
        call(*args)
        return
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
        loop.call_soon_threadsafe(call, *args)
