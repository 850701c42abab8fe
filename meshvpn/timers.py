"""One asyncio timer that follows a sans-IO core's ``get_timer()`` (aioquic's ``transmit()`` habit).

Every shell around a core keeps exactly one of these: after feeding the core an input it calls
``follow(core.get_timer())``, and the timer is re-armed only when the deadline moved, so the
common case (traffic that does not change any deadline) costs one comparison.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Optional


class DeadlineTimer:
    """Calls `callback()` at the latest deadline given to :meth:`follow` (loop time, seconds)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: Optional[asyncio.TimerHandle] = None
        self.deadline: Optional[float] = None
        """When the callback runs next; None while the timer is idle."""

    def follow(self, when: Optional[float]) -> None:
        """Run the callback at `when` (None: never); nothing changes if `when` is the current deadline."""
        if when == self.deadline:
            return
        self.cancel()
        if when is not None:
            self.deadline = when
            self._handle = self._loop.call_at(when, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.deadline = None

    def _fire(self) -> None:
        self._handle = self.deadline = None
        self._callback()
