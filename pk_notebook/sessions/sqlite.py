"""Sessions in a SQLite file: they survive kernel restarts and are shared by every
process that opens the same file.

The default file is ``$PK_NOTEBOOK_HOME/sessions.sqlite3``, or
``$XDG_DATA_HOME/pk_notebook/sessions.sqlite3`` (``~/.local/share/...``) when
``PK_NOTEBOOK_HOME`` is not set. The session lock is a lease row in the file, so
two kernels taking a turn on one session queue up like two tasks in one kernel;
a lease left behind by a crashed process expires after ``lease`` seconds.

Nothing here runs on the event loop. Any SQLite call can wait for the file's
write lock (another process in a transaction), up to the 30 s busy timeout, and
a wait on the loop froze the whole kernel, Stop button included. So each store
owns one worker thread and one connection that lives and dies in that thread
(sqlite3 connections must stay in the thread that made them); every call is
queued to it. The single thread also orders the calls: a release queued after
a cancelled lease attempt runs after it, so a cancelled wait leaves no lease.

A turn is saved only while this store still holds the session's lease (the
append checks the lease row in the same transaction): a turn whose lease ran out
and was taken by another process is refused, as the Redis store refuses it. A lease
that ran out but that nobody took still holds our token: that turn is saved, since
no other turn can have read the history in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ..runtime.errors import SessionBusy, SessionError, StoreUnavailable
from ..runtime.store import SessionInfo, StateStore, check_session_id
from ..runtime.types import ROLES, Message, parts_from_dict
from .ttl import parse_ttl

T = TypeVar("T")

logger = logging.getLogger("pk_notebook")

#: how long an ordinary statement waits for another process's write lock
_BUSY_TIMEOUT = 30.0
#: how long one lease attempt waits for it: short, so a lock timeout and a
#: cancellation are honoured between attempts instead of after 30 s
_ATTEMPT_BUSY_MS = 50
_POLL_FIRST = 0.005
_POLL_MAX = 0.05

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
    created_at REAL NOT NULL,
    parts TEXT
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


def _add_parts_column(conn: sqlite3.Connection) -> None:
    """Files written before tool calls and reasoning were kept lack the ``parts`` column.

    Adding a nullable column is instant in SQLite and old rows read as "no parts", so
    an old file upgrades in place; older versions of pk_notebook ignore the column.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "parts" not in columns:
        try:
            conn.execute("ALTER TABLE messages ADD COLUMN parts TEXT")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise


class _LeaseLost(Exception):
    """Raised in the worker when the lease row no longer holds our owner token."""


