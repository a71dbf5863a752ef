"""Sessions in this process's memory: fast, bounded, gone when the kernel restarts."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from .errors import ConfigurationError
from .locks import SessionLocks
from .store import SessionInfo, StateStore, check_session_id
from .ttl import parse_ttl
from .types import Message


@dataclass
class _Session:
    messages: list[Message] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    touched: float = field(default_factory=time.monotonic)


class MemoryStore(StateStore):
    """Keeps at most ``max_sessions`` sessions (least recently used go first); a
    session unused for ``ttl`` (seconds or ``"24h"``) is forgotten. Reads and
    writes both count as use (a sliding TTL)."""

    def __init__(self, *, max_sessions: int = 1000, ttl: float | str | None = None) -> None:
        if max_sessions < 1:
            raise ConfigurationError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.ttl = parse_ttl(ttl)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._guard = threading.Lock()
        self._locks = SessionLocks()

    def __repr__(self) -> str:
        return f"MemoryStore(sessions={len(self._sessions)}, max_sessions={self.max_sessions})"

    def _live(self, session_id: str) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if self.ttl is not None and now - session.touched > self.ttl:
            del self._sessions[session_id]
            return None
        session.touched = now
        self._sessions.move_to_end(session_id)
        return session

    async def load(self, session_id: str) -> list[Message]:
        with self._guard:
            session = self._live(session_id)
            return list(session.messages) if session else []

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        check_session_id(session_id)
        with self._guard:
            session = self._live(session_id)
            if session is None:
                session = self._sessions[session_id] = _Session()
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            session.messages.extend(messages)
            session.updated_at = time.time()

    async def list_sessions(self) -> list[SessionInfo]:
        with self._guard:
            for session_id in list(self._sessions):
                self._expire(session_id)
            return [
                SessionInfo(sid, len(s.messages), s.created_at, s.updated_at)
                for sid, s in reversed(self._sessions.items())
            ]

    def _expire(self, session_id: str) -> None:
        session = self._sessions[session_id]
        if self.ttl is not None and time.monotonic() - session.touched > self.ttl:
            del self._sessions[session_id]

    async def delete(self, session_id: str) -> bool:
        with self._guard:
            return self._sessions.pop(session_id, None) is not None

    def lock(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(session_id, timeout)
