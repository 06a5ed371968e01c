"""The event loop every long-running entry point runs on.

uvloop's loop does the per-command socket work of an SMTP or milter session (a
read, a short reply, a timer reset) in C; measured with ``make bench`` it takes
7-14% of the CPU off each 5 KB message relayed, which is most of what a
pass-through gateway spends. It is a well-kept, widely deployed package (the
libuv loop behind many asyncio servers), but not essential: where it cannot be
imported, or ``MILTER_EVENT_LOOP=asyncio`` asks for the standard loop (to compare,
or to rule the loop out while debugging), the standard library's loop serves.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's constructor, or None for the standard loop."""
    if os.environ.get("MILTER_EVENT_LOOP", "").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    """For the start-up log line: which loop the process runs on."""
    return "asyncio" if loop_factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