class _Worker:
    """One thread and the connection it owns; ``conn`` is touched only in that thread."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pk_notebook-sqlite")
        self.conn: sqlite3.Connection | None = None


class SQLiteStore(StateStore):
    """A session store in one SQLite file (``path``; see the module doc for the default).

    ``ttl`` forgets sessions unused for that long (sliding: reads count as use).
    ``lease`` is how long a session lock outlives a process that died holding it.
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
        self._worker: _Worker | None = None
        # Held for a few instructions only (never across I/O), so safe on the loop.
        self._worker_guard = threading.Lock()
        #: session id -> owner token of the lease this store holds (checked by append)
        self._held: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # --- the worker thread ----------------------------------------------------------

    def _current_worker(self) -> _Worker:
        with self._worker_guard:
            if self._worker is None:
                self._worker = _Worker()
            return self._worker

    def _connect(self, worker: _Worker) -> sqlite3.Connection:
        """Open the file (in the worker thread: the WAL switch may wait for other openers)."""
        if worker.conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT, isolation_level=None)
                try:
                    _use_wal(conn)
                    conn.execute("PRAGMA foreign_keys=ON")
                    conn.executescript(_SCHEMA)
                    _add_parts_column(conn)
                except BaseException:
                    conn.close()
                    raise
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(
                    f"cannot open the session file {self.path}: {exc}. Check the path "
                    "is writable, or pass SQLiteStore(path=...) / set PK_NOTEBOOK_HOME."
                ) from exc
            worker.conn = conn
        return worker.conn

    def _call(self, worker: _Worker, fn: Callable[[sqlite3.Connection], T], doing: str) -> T:
        """Run ``fn`` in the worker thread; errors name the file and what was being done."""
        conn = self._connect(worker)
        try:
            return fn(conn)
        except BaseException as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the original error is the one worth reporting
                    pass
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreUnavailable(
                    f"the session file {self.path} failed to {doing}: {exc}. If it says "
                    "'locked', another process held the file too long; if it says "
                    "'malformed' or 'not a database', restore it from a backup or delete it."
                ) from exc
            raise

    async def _run(self, fn: Callable[[sqlite3.Connection], T], doing: str) -> T:
        worker = self._current_worker()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(worker.executor, self._call, worker, fn, doing)

    def _submit(self, fn: Callable[[sqlite3.Connection], object], doing: str) -> None:
        """Queue ``fn`` without waiting for it: for clean-ups that must run even when the
        caller is being cancelled. Its failure is logged (a lease expires by itself)."""
        worker = self._current_worker()
        try:
            future = worker.executor.submit(self._call, worker, fn, doing)
        except RuntimeError:  # the store was closed meanwhile
            return

        def report(done: Future[Any]) -> None:
            if not done.cancelled() and done.exception() is not None:
                logger.warning("SQLiteStore: could not %s: %s", doing, done.exception())

        future.add_done_callback(report)

    async def aclose(self) -> None:
        """Close the connection in its own thread and let the thread end.

        The store can be used again afterwards: it opens a new thread and connection.
        """
        with self._worker_guard:
            worker, self._worker = self._worker, None
        if worker is None:
            return

        def close() -> None:
            if worker.conn is not None:
                worker.conn.close()
                worker.conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(worker.executor, close)
        finally:
            worker.executor.shutdown(wait=False)

    # --- reading rows ---------------------------------------------------------------

    def _corrupt(self, session_id: str, what: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"the session file {self.path}: session {session_id!r} holds {what}, which "
            "pk_notebook did not write. Delete that session (store.delete(...) or "
            "%stream delete), or restore the file from a backup."
        )

    def _message(self, session_id: str, row: tuple[Any, ...]) -> Message:
        row_id, role, content, status, meta, created_at, parts = row

        def bad(what: str) -> StoreUnavailable:
            return self._corrupt(session_id, f"a message (row {row_id}) with {what}")

        if role not in ROLES:
            raise bad(f"the role {str(role)[:40]!r}")
        if not isinstance(content, str):
            raise bad(f"content of type {type(content).__name__}")
        if status is not None and not isinstance(status, str):
            raise bad(f"a status of type {type(status).__name__}")
        if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
            raise bad(f"the time {str(created_at)[:40]!r}")
        data: Any = {}
        if meta:
            try:
                data = json.loads(meta)
            except (ValueError, TypeError) as exc:
                raise bad(f"meta that is not JSON ({exc})") from None
            if not isinstance(data, dict):
                raise bad(f"meta that is a JSON {type(data).__name__}, not an object")
        fields: dict[str, Any] = {}
        if parts:
            try:
                fields = parts_from_dict(json.loads(parts))
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                raise bad(f"tool or reasoning parts that are not readable ({exc})") from None
        return Message(role, content, status, float(created_at), data, **fields)

    # --- the interface --------------------------------------------------------------

    def _expired(self, conn: sqlite3.Connection, session_id: str) -> bool:
        if self.ttl is None:
            return False
        row = conn.execute(
            "SELECT updated_at FROM sessions WHERE session_id=?", (session_id,)
        ).fetchone()
        if row and isinstance(row[0], (int, float)) and time.time() - row[0] > self.ttl:
            conn.execute("DELETE FROM sessions WHERE session_id=?", (session_id,))
            return True
        return False

    async def load(self, session_id: str) -> list[Message]:
        def read(conn: sqlite3.Connection) -> list[Message]:
            if self._expired(conn, session_id):
                return []
            rows = conn.execute(
                "SELECT id, role, content, status, meta, created_at, parts FROM messages "
                "WHERE session_id=? ORDER BY id",
                (session_id,),
            ).fetchall()
            messages = [self._message(session_id, row) for row in rows]
            if rows and self.ttl is not None:
                conn.execute(
                    "UPDATE sessions SET updated_at=? WHERE session_id=?", (time.time(), session_id)
                )
            return messages

        return await self._run(read, f"load session {session_id!r}")

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        check_session_id(session_id)
        try:
            rows = [
                (
                    session_id,
                    m.role,
                    m.content,
                    m.status,
                    json.dumps(dict(m.meta), ensure_ascii=False) if m.meta else None,
                    m.created_at,
                    _parts_json(m),
                )
                for m in messages
            ]
        except (TypeError, ValueError) as exc:
            raise SessionError(
                f"a message of session {session_id!r} cannot be stored: its meta is not "
                f"JSON ({exc}); keep meta to str, numbers, lists and dicts"
            ) from exc
        # The lease this store holds now; if another process owns the row by the time
        # the write runs, the turn is refused (it would interleave with theirs).
        owner = self._held.get(session_id)

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            if owner is not None:
                row = conn.execute(
                    "SELECT owner FROM locks WHERE session_id=?", (session_id,)
                ).fetchone()
                if row is None or row[0] != owner:
                    raise _LeaseLost
            self._expired(conn, session_id)
            conn.execute(
                "INSERT INTO sessions(session_id, created_at, updated_at) VALUES (?,?,?) "
                "ON CONFLICT(session_id) DO UPDATE SET updated_at=excluded.updated_at",
                (session_id, now, now),
            )
            conn.executemany(
                "INSERT INTO messages(session_id, role, content, status, meta, created_at, "
                "parts) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
            conn.execute("COMMIT")

        try:
            await self._run(write, f"save to session {session_id!r}")
        except _LeaseLost:
            raise SessionError(
                f"the turn on session {session_id!r} was not saved: its lock in {self.path} "
                "expired and was taken by another process while the turn ran, and saving "
                "without it could interleave with another turn. The process stalled longer "
                f"than lease={self.lease:g} s (raise lease), or the lock row was deleted."
            ) from None

    async def list_sessions(self) -> list[SessionInfo]:
        def read(conn: sqlite3.Connection) -> list[SessionInfo]:
            if self.ttl is not None:
                conn.execute("DELETE FROM sessions WHERE updated_at < ?", (time.time() - self.ttl,))
            rows = conn.execute(
                "SELECT s.session_id, COUNT(m.id), s.created_at, s.updated_at FROM sessions s "
                "LEFT JOIN messages m ON m.session_id = s.session_id "
                "GROUP BY s.session_id ORDER BY s.updated_at DESC"
            ).fetchall()
            out = []
            for session_id, count, created, updated in rows:
                for value in (created, updated):
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise self._corrupt(str(session_id), f"the time {str(value)[:40]!r}")
                out.append(SessionInfo(str(session_id), count, float(created), float(updated)))
            return out

        return await self._run(read, "list the sessions")

    async def delete(self, session_id: str) -> bool:
        def remove(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM sessions WHERE session_id=?", (session_id,))
            return cursor.rowcount > 0

        return await self._run(remove, f"delete session {session_id!r}")

    def lock(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return _SQLiteLease(self, session_id, timeout)


class _SQLiteLease:
    """``async with store.lock(session_id, timeout)``: a lease row, polled for.

    Each attempt is one short transaction in the worker thread that waits at most
    50 ms for the file's write lock, so the timeout and a cancellation are honoured
    while another process holds the file. It may be entered in one task and exited
    in another (the pipeline releases it when the stream ends).
    """

    def __init__(self, store: SQLiteStore, session_id: str, timeout: float | None) -> None:
        self.store = store
        self.session_id = session_id
        self.timeout = timeout
        self.owner = uuid.uuid4().hex
        self._renewer: asyncio.Task[None] | None = None

    def _take(self, conn: sqlite3.Connection) -> bool:
        conn.execute(f"PRAGMA busy_timeout={_ATTEMPT_BUSY_MS}")
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    return False  # another process is writing: try again later
                raise
            now = time.time()
            row = conn.execute(
                "SELECT owner, expires_at FROM locks WHERE session_id=?", (self.session_id,)
            ).fetchone()
            if row is not None and row[1] > now and row[0] != self.owner:
                conn.execute("COMMIT")
                return False
            conn.execute(
                "INSERT OR REPLACE INTO locks(session_id, owner, expires_at) VALUES (?,?,?)",
                (self.session_id, self.owner, now + self.store.lease),
            )
            conn.execute("COMMIT")
            return True
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")

    def _release(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM locks WHERE session_id=? AND owner=?", (self.session_id, self.owner)
        )

    def _extend(self, conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            "UPDATE locks SET expires_at=? WHERE session_id=? AND owner=?",
            (time.time() + self.store.lease, self.session_id, self.owner),
        )
        return cursor.rowcount > 0

    async def __aenter__(self) -> None:
        store = self.store
        doing = f"lock session {self.session_id!r}"
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = _POLL_FIRST
        attempting = False
        try:
            while True:
                attempting = True
                taken = await store._run(self._take, doing)
                attempting = False
                if taken:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise SessionBusy(self.session_id, self.timeout or 0.0)
                pause = delay if deadline is None else min(delay, deadline - time.monotonic())
                await asyncio.sleep(max(0.0, pause))
                delay = min(delay * 1.5, _POLL_MAX)
        except asyncio.CancelledError:
            if attempting:
                # A cancelled await does not stop the attempt running in the worker: it
                # may still take the lease. This release is queued behind it on the same
                # thread, so it undoes that (by owner token; a no-op otherwise).
                store._submit(self._release, f"release session {self.session_id!r}")
            raise
        store._held[self.session_id] = self.owner
        self._renewer = asyncio.ensure_future(self._renew())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.store._held.get(self.session_id) == self.owner:
            del self.store._held[self.session_id]
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.wait([renewer])
        await self.store._run(self._release, f"release session {self.session_id!r}")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.store.lease / 3)
            try:
                kept = await self.store._run(self._extend, f"renew session {self.session_id!r}")
            except StoreUnavailable as exc:
                # Keep trying: the file may be free again before the lease runs out.
                logger.warning("could not renew the lock of session %r: %s", self.session_id, exc)
                continue
            if not kept:
                logger.warning(
                    "the lock of session %r in %s was taken over while held (lease %g s); "
                    "this turn will not be saved",
                    self.session_id,
                    self.store.path,
                    self.store.lease,
                )
                return


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (5, 6) or "locked" in str(exc)  # SQLITE_BUSY, SQLITE_LOCKED


def _use_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Put the file in WAL mode (it stays so), waiting out other openers.

    Switching the journal mode needs an exclusive lock, and SQLite reports
    "database is locked" at once instead of honouring the busy timeout, so
    several kernels opening a new file together would fail without this. It runs
    in the store's worker thread, so the waiting never touches the event loop.
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


def _parts_json(message: Message) -> str | None:
    parts = message.parts_dict()
    return json.dumps(parts, ensure_ascii=False) if parts else None
