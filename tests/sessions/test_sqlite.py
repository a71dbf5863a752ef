"""What only the SQLite store has: another *process* holding the file, leases that
are lost, and rows that pk_notebook did not write."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest

from pk_notebook.runtime import (
    Message,
    Pipeline,
    ProviderMiddleware,
    SessionError,
    StoreUnavailable,
)
from pk_notebook.sessions import SQLiteStore

from .test_store_contract import echo_provider

pytestmark = pytest.mark.timeout(60)

HOLD = 5.0  # seconds the other process keeps the file's write lock

_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
"""


@asynccontextmanager
async def write_lock_held_elsewhere(path: Path, seconds: float = HOLD) -> AsyncIterator[None]:
    """Another process takes the file's write lock (``BEGIN IMMEDIATE``) and sleeps."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, str(path), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line.strip() == b"held", line
        yield
        assert await asyncio.wait_for(proc.wait(), timeout=seconds + 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class LagMeter:
    """A ticker task: how late the event loop ran it, at worst."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.worst = 0.0
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.period
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, loop.time() - due)
            self.ticks += 1

    def __enter__(self) -> LagMeter:
        self._task = asyncio.ensure_future(self._tick())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A session file that exists already (in WAL mode), as after a first use."""
    path = tmp_path / "sessions.sqlite3"
    store = SQLiteStore(path)
    await store.append("warm", [Message("user", "hello")])
    await store.aclose()
    return path


def sql(path: Path, statement: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """One statement on its own connection, committed: another process's view of the file."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return [tuple(row) for row in conn.execute(statement, params)]


def lease_rows(path: Path) -> list[tuple[object, ...]]:
    return sql(path, "SELECT session_id, owner FROM locks")


# --- nothing blocks the event loop ---------------------------------------------------------


async def test_another_process_holding_the_file_never_blocks_the_loop(db: Path) -> None:
    store = SQLiteStore(db)
    fresh = SQLiteStore(db)  # never opened yet: opening happens while the file is held
    pipe = Pipeline(ProviderMiddleware(echo_provider(chunk_delay=0)), state_store=store)
    loop = asyncio.get_running_loop()
    try:
        async with write_lock_held_elsewhere(db):
            # Measured from here: starting the other process is the test's own doing.
            with LagMeter() as lag:
                started = loop.time()
                turn = asyncio.ensure_future(pipe.execute_with_context("s", "user", "q"))
                write = asyncio.ensure_future(fresh.append("t", [Message("user", "x")]))
                assert [m.content for m in await fresh.load("warm")] == ["hello"]  # WAL: reads
                await asyncio.sleep(0.5)
                assert not turn.done() and not write.done()  # both wait for the other process
                result = await turn
                await write
                waited = loop.time() - started
        sessions = {info.session_id for info in await store.list_sessions()}
        assert result.complete
        assert waited >= HOLD - 1.5, waited  # they really waited for the other process
        assert {"s", "t", "warm"} <= sessions
        assert lag.ticks > 100
        assert lag.worst < 0.1, f"the event loop stalled {lag.worst * 1000:.0f} ms"
    finally:
        await pipe.shutdown()
        await store.aclose()
        await fresh.aclose()
    assert lease_rows(db) == []


async def test_a_turn_waiting_for_the_lease_is_cancelled_promptly_and_leaves_no_lease(
    db: Path,
) -> None:
    store = SQLiteStore(db)
    pipe = Pipeline(ProviderMiddleware(echo_provider(chunk_delay=0)), state_store=store)
    loop = asyncio.get_running_loop()
    try:
        async with write_lock_held_elsewhere(db):
            with LagMeter() as lag:
                started = loop.time()
                turn = asyncio.ensure_future(pipe.execute_with_context("c", "user", "q"))
                await asyncio.sleep(0.3)
                assert not turn.done()
                turn.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await turn
                cancelled_after = loop.time() - started
            assert cancelled_after < 1.5, cancelled_after  # not after the other process
        assert lag.worst < 0.1, f"the event loop stalled {lag.worst * 1000:.0f} ms"
        # The other process is gone: the session is free at once, for anyone.
        other = SQLiteStore(db)
        try:
            async with other.lock("c", timeout=1):
                pass
        finally:
            await other.aclose()
    finally:
        await pipe.shutdown()
        await store.aclose()  # runs after anything still queued for the file
    assert lease_rows(db) == []
    assert sql(db, "SELECT COUNT(*) FROM messages WHERE session_id='c'") == [(0,)]


async def test_a_lock_timeout_is_kept_while_another_process_holds_the_file(db: Path) -> None:
    from pk_notebook.runtime import SessionBusy

    store = SQLiteStore(db)
    try:
        async with write_lock_held_elsewhere(db):
            started = time.monotonic()
            with pytest.raises(SessionBusy):
                async with store.lock("busy", timeout=0.5):
                    pytest.fail("took the lease while another process held the file")
            assert time.monotonic() - started < HOLD - 2
    finally:
        await store.aclose()
    assert lease_rows(db) == []


# --- a lost lease saves nothing --------------------------------------------------------------


def take_over(path: Path, session_id: str) -> None:
    """What another process does once our lease has expired: it owns the row now."""
    sql(
        path,
        "UPDATE locks SET owner='another-process', expires_at=? WHERE session_id=?",
        (time.time() + 60, session_id),
    )


