"""Fixtures of the session-store tests: a real redis-server, and a factory per store kind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pk_notebook.runtime.store import StateStore
from pk_notebook.sessions import MemoryStore, SQLiteStore

# redis_binary and redis_server are shared fixtures: tests/conftest.py.
from .redis_server import RedisServer


@pytest.fixture
def durable_redis(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of its own, with an fsync'ed append-only file: for kill-and-restart tests."""
    server = RedisServer(redis_binary, tmp_path / "redis", durable=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


StoreFactory = Callable[..., StateStore]


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_store(
    store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """``make_store(**options)``: a store of the parametrized kind. Two stores made by one
    test share their data (same file, same Redis prefix), except memory stores."""
    created: list[StateStore] = []
    if store_kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("redis_prefix")

    def make(**options: Any) -> StateStore:
        store: StateStore
        if store_kind == "memory":
            store = MemoryStore(**options)
        elif store_kind == "sqlite":
            store = SQLiteStore(tmp_path / "sessions.sqlite3", **options)
        else:
            from pk_notebook.sessions import RedisStore

            store = RedisStore.from_url(server.url, prefix=prefix, **options)
        created.append(store)
        return store

    try:
        yield make
    finally:
        for store in created:
            await store.aclose()
