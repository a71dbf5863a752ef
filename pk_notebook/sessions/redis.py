"""Sessions in Redis: shared by every kernel, server and machine that reaches it.

::

    store = RedisStore.from_url("redis://localhost:6379/0", ttl="24h")
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store)

Keys (``prefix`` defaults to ``"pk_notebook:"``)::

    {prefix}msgs:{session_id}   list of JSON messages, oldest first
    {prefix}meta:{session_id}   hash: created_at, updated_at, last_op
    {prefix}lock:{session_id}   string: the token of the turn holding the session
    {prefix}sessions            sorted set: session ids by last use (for list_sessions)

Every write is one Lua script, so it is atomic: a turn's question and answer
land together or not at all, and a retried append (the reply was lost with the
connection) is recognised by its operation id and not applied twice.

The session lock is ``SET lock token NX PX lease``: it works across processes
and machines, it is renewed every ``lease / 3`` seconds while held, and only its
owner deletes it (a compare-and-delete script). A process that dies holding it
blocks the session for at most ``lease`` seconds. The append of a turn checks
that the lock still holds its token, so a turn whose lease ran out (the process
stalled longer than ``lease``) cannot interleave with the turn that took over.

A ``redis.asyncio`` client belongs to the event loop it was created on, and
pk_notebook runs on two (the kernel's, and the sync facade's background loop),
so the store keeps one client (with its connection pool) per loop. ``aclose()``
closes all of them; call it before closing a loop you used the store on, or the
connections of that loop are left to the garbage collector.

Redis Cluster is not supported: ``list_sessions`` reads one index key for all
sessions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from ..runtime.errors import (
    ConfigurationError,
    SessionBusy,
    SessionError,
    StoreUnavailable,
    redact,
)
from ..runtime.store import SessionInfo, StateStore, check_session_id
from ..runtime.types import Message
from .spec import safe_url
from .ttl import parse_ttl

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import parse_url
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "RedisStore needs the 'redis' package: pip install 'pk-notebook[redis]'"
    ) from exc

logger = logging.getLogger("pk_notebook")

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "pk_notebook:"

_POLL_FIRST = 0.002
_POLL_MAX = 0.05
#: appends are pushed in slices so a huge import stays under Lua's argument limit
_LUA_SLICE = 1000

# --- the scripts ------------------------------------------------------------------------
# Errors the scripts raise start with "PKNB_" so they can be told apart from Redis's own.

_WANT = """
local function want(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    return redis.error_reply('PKNB_BADTYPE ' .. key .. ' holds a ' .. t .. ', expected a ' .. kind)
  end
  return nil
end
-- The recency index is a logical clock: never lower than the wall clock, always
-- above the newest entry, so "most recently used" holds even when clocks disagree.
local function touch(index, sid, now)
  local score = tonumber(now)
  local top = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')
  if top[2] and tonumber(top[2]) >= score then
    score = tonumber(top[2]) + 0.00001
  end
  redis.call('ZADD', index, string.format('%.6f', score), sid)
end
"""

# KEYS: meta, msgs, index   ARGV: session_id, now, ttl_ms (0: none)
_LOAD = (
    _WANT
    + """
local e = want(KEYS[1], 'hash') or want(KEYS[2], 'list') or want(KEYS[3], 'zset')
if e then return e end
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then return {} end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
touch(KEYS[3], ARGV[1], ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""
)

# KEYS: meta, msgs, index, lock
# ARGV: session_id, now, ttl_ms, lock token ('' : not under a lock), op id, messages...
_APPEND = (
    _WANT
    + """
local e = want(KEYS[1], 'hash') or want(KEYS[2], 'list') or want(KEYS[3], 'zset')
  or want(KEYS[4], 'string')
if e then return e end
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then
  return redis.error_reply('PKNB_LOCKLOST ' .. KEYS[4])
end
if redis.call('HGET', KEYS[1], 'last_op') == ARGV[5] then
  return 0
end
local n = #ARGV - 5
local i = 6
while i <= #ARGV do
  local j = math.min(i + __SLICE__ - 1, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[2])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'last_op', ARGV[5])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  if n > 0 or redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
touch(KEYS[3], ARGV[1], ARGV[2])
return n
"""
).replace("__SLICE__", str(_LUA_SLICE))

# KEYS: meta, msgs, index   ARGV: session_id
_DELETE = """
local n = redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"""

# KEYS: meta, msgs, index   ARGV: session_id   (drop an index entry whose session expired)
_PRUNE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  return redis.call('ZREM', KEYS[3], ARGV[1])
end
return 0
"""

# KEYS: lock   ARGV: token, lease_ms   -> 1 taken (or already ours), 0 busy
_ACQUIRE = (
    _WANT
    + """
local e = want(KEYS[1], 'string')
if e then return e end
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if owner then
  if redis.call('PTTL', KEYS[1]) == -1 then
    return redis.error_reply('PKNB_FOREIGNLOCK ' .. KEYS[1])
  end
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
)

