"""The interface of a session store, and the policies shared by every store.

A store keeps each session's messages in order. The pipeline holds the
session's lock from the moment it reads the history until the new turn is
appended, so two turns on one session never interleave: the second waits,
then sees the first. ``lock`` therefore has to exclude every user of the same
store, across processes where the store itself is shared (SQLite, Redis).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .types import Message

#: session ids are used in file names, Redis keys and URLs: keep them plain
_MAX_SESSION_ID = 200


def check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not session_id.strip():
        raise ConfigurationError("a session id must be a non-empty string, e.g. 'demo'")
    if len(session_id) > _MAX_SESSION_ID or any(ch in session_id for ch in "\x00\r\n"):
        raise ConfigurationError(
            f"session id {session_id[:40]!r} is not usable: keep it under "
            f"{_MAX_SESSION_ID} characters, on one line"
        )
    return session_id


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A line of ``list_sessions()``."""

    session_id: str
    messages: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class HistoryLimit:
    """How much history is sent with a new turn.

    The store keeps every message; the limit only trims what the provider sees.
    ``max_tokens`` uses a rough count (4 characters a token) because the exact
    tokenizer depends on the model and is not worth a dependency here.
    """

    max_messages: int | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"HistoryLimit.{name} must be a positive int or None")

    def apply(self, messages: Sequence[Message]) -> list[Message]:
        kept = list(messages)
        if self.max_messages is not None and len(kept) > self.max_messages:
            kept = kept[-self.max_messages :]
        if self.max_tokens is not None:
            budget = self.max_tokens
            out: list[Message] = []
            for message in reversed(kept):
                cost = estimate_tokens(message.content) + sum(
                    estimate_tokens(c.arguments) for c in message.tool_calls
                )
                if cost > budget and out:
                    break
                budget -= cost
                out.append(message)
            kept = out[::-1]
        # A window must not open on an assistant answer whose question was cut off, nor
        # on a tool result whose call was cut off: it opens on a user or system message.
        # Cutting only at the front keeps every later call next to its result.
        while kept and kept[0].role in ("assistant", "tool"):
            kept.pop(0)
        return kept


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


class StateStore(abc.ABC):
    """Where session histories live. Subclasses: memory, SQLite, Redis."""

    @abc.abstractmethod
    async def load(self, session_id: str) -> list[Message]:
        """All messages of the session, oldest first; empty if it does not exist."""

    @abc.abstractmethod
    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        """Add messages at the end, all or none."""

    @abc.abstractmethod
    async def list_sessions(self) -> list[SessionInfo]:
        """Every session the store holds, most recently used first."""

    @abc.abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Forget a session; True if it existed."""

    @abc.abstractmethod
    def lock(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Exclusive access to one session; raises SessionBusy after ``timeout`` seconds."""

    async def aclose(self) -> None:
        """Release connections and files."""
        return None

    # --- built on the primitives above; stores may override for speed -------------

    async def fork(self, source_id: str, target_id: str) -> int:
        """Copy a session's history into a new session; returns the number of messages."""
        check_session_id(target_id)
        messages = await self.load(source_id)
        if await self.load(target_id):
            raise ConfigurationError(
                f"cannot fork into {target_id!r}: that session already has messages; "
                "delete it first or pick another id"
            )
        if messages:
            await self.append(target_id, messages)
        return len(messages)

    async def export(self, session_id: str) -> dict[str, Any]:
        """The session as a JSON-ready dict (``json.dumps`` works on it)."""
        messages = await self.load(session_id)
        return {
            "session_id": session_id,
            "messages": [m.to_dict() for m in messages],
        }

    async def export_json(self, session_id: str, *, indent: int | None = 2) -> str:
        return json.dumps(await self.export(session_id), indent=indent, ensure_ascii=False)

    async def import_session(self, data: dict[str, Any], *, session_id: str | None = None) -> str:
        """Load what :meth:`export` produced into this store (possibly under a new id)."""
        target = check_session_id(session_id or data["session_id"])
        messages = [Message.from_dict(m) for m in data.get("messages", [])]
        if await self.load(target):
            raise ConfigurationError(f"session {target!r} already exists; delete it first")
        await self.append(target, messages)
        return target

    async def __aenter__(self) -> StateStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
