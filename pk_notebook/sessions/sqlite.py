"""Sessions in a SQLite file: they survive kernel restarts and are shared by every
process that opens the same file.

The default file is ``$PK_NOTEBOOK_HOME/sessions.sqlite3``, or
``$XDG_DATA_HOME/pk_notebook/sessions.sqlite3`` (``~/.local/share/...``) when
``PK_NOTEBOOK_HOME`` is not set. The session lock is a lease row in the file, so
two kernels taking a turn on one session queue up like two tasks in one kernel;
a lease left behind by a crashed process expires after ``lease`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypeVar

from ..runtime.errors import StoreUnavailable
from ..runtime.store import SessionInfo, StateStore, check_session_id
from ..runtime.types import Message
from ._locks import acquire_polling
from .ttl import parse_ttl

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT,
    meta TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_session ON messages(session_id, id);
CREATE TABLE IF NOT EXISTS locks (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


def default_path() -> Path:
    home = os.environ.get("PK_NOTEBOOK_HOME")
    if home:
        return Path(home) / "sessions.sqlite3"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "pk_notebook" / "sessions.sqlite3"


class SQLiteStore(StateStore):
    """A session store in one SQLite file (``path``; see the module doc for the default).

    ``ttl`` forgets sessions unused for that long (sliding: reads count as use).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        ttl: float | str | None = None,
        lease: float = 30.0,
    ) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.ttl = parse_ttl(ttl)
        self.lease = lease
        self._conn: sqlite3.Connection | None = None
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # --- connection -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    str(self.path), timeout=30, check_same_thread=False, isolation_level=None
                )
                _use_wal(conn)
                conn.execute("PRAGMA foreign_keys=ON")
                conn.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(
                    f"cannot open the session file {self.path}: {exc}. Check the path "
                    "is writable, or pass SQLiteStore(path=...) / set PK_NOTEBOOK_HOME."
                ) from exc
            self._conn = conn
        return self._conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            with self._guard:
                conn = self._connect()
                try:
                    return fn(conn)
                except sqlite3.DatabaseError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise StoreUnavailable(f"the session file {self.path} failed: {exc}") from exc

        return await asyncio.to_thread(work)

    async def aclose(self) -> None:
        with self._guard:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- the interface --------------------------------------------------------------

    def _expired(self, conn: sqlite3.Connection, session_id: str) -> bool:
        if self.ttl is None:
            return False
        row = conn.execute(
            "SELECT updated_at FROM sessions WHERE session_id=?", (session_id,)
        ).fetchone()
        if row and time.time() - row[0] > self.ttl:
            conn.execute("DELETE FROM sessions WHERE session_id=?", (session_id,))
            return True
        return False

    async def load(self, session_id: str) -> list[Message]:
        def read(conn: sqlite3.Connection) -> list[Message]:
            if self._expired(conn, session_id):
                return []
            rows = conn.execute(
                "SELECT role, content, status, meta, created_at FROM messages "
                "WHERE session_id=? ORDER BY id",
                (session_id,),
            ).fetchall()
            if rows and self.ttl is not None:
                conn.execute(
                    "UPDATE sessions SET updated_at=? WHERE session_id=?", (time.time(), session_id)
                )
            return [
                Message(role, content, status, created_at, json.loads(meta) if meta else {})
                for role, content, status, meta, created_at in rows
            ]

        return await self._run(read)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        check_session_id(session_id)
        rows = [
            (
                session_id,
                m.role,
                m.content,
                m.status,
                json.dumps(dict(m.meta)) if m.meta else None,
                m.created_at,
            )
            for m in messages
        ]

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            self._expired(conn, session_id)
            conn.execute(
                "INSERT INTO sessions(session_id, created_at, updated_at) VALUES (?,?,?) "
                "ON CONFLICT(session_id) DO UPDATE SET updated_at=excluded.updated_at",
                (session_id, now, now),
            )
            conn.executemany(
                "INSERT INTO messages(session_id, role, content, status, meta, created_at) "
                "VALUES (?,?,?,?,?,?)",
                rows,
            )
            conn.execute("COMMIT")

        await self._run(write)

    async def list_sessions(self) -> list[SessionInfo]:
        def read(conn: sqlite3.Connection) -> list[SessionInfo]:
            if self.ttl is not None:
                conn.execute("DELETE FROM sessions WHERE updated_at < ?", (time.time() - self.ttl,))
            rows = conn.execute(
                "SELECT s.session_id, COUNT(m.id), s.created_at, s.updated_at FROM sessions s "
                "LEFT JOIN messages m ON m.session_id = s.session_id "
                "GROUP BY s.session_id ORDER BY s.updated_at DESC"
            ).fetchall()
            return [SessionInfo(*row) for row in rows]

        return await self._run(read)

    async def delete(self, session_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM sessions WHERE session_id=?", (session_id,))
            return cursor.rowcount > 0

        return await self._run(remove)

    def lock(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return self._hold(session_id, timeout)

    @asynccontextmanager
    async def _hold(self, session_id: str, timeout: float | None) -> AsyncIterator[None]:
        owner = uuid.uuid4().hex

        def try_acquire(blocking: bool = False) -> bool:
            def take(conn: sqlite3.Connection) -> bool:
                now = time.time()
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT owner, expires_at FROM locks WHERE session_id=?", (session_id,)
                ).fetchone()
                if row is not None and row[1] > now and row[0] != owner:
                    conn.execute("COMMIT")
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO locks(session_id, owner, expires_at) VALUES (?,?,?)",
                    (session_id, owner, now + self.lease),
                )
                conn.execute("COMMIT")
                return True

            with self._guard:
                conn = self._connect()
                try:
                    return take(conn)
                except sqlite3.DatabaseError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise StoreUnavailable(f"the session file {self.path} failed: {exc}") from exc

        # Lock attempts are a few microseconds of SQLite work, run inline while polling.
        await acquire_polling(try_acquire, session_id, timeout)
        renew = asyncio.ensure_future(self._renew(session_id, owner))
        try:
            yield
        finally:
            renew.cancel()

            def release(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "DELETE FROM locks WHERE session_id=? AND owner=?", (session_id, owner)
                )

            await self._run(release)

    async def _renew(self, session_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)

            def extend(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "UPDATE locks SET expires_at=? WHERE session_id=? AND owner=?",
                    (time.time() + self.lease, session_id, owner),
                )

            try:
                await self._run(extend)
            except StoreUnavailable:
                return


def _use_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Put the file in WAL mode (it stays so), waiting out other openers.

    Switching the journal mode needs an exclusive lock, and SQLite reports
    "database is locked" at once instead of honouring the busy timeout, so
    several kernels opening a new file together would fail without this.
    """
    for attempt in range(attempts):
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)