# KEYS: lock   ARGV: token, lease_ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock   ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass
class _LoopClient:
    """One event loop's client, connection pool and registered scripts."""

    loop: asyncio.AbstractEventLoop
    client: Any
    load: Any
    append: Any
    delete: Any
    prune: Any
    acquire: Any
    renew: Any
    release: Any


class RedisStore(StateStore):
    """A session store in Redis. Build it with :meth:`from_url`.

    Parameters:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS,
            ``unix:///path.sock``).
        ttl: forget a session unused for this long (seconds or ``"24h"``); reads
            and writes both restart the clock. ``None`` keeps sessions forever.
        prefix: the start of every key, so several apps can share one database.
        lease: seconds a session lock survives a process that died holding it;
            it is renewed every ``lease / 3`` seconds while held.
        redis_options: passed to ``redis.asyncio.Redis.from_url`` (e.g.
            ``max_connections``, ``socket_timeout``).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        ttl: float | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 30.0,
        **redis_options: Any,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigurationError("RedisStore needs a URL such as 'redis://localhost:6379/0'")
        self.display_url = safe_url(url)
        try:
            parsed = parse_url(url)
        except ValueError as exc:
            raise ConfigurationError(
                f"cannot read the Redis URL {self.display_url}: {redact(str(exc))}. "
                "Write redis://[user:password@]host:port/db, rediss://... or unix:///path"
            ) from exc
        if not isinstance(prefix, str):
            raise ConfigurationError("prefix must be a string, e.g. 'pk_notebook:'")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease <= 0:
            raise ConfigurationError("lease must be a positive number of seconds")
        self.url = url
        self.ttl = parse_ttl(ttl)
        self.prefix = prefix
        self.lease = float(lease)
        self._password = parsed.get("password") or redis_options.get("password")
        self._options: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "socket_timeout": 10.0,
            "health_check_interval": 30,
            # A few quick retries ride out a reconnect; a dead server fails fast.
            "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
            **redis_options,
        }
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._guard = threading.Lock()
        #: session id -> token of the lock this store holds on it (checked by append)
        self._held: dict[str, str] = {}

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_URL,
        *,
        ttl: float | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 30.0,
        **redis_options: Any,
    ) -> RedisStore:
        """The usual constructor; nothing connects until the store is first used."""
        return cls(url, ttl=ttl, prefix=prefix, lease=lease, **redis_options)

    def __repr__(self) -> str:
        return f"RedisStore({self.display_url!r}, prefix={self.prefix!r})"

    # --- keys -----------------------------------------------------------------------

    def _meta(self, session_id: str) -> str:
        return f"{self.prefix}meta:{session_id}"

    def _msgs(self, session_id: str) -> str:
        return f"{self.prefix}msgs:{session_id}"

    def _lock_key(self, session_id: str) -> str:
        return f"{self.prefix}lock:{session_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}sessions"

    @property
    def _ttl_ms(self) -> int:
        return 0 if self.ttl is None else max(1, int(self.ttl * 1000))

    # --- clients, one per event loop ------------------------------------------------

    def _conn(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        with self._guard:
            entry = self._clients.get(loop)
            if entry is not None:
                return entry
            for other in [lp for lp in self._clients if lp.is_closed()]:
                # Its sockets died with it; nothing can be awaited on a closed loop.
                logger.debug("RedisStore: dropping the client of a closed event loop")
                del self._clients[other]
            client = aioredis.Redis.from_url(self.url, **self._options)
            entry = _LoopClient(
                loop,
                client,
                client.register_script(_LOAD),
                client.register_script(_APPEND),
                client.register_script(_DELETE),
                client.register_script(_PRUNE),
                client.register_script(_ACQUIRE),
                client.register_script(_RENEW),
                client.register_script(_RELEASE),
            )
            self._clients[loop] = entry
            return entry

    async def aclose(self) -> None:
        """Close every client (each on its own loop). The store can still be used after."""
        with self._guard:
            entries = list(self._clients.values())
            self._clients.clear()
        current = asyncio.get_running_loop()
        for entry in entries:
            try:
                if entry.loop is current:
                    await entry.client.aclose()
                elif entry.loop.is_running():
                    future = asyncio.run_coroutine_threadsafe(entry.client.aclose(), entry.loop)
                    await asyncio.wait_for(asyncio.wrap_future(future), timeout=10)
                else:
                    logger.debug("RedisStore: the loop of a client is not running; not closing it")
            except Exception as exc:  # closing must not fail a shutdown
                logger.debug("RedisStore: closing a client failed: %s", exc)

    async def ping(self) -> None:
        """Check that Redis answers; raises :class:`StoreUnavailable` naming the URL if not."""
        try:
            await self._conn().client.ping()
        except RedisError as exc:
            self._fail(exc, "ping")

    # --- errors ---------------------------------------------------------------------

    def _fail(
        self,
        exc: BaseException,
        doing: str,
        session_id: str | None = None,
        key: str | None = None,
    ) -> NoReturn:
        detail = redact(str(exc), self._password)
        if isinstance(exc, ResponseError):
            if detail.startswith("PKNB_BADTYPE "):
                raise StoreUnavailable(
                    f"Redis at {self.display_url}: cannot {doing}: the key "
                    f"{detail[len('PKNB_BADTYPE ') :]}. Something else writes under the "
                    f"prefix {self.prefix!r}: delete that key or give RedisStore another prefix."
                ) from None
            if detail.startswith("PKNB_LOCKLOST "):
                raise SessionError(
                    f"the turn on session {session_id!r} was not saved: its lock "
                    f"({detail[len('PKNB_LOCKLOST ') :]}) expired or was lost while the turn "
                    "ran, and saving without it could interleave with another turn. Either "
                    f"the process stalled longer than lease={self.lease:g} s (raise lease), "
                    "or Redis lost its data (a restart without persistence)."
                ) from None
            if detail.startswith("PKNB_FOREIGNLOCK "):
                raise StoreUnavailable(
                    f"Redis at {self.display_url}: the key {detail[len('PKNB_FOREIGNLOCK ') :]} "
                    "holds a value without expiry that pk_notebook did not write; delete it "
                    "or give RedisStore another prefix."
                ) from None
            if "WRONGTYPE" in detail:
                where = f"the key {key!r}" if key else f"a key under the prefix {self.prefix!r}"
                raise StoreUnavailable(
                    f"Redis at {self.display_url}: cannot {doing}: {where} holds another "
                    f"type of data ({detail}). Something else writes there: delete it or "
                    "give RedisStore another prefix."
                ) from None
        if isinstance(exc, (RedisError, OSError)):
            raise StoreUnavailable(
                f"the session store Redis at {self.display_url} failed to {doing}: {detail}. "
                "Check that the server is running and reachable, and that the URL is right."
            ) from None
        raise exc

    def _decode(self, key: str, raw: list[bytes]) -> list[Message]:
        messages = []
        for position, item in enumerate(raw):
            try:
                data = json.loads(item)
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
                messages.append(Message.from_dict(data))
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreUnavailable(
                    f"Redis at {self.display_url}: item {position} of the key {key!r} is not "
                    f"a pk_notebook message ({redact(str(exc))[:200]}). Delete the key, or "
                    "give RedisStore another prefix if something else writes there."
                ) from None
        return messages

    # --- the interface --------------------------------------------------------------

    async def load(self, session_id: str) -> list[Message]:
        msgs = self._msgs(session_id)
        try:
            conn = self._conn()
            raw = await conn.load(
                keys=[self._meta(session_id), msgs, self._index],
                args=[session_id, repr(time.time()), self._ttl_ms],
            )
        except RedisError as exc:
            self._fail(exc, f"load session {session_id!r}", session_id)
        return self._decode(msgs, raw or [])

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        check_session_id(session_id)
        try:
            encoded = [json.dumps(m.to_dict(), ensure_ascii=False) for m in messages]
        except (TypeError, ValueError) as exc:
            raise SessionError(
                f"a message of session {session_id!r} cannot be stored: its meta is not "
                f"JSON ({exc}); keep meta to str, numbers, lists and dicts"
            ) from exc
        token = self._held.get(session_id, "")
        op = uuid.uuid4().hex
        try:
            conn = self._conn()
            await conn.append(
                keys=[
                    self._meta(session_id),
                    self._msgs(session_id),
                    self._index,
                    self._lock_key(session_id),
                ],
                args=[session_id, repr(time.time()), self._ttl_ms, token, op, *encoded],
            )
        except RedisError as exc:
            self._fail(exc, f"save to session {session_id!r}", session_id)

    async def list_sessions(self) -> list[SessionInfo]:
        index = self._index
        try:
            conn = self._conn()
            client = conn.client
            ids = [sid.decode() for sid in await client.zrevrange(index, 0, -1)]
        except RedisError as exc:
            self._fail(exc, "list the sessions", key=index)
        if not ids:
            return []
        try:
            pipe = client.pipeline(transaction=False)
            for sid in ids:
                pipe.hmget(self._meta(sid), ["created_at", "updated_at"])
                pipe.llen(self._msgs(sid))
            replies = await pipe.execute(raise_on_error=False)
        except RedisError as exc:
            self._fail(exc, "list the sessions")
        out: list[SessionInfo] = []
        stale: list[str] = []
        for number, sid in enumerate(ids):
            meta, count = replies[2 * number], replies[2 * number + 1]
            for key, reply in ((self._meta(sid), meta), (self._msgs(sid), count)):
                if isinstance(reply, Exception):
                    raise StoreUnavailable(
                        f"Redis at {self.display_url}: cannot read the key {key!r}: "
                        f"{redact(str(reply))}. Something else writes under the prefix "
                        f"{self.prefix!r}: delete that key or give RedisStore another prefix."
                    )
            created, updated = meta
            if created is None and updated is None and count == 0:
                stale.append(sid)
                continue
            try:
                info = SessionInfo(sid, int(count), float(created or 0), float(updated or 0))
            except ValueError:
                raise StoreUnavailable(
                    f"Redis at {self.display_url}: the key {self._meta(sid)!r} holds times "
                    "that are not numbers; delete it or give RedisStore another prefix."
                ) from None
            out.append(info)
        if stale:
            try:
                for sid in stale:
                    await conn.prune(keys=[self._meta(sid), self._msgs(sid), index], args=[sid])
            except RedisError as exc:
                logger.debug("RedisStore: pruning expired sessions failed: %s", exc)
        return out

    async def delete(self, session_id: str) -> bool:
        try:
            conn = self._conn()
            removed = await conn.delete(
                keys=[self._meta(session_id), self._msgs(session_id), self._index],
                args=[session_id],
            )
        except RedisError as exc:
            self._fail(exc, f"delete session {session_id!r}", session_id)
        return int(removed) > 0

    def lock(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return _RedisLock(self, session_id, timeout)


class _RedisLock:
    """``async with store.lock(session_id, timeout)``; see the module doc for the design.

    It may be entered in one task and exited in another (the pipeline releases it
    when the stream ends), as long as both run on the same event loop. Releasing
    never raises: when Redis is gone the lock expires by itself after ``lease``.
    """

    def __init__(self, store: RedisStore, session_id: str, timeout: float | None) -> None:
        self.store = store
        self.session_id = session_id
        self.timeout = timeout
        self.key = store._lock_key(session_id)
        self.token = uuid.uuid4().hex
        self._renewer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        store = self.store
        lease_ms = max(1, int(store.lease * 1000))
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = _POLL_FIRST
        try:
            while True:
                try:
                    got = await store._conn().acquire(keys=[self.key], args=[self.token, lease_ms])
                except RedisError as exc:
                    store._fail(exc, f"lock session {self.session_id!r}", self.session_id)
                if got:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise SessionBusy(self.session_id, self.timeout or 0.0)
                pause = (
                    delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
                )
                await asyncio.sleep(pause)
                delay = min(delay * 1.5, _POLL_MAX)
        except asyncio.CancelledError:
            # The SET may have reached Redis before the cancellation: undo it, by token.
            _background(self._release())
            raise
        store._held[self.session_id] = self.token
        self._renewer = asyncio.ensure_future(self._renew(lease_ms))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.store._held.get(self.session_id) == self.token:
            del self.store._held[self.session_id]
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.wait([renewer])
        await self._release()

    async def _release(self) -> None:
        try:
            conn = self.store._conn()
            await asyncio.wait_for(conn.release(keys=[self.key], args=[self.token]), timeout=10)
        except Exception as exc:  # releasing must never hide the turn's outcome
            logger.warning(
                "could not release the lock of session %r at %s (%s); it expires by "
                "itself within %g s",
                self.session_id,
                self.store.display_url,
                redact(str(exc), self.store._password) or type(exc).__name__,
                self.store.lease,
            )

    async def _renew(self, lease_ms: int) -> None:
        while True:
            await asyncio.sleep(self.store.lease / 3)
            try:
                kept = await self.store._conn().renew(keys=[self.key], args=[self.token, lease_ms])
            except Exception as exc:
                # Keep trying: Redis may come back before the lease runs out.
                logger.warning(
                    "could not renew the lock of session %r: %s",
                    self.session_id,
                    redact(str(exc), self.store._password),
                )
                continue
            if not kept:
                logger.warning(
                    "the lock of session %r expired while held (lease %g s); another turn "
                    "may have taken it, and this turn will not be saved",
                    self.session_id,
                    self.store.lease,
                )
                return


_background_tasks: set[asyncio.Task[None]] = set()


def _background(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    _background_tasks.add(task)
    task.add_done_callback(_background_tasks.discard)