async def test_a_lost_lease_does_not_save(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        await store.append("taken", [Message("user", "before")])
        async with store.lock("taken", timeout=1):
            take_over(db, "taken")
            with pytest.raises(SessionError, match="was not saved") as caught:
                await store.append("taken", [Message("user", "late"), Message("assistant", "x")])
            assert str(db) in str(caught.value)
        assert lease_rows(db) == [("taken", "another-process")]  # theirs, untouched
        assert [m.content for m in await store.load("taken")] == ["before"]
    finally:
        await store.aclose()


async def test_a_deleted_lease_row_does_not_save(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        async with store.lock("gone", timeout=1):
            sql(db, "DELETE FROM locks")
            with pytest.raises(SessionError, match="was not saved"):
                await store.append("gone", [Message("user", "q")])
        assert await store.load("gone") == []
        await store.append("gone", [Message("user", "no lock held: saved")])
        assert len(await store.load("gone")) == 1
    finally:
        await store.aclose()


async def test_a_lost_lease_reaches_the_result_as_a_warning_not_an_error(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        async with Pipeline(ProviderMiddleware(echo_provider()), state_store=store) as pipe:
            stream = await pipe.execute_stream_with_context("w", "user", "q")
            take_over(db, "w")
            result = await stream.collect()
        assert result.complete and result.text.startswith("A: q")
        assert any("was not saved" in w for w in result.warnings)
        assert await store.load("w") == []
    finally:
        await store.aclose()


# --- rows pk_notebook did not write ----------------------------------------------------------


@pytest.mark.parametrize(
    "column, value, said",
    [
        pytest.param("meta", "{not json", "meta that is not JSON", id="meta-not-json"),
        pytest.param("meta", "[1, 2]", "JSON list", id="meta-not-an-object"),
        pytest.param("role", "robot", "'robot'", id="unknown-role"),
        pytest.param("content", b"\x00\xff", "content of type bytes", id="content-blob"),
        pytest.param("created_at", "yesterday", "'yesterday'", id="time-not-a-number"),
        pytest.param("status", b"\x01", "status of type bytes", id="status-not-text"),
    ],
)
async def test_a_corrupt_row_names_the_file_and_the_session(
    db: Path, column: str, value: object, said: str
) -> None:
    store = SQLiteStore(db)
    try:
        await store.append("bad-session", [Message("user", "q"), Message("assistant", "a")])
        sql(db, f"UPDATE messages SET {column}=? WHERE id=(SELECT MAX(id) FROM messages)", (value,))
        with pytest.raises(StoreUnavailable) as caught:
            await store.load("bad-session")
        message = str(caught.value)
        assert str(db) in message and "'bad-session'" in message and said in message, message
        assert [m.content for m in await store.load("warm")] == ["hello"]  # others still load
    finally:
        await store.aclose()


async def test_corrupt_session_times_name_the_file_and_the_session(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        sql(db, "UPDATE sessions SET updated_at='soon' WHERE session_id='warm'")
        with pytest.raises(StoreUnavailable) as caught:
            await store.list_sessions()
        assert str(db) in str(caught.value) and "'warm'" in str(caught.value)
    finally:
        await store.aclose()


async def test_failures_of_the_file_name_the_file_and_the_session(db: Path) -> None:
    store = SQLiteStore(db)
    try:
        await store.load("warm")  # opened
        sql(db, "DROP TABLE messages")
        with pytest.raises(StoreUnavailable) as caught:
            await store.load("s-42")
        assert str(db) in str(caught.value) and "'s-42'" in str(caught.value)
    finally:
        await store.aclose()


async def test_the_store_can_be_used_again_after_aclose(db: Path) -> None:
    store = SQLiteStore(db)
    await store.load("warm")
    await store.aclose()
    await store.aclose()  # twice is fine
    assert [m.content for m in await store.load("warm")] == ["hello"]
    await store.aclose()


async def test_a_file_from_before_tool_parts_upgrades_in_place(tmp_path: Path) -> None:
    """A session file written before the ``parts`` column existed opens, reads and grows."""
    import sqlite3

    from pk_notebook.runtime import ToolCall

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE sessions (session_id TEXT PRIMARY KEY, created_at REAL NOT NULL,
                               updated_at REAL NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, session_id TEXT NOT NULL,
                               role TEXT NOT NULL, content TEXT NOT NULL, status TEXT,
                               meta TEXT, created_at REAL NOT NULL);
        INSERT INTO sessions VALUES ('old', 1.0, 1.0);
        INSERT INTO messages(session_id, role, content, status, meta, created_at)
            VALUES ('old', 'user', 'hi', NULL, NULL, 1.0),
                   ('old', 'assistant', 'hello', NULL, '{"model": "m"}', 2.0);
        """
    )
    conn.commit()
    conn.close()
    store = SQLiteStore(path)
    try:
        old = await store.load("old")
        assert [(m.role, m.content) for m in old] == [("user", "hi"), ("assistant", "hello")]
        call = Message("assistant", "", tool_calls=(ToolCall("c", "f", "{}"),))
        await store.append("old", [call])
        assert (await store.load("old"))[-1] == call
    finally:
        await store.aclose()
