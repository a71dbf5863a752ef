"""A per-session lock that works from any event loop and any thread.

``asyncio.Lock`` binds itself to one event loop; the sync facade runs calls on
its own loop while a notebook uses the kernel's, and both may touch the same
store. A thread lock, acquired without blocking and retried with a short sleep,
works for both. Contention on one session is rare and short, so the polling
costs nothing measurable.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from .errors import SessionBusy

_POLL = 0.005


class SessionLocks:
    """One lock per session id, created on demand, dropped when free."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    def _get(self, session_id: str) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(session_id, (None, 0))
            if lock is None:
                lock = threading.Lock()
            self._locks[session_id] = (lock, users + 1)
            return lock

    def _put(self, session_id: str) -> None:
        with self._guard:
            lock, users = self._locks[session_id]
            if users <= 1:
                del self._locks[session_id]
            else:
                self._locks[session_id] = (lock, users - 1)

    @asynccontextmanager
    async def hold(self, session_id: str, timeout: float | None) -> AsyncIterator[None]:
        lock = self._get(session_id)
        try:
            await acquire_polling(lock.acquire, session_id, timeout)
            try:
                yield
            finally:
                lock.release()
        finally:
            self._put(session_id)


async def acquire_polling(
    try_acquire: Callable[..., bool], session_id: str, timeout: float | None
) -> None:
    """Call ``try_acquire(blocking=False)`` until it succeeds or ``timeout`` passes."""
    if try_acquire(blocking=False):
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = _POLL
    while True:
        await asyncio.sleep(delay)
        if try_acquire(blocking=False):
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise SessionBusy(session_id, timeout or 0.0)
        delay = min(delay * 1.5, 0.05)
