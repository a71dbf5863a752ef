"""Replay buffers: the events of a running answer, kept so a client can come back.

An answer on ``/stream`` runs in its own task, detached from the connection that
asked for it, and writes its SSE frames (each with an ``id``) into a buffer; a
client connection only reads from the buffer. A client that reconnects gives the
last id it saw and reads the rest. Two kinds:

:class:`MemoryReplay`
    one process: a list per answer, bounded to ``max_events`` frames, dropped
    ``ttl`` seconds after the answer ended (and at most ``max_ended`` ended answers
    kept, the oldest dropped first). Always used for the answers a process runs
    itself, so its own clients never wait on a network round trip; with Redis, an
    ended answer stays here only a few seconds (Redis keeps it for the TTL).
:class:`RedisReplay`
    many processes (``pk-notebook serve --workers N --store redis://...``): the
    same frames in one Redis Stream per answer (an entry per batch, trimmed with
    ``XADD ... MINID ~`` to the last ``max_events`` events, ``PEXPIRE ttl``), written
    by one batcher per process (every ``flush_interval`` seconds, one Lua call for
    all the answers with new frames, never a round trip per chunk); a client on
    another process follows with ``XREAD BLOCK``. The same
    object carries what else the processes share: the stop signal (a key plus a
    pub/sub message the owning process listens for), presence (a follower's
    key, so the owner knows a client is attached elsewhere), each process's
    liveness key (one per process, renewed once a tick), and the global cap on
    running streams (:class:`RedisCap`).

Keys (``prefix`` is the session store's, ``pk_notebook:`` by default)::

    {prefix}answer:{id}:events   stream: entry 0-N holds frames f..N ("f", "d"; "e" on the last)
    {prefix}answer:{id}:meta     hash: state (running / done), owner (a process id),
                                 token (a /ws answer's resume token, hashed)
    {prefix}process:{owner}      string with a short expiry, renewed by that process
    {prefix}answer:{id}:seen     string with a short expiry, renewed by remote followers
    {prefix}answer:{id}:stop     string: a stop was asked for
    {prefix}answer-stop          pub/sub channel: answer ids to stop
    {prefix}chat:{chat_id}       string: the latest answer of an /api/chat chat
    {prefix}streams              sorted set: the running streams of every process

A follower never skips silently: an id it asks for that was trimmed (the buffer
is bounded) gives an ``error`` event with ``code: "resume_gap"`` (then the rest,
whose ``result`` holds the whole text); an answer whose buffer expired or never
existed gives ``code: "resume_expired"``; an answer whose process died gives
``code: "answer_lost"``. An answer started with a resume token (``/ws``) is read only
with that token (its SHA-256 is what is kept, here and in Redis); any other reader,
``/stream`` included, gets ``code: "resume_forbidden"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from .streaming import DONE, dumps, sse_event

logger = logging.getLogger("pk_notebook")

#: how long a remote follower's presence, and the owner's liveness, last unrenewed
PRESENCE_SECONDS = 2.0


_last_warning: dict[str, float] = {}


def warn_often_at_most(every: float, message: str, *args: Any) -> None:
    """``logger.warning``, at most once per ``every`` seconds per message: with Redis
    down, the batcher (every flush) and the ticker (every tick) would flood the log."""
    now = time.monotonic()
    if now - _last_warning.get(message, -every) >= every:
        _last_warning[message] = now
        logger.warning(message, *args)
    else:
        logger.debug(message, *args)


def _no_client_info() -> dict[str, Any]:
    """The connection options that turn ``CLIENT SETINFO`` off: ``driver_info=None`` since
    redis-py 7 (which deprecates ``lib_name``/``lib_version``), those two before."""
    try:
        import redis.driver_info  # noqa: F401
    except ImportError:
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": None}


_NO_CLIENT_INFO = _no_client_info()


def resume_error(code: str, message: str, **extra: Any) -> bytes:
    """An ``error`` event (no id: it is not part of the answer) for a failed resume."""
    error = {"type": "ResumeError", "code": code, "message": message, **extra}
    return sse_event(dumps({"error": error}), "error")


def expired_frames(answer_id: str) -> bytes:
    return (
        resume_error(
            "resume_expired",
            "this answer cannot be resumed: it is unknown, or it ended and its replay "
            "buffer expired",
            answer_id=answer_id,
        )
        + DONE
    )


def token_hash(token: str | None) -> str | None:
    """What is kept of a resume token: its SHA-256, in hex (None: no token)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest() if token is not None else None


def same_token(kept: str | None, given: str | None) -> bool:
    """Whether a reader's token hash matches the answer's (both None: an answer without one)."""
    if kept is None or given is None:
        return kept is given
    return hmac.compare_digest(kept, given)


def forbidden_frames(answer_id: str) -> bytes:
    return (
        resume_error(
            "resume_forbidden",
            "this answer cannot be resumed without its resume token (a /ws answer: send "
            'the "resume_token" of its start message)',
            answer_id=answer_id,
        )
        + DONE
    )


def gap_frame(after: int, first: int) -> bytes:
    return resume_error(
        "resume_gap",
        f"events {after + 1} to {first - 1} of this answer are no longer kept (the replay "
        "buffer is bounded); the rest follows, and its result holds the whole text",
        missing=[after + 1, first - 1],
    )


def skip_frames(frames: bytes, count: int) -> bytes:
    """``frames`` without its first ``count`` SSE frames (each ends with a blank line;
    their JSON payloads hold none)."""
    at = 0
    for _ in range(count):
        at = frames.find(b"\n\n", at)
        if at < 0:
            return b""
        at += 2
    return frames[at:]


class _Buffer:
    """One answer's frames in this process: ``frames[i]`` is frame ``base + i``."""

    __slots__ = ("base", "ended", "frames", "limit", "token", "waiters")

    def __init__(self, limit: int) -> None:
        self.frames: list[bytes] = []
        #: the hash of the answer's resume token (None: the answer id is enough)
        self.token: str | None = None
        self.base = 1
        self.limit = limit
        self.ended = False
        self.waiters: list[asyncio.Future[None]] = []

    @property
    def last(self) -> int:
        return self.base + len(self.frames) - 1

    def add(self, frame: bytes) -> None:
        frames = self.frames
        frames.append(frame)
        if len(frames) > self.limit + (self.limit >> 2) + 1:
            cut = len(frames) - self.limit
            del frames[:cut]  # trimmed in batches: amortised O(1) per frame
            self.base += cut
        if self.waiters:
            self.wake()

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def end(self) -> None:
        self.ended = True
        self.wake()

    async def follow(self, after: int) -> AsyncGenerator[bytes, None]:
        """Every frame after ``after``, as they come, in batches; ends after the last."""
        cursor = after
        loop = asyncio.get_running_loop()
        while True:
            if cursor + 1 < self.base:
                yield gap_frame(cursor, self.base)
                cursor = self.base - 1
            if cursor < self.last:
                start = cursor + 1 - self.base
                batch = self.frames[start:]
                cursor = self.last
                yield batch[0] if len(batch) == 1 else b"".join(batch)
                continue
            if self.ended:
                return
            waiter = loop.create_future()
            self.waiters.append(waiter)
            await waiter


class MemoryReplay:
    """Replay buffers of the answers this process runs (see the module docstring)."""

    def __init__(self, max_events: int = 10_000, ttl: float = 120.0, max_ended: int = 1024) -> None:
        self.max_events = max_events
        self.ttl = ttl
        #: ended answers kept at most (the oldest go first), whatever their TTL
        self.max_ended = max_ended
        self._buffers: dict[str, _Buffer] = {}
        self._ended: dict[str, None] = {}  # insertion-ordered: oldest first

    def __contains__(self, answer_id: str) -> bool:
        return answer_id in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def create(self, answer_id: str) -> _Buffer:
        buffer = self._buffers[answer_id] = _Buffer(self.max_events)
        return buffer

    def end(self, answer_id: str) -> None:
        buffer = self._buffers.get(answer_id)
        if buffer is None:
            return
        buffer.end()
        self._ended[answer_id] = None
        while len(self._ended) > self.max_ended:
            oldest = next(iter(self._ended))
            self._drop(oldest, self._buffers.get(oldest))
        asyncio.get_running_loop().call_later(self.ttl, self._drop, answer_id, buffer)

    def token_of(self, answer_id: str) -> str | None:
        """The token hash of a buffer this process holds (None: none, or no such buffer)."""
        buffer = self._buffers.get(answer_id)
        return buffer.token if buffer is not None else None

    def _drop(self, answer_id: str, buffer: _Buffer | None) -> None:
        if self._buffers.get(answer_id) is buffer:
            self._buffers.pop(answer_id, None)
            self._ended.pop(answer_id, None)

    async def follow(self, answer_id: str, after: int) -> AsyncGenerator[bytes, None]:
        buffer = self._buffers.get(answer_id)
        if buffer is None:
            yield expired_frames(answer_id)
            return
        async for frames in buffer.follow(after):
            yield frames


# --- Redis ---------------------------------------------------------------------------

# KEYS: the zset   ARGV: lease_ms, limit, holder  -> 1 taken, 0 full.
# Scores are Redis's own clock (TIME), so the processes' clocks need not agree.
_CAP_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  return 1
end
return 0
"""

# KEYS: the zset   ARGV: lease ms   (the leases still alive; read-only: a crashed
# process's expired members are dropped by the next acquire, not by a health check)
_CAP_COUNT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. (now - tonumber(ARGV[1])), '+inf')
"""

# KEYS: the zset   ARGV: holders...   (renew the leases still held)
_CAP_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now, ARGV[i])
end
return n
"""


class RedisReplay:
    """Replay buffers, stop signals, presence and the stream cap in Redis.

    ``url`` and ``prefix`` are normally the session store's
    (:meth:`from_store`); nothing connects until first used. One client per
    process: a web server runs one event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "pk_notebook:",
        max_events: int = 10_000,
        ttl: float = 120.0,
        flush_interval: float = 0.05,
        flush_events: int = 256,
        lease: float = 15.0,
        max_connections: int = 2048,
        **redis_options: Any,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_events = max_events
        self.ttl_ms = max(1, int(ttl * 1000))
        self.batcher = RedisBatcher(self, flush_interval, flush_events)
        self.lease = lease
        # A follower holds a connection during each XREAD BLOCK: a blocking pool waits
        # for a free one (redis-py's default pool fails at 100).
        self._options: dict[str, Any] = {
            "socket_connect_timeout": 5.0,
            "health_check_interval": 30,
            "max_connections": max_connections,
            "timeout": 10.0,
            # No CLIENT SETINFO per connection (redis-py otherwise sends it, and looks
            # its own version up each time, about 1 ms of CPU per new connection).
            **_NO_CLIENT_INFO,
            **redis_options,
        }
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self.channel = f"{prefix}answer-stop"
        #: this process's id: its answers' "owner", and its liveness key
        self.process_id = uuid.uuid4().hex
        self.cap = RedisCap(self, f"{prefix}streams", lease)

    @classmethod
    def from_store(cls, store: Any, **options: Any) -> RedisReplay:
        """The replay of a :class:`~pk_notebook.sessions.RedisStore`: same server, same prefix."""
        return cls(store.url, prefix=store.prefix, **options)

    def __repr__(self) -> str:
        from ..sessions.spec import safe_url

        return f"RedisReplay({safe_url(self.url)!r}, prefix={self.prefix!r})"

    def key(self, answer_id: str, part: str) -> str:
        return f"{self.prefix}answer:{answer_id}:{part}"

    @property
    def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import redis.asyncio as aioredis

            pool = aioredis.BlockingConnectionPool.from_url(self.url, **self._options)
            self._client = aioredis.Redis(connection_pool=pool)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        try:
            await self.batcher.aclose()
        except Exception:
            logger.debug("the last replay flush failed", exc_info=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        await self.cap.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.aclose(close_connection_pool=True)
            except Exception:  # a closed loop, a dead server: nothing left to release
                logger.debug("closing the replay's Redis client failed", exc_info=True)

    # --- the owner's side ----------------------------------------------------------

    async def register(
        self, answer_id: str, chat_id: str | None = None, token: str | None = None
    ) -> None:
        """Mark an answer running (one round trip, at its start); ``token``: the hash of
        its resume token, which a follower must then give."""
        pipe = self.client.pipeline(transaction=False)
        if chat_id is not None:
            pipe.set(f"{self.prefix}chat:{chat_id}", answer_id, px=self.ttl_ms)
        # HSETNX: if the answer already ended (and its last flush said "done"), it stays so.
        meta = self.key(answer_id, "meta")
        pipe.hsetnx(meta, "state", "running")
        pipe.hset(meta, "owner", self.process_id)
        if token is not None:
            pipe.hset(meta, "token", token)
        pipe.pexpire(meta, self.ttl_ms)
        pipe.set(self.process_key(self.process_id), b"1", px=int(PRESENCE_SECONDS * 1000))
        await pipe.execute()

    def writer(self, answer_id: str) -> RedisWriter:
        return RedisWriter(self.batcher, self.key(answer_id, "events"), self.key(answer_id, "meta"))

    def process_key(self, process_id: str) -> str:
        return f"{self.prefix}process:{process_id}"

    async def heartbeat(self, detached: list[str]) -> set[str]:
        """One round trip per tick, whatever the number of answers: renew this process's
        liveness key (its answers' followers check it); return the detached answers a
        client follows from another process."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.process_key(self.process_id), b"1", px=int(PRESENCE_SECONDS * 1000))
        for answer_id in detached:
            pipe.exists(self.key(answer_id, "seen"))
        replies = await pipe.execute()
        return {answer_id for answer_id, seen in zip(detached, replies[1:], strict=True) if seen}

    async def stops_asked(self, running: list[str]) -> list[str]:
        """The answers among ``running`` a stop was asked for (after the listener
        (re)subscribed: a message sent while it was not listening is not lost)."""
        if not running:
            return []
        pipe = self.client.pipeline(transaction=False)
        for answer_id in running:
            pipe.exists(self.key(answer_id, "stop"))
        replies = await pipe.execute()
        return [answer_id for answer_id, asked in zip(running, replies, strict=True) if asked]

    async def listen(
        self, on_stop: Callable[[str], object], running: Callable[[], list[str]]
    ) -> None:
        """Start (once) the task that calls ``on_stop(answer_id)`` for each stop message;
        each time it (re)subscribes, the stop keys of the ``running()`` answers are read,
        so a stop asked for while it was not listening still arrives."""
        if self._listener is not None and not self._listener.done():
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.ensure_future(self._listen(on_stop, running, ready))
        await asyncio.wait({ready, self._listener}, return_when=asyncio.FIRST_COMPLETED)

    async def _listen(
        self,
        on_stop: Callable[[str], object],
        running: Callable[[], list[str]],
        ready: asyncio.Future[None],
    ) -> None:
        while True:
            try:
                async with self.client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    if not ready.done():
                        ready.set_result(None)
                    for answer_id in await self.stops_asked(running()):
                        on_stop(answer_id)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            on_stop(message["data"].decode("ascii", "replace"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not ready.done():
                    ready.set_result(None)  # the stop keys are read when it is back
                logger.warning("listening for stop messages in Redis failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    # --- anyone's side ---------------------------------------------------------------

    async def state(self, answer_id: str) -> str | None:
        """``"running"``, ``"done"``, or None (unknown, or expired)."""
        value = await self.client.hget(self.key(answer_id, "meta"), "state")
        return value.decode() if value is not None else None

    async def chat_answer(self, chat_id: str) -> str | None:
        """The latest answer of a chat (``/api/chat``), while its buffer is kept."""
        value = await self.client.get(f"{self.prefix}chat:{chat_id}")
        return value.decode() if value is not None else None

    async def request_stop(self, answer_id: str) -> str | None:
        """Ask the answer's process to stop it; returns its state before the request."""
        state = await self.state(answer_id)
        if state == "running":
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key(answer_id, "stop"), b"1", px=self.ttl_ms)
            pipe.publish(self.channel, answer_id)
            await pipe.execute()
        return state

    async def follow(
        self, answer_id: str, after: int, *, block: float = 1.0, token: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The frames after ``after``, read from Redis with ``XREAD BLOCK`` (``token``:
        the hash of the reader's resume token, checked against the answer's)."""
        client = self.client
        events = self.key(answer_id, "events")
        cursor = after
        touched = 0.0
        checked = False
        while True:
            now = time.monotonic()
            if now - touched > PRESENCE_SECONDS / 4:
                touched = now
                pipe = client.pipeline(transaction=False)
                pipe.set(self.key(answer_id, "seen"), b"1", px=int(PRESENCE_SECONDS * 1000))
                pipe.hmget(self.key(answer_id, "meta"), "state", "owner", "token")
                pipe.exists(events)
                _, (state, owner, kept), exists = await pipe.execute()
                if not exists and state is None:
                    yield expired_frames(answer_id)
                    return
                if not checked:
                    checked = True
                    if not same_token(kept.decode() if kept is not None else None, token):
                        yield forbidden_frames(answer_id)
                        return
                # (Running but nothing flushed yet: its first batch is on its way.)
                alive = state != b"running" or (
                    owner is not None and await client.exists(self.process_key(owner.decode()))
                )
                if not alive and not await client.xrange(events, f"0-{cursor + 1}", "+", count=1):
                    yield (
                        resume_error(
                            "answer_lost",
                            "the server process running this answer went away before it ended",
                        )
                        + DONE
                    )
                    return
            reply = await client.xread({events: f"0-{cursor}"}, count=1000, block=int(block * 1000))
            if not reply:
                continue
            entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
            parts: list[bytes] = []
            end = False
            for entry_id, fields in entries:
                last = int(entry_id.split(b"-", 1)[1])
                first = int(fields.get(b"f", last))
                frames = fields.get(b"d", b"")
                if first > cursor + 1:
                    parts.append(gap_frame(cursor, first))
                elif first <= cursor:
                    frames = skip_frames(frames, cursor + 1 - first)
                cursor = last
                parts.append(frames)
                end = end or b"e" in fields
            yield b"".join(parts)
            if end:
                return


class RedisWriter:
    """One answer's frames on their way to Redis (see :class:`RedisBatcher`).

    :meth:`add` is synchronous and cheap: a list append, and a note to the
    process's batcher the first time since its last flush.
    """

    __slots__ = (
        "batcher",
        "closed",
        "dirty",
        "done",
        "end",
        "events",
        "first",
        "frames",
        "last",
        "meta",
    )

    def __init__(self, batcher: RedisBatcher, events: str, meta: str) -> None:
        self.batcher = batcher
        self.events = events
        self.meta = meta
        self.frames: list[bytes] = []
        self.first = 1  # the seq of frames[0]
        self.last = 0  # the last seq written or pending
        self.dirty = False
        self.end = False
        self.closed = False
        self.done: asyncio.Future[None] | None = None

    def add(self, seq: int, frame: bytes) -> None:
        if not self.frames:
            self.first = seq
        self.frames.append(frame)
        self.last = seq
        if not self.dirty:
            self.dirty = True
            self.batcher.mark(self)
        elif len(self.frames) >= self.batcher.flush_events:
            self.batcher.kick()

    async def close(self) -> None:
        """Flush everything, the last frame marked as the end (call after adding it)."""
        self.end = True
        self.done = asyncio.get_running_loop().create_future()
        if not self.dirty:
            self.dirty = True
            self.batcher.mark(self)
        # Not a flush of its own: the next batch (at most flush_interval away) takes it.
        await asyncio.shield(self.done)


# KEYS: per answer, its events stream and its meta hash.
# ARGV: ttl_ms, keep (events kept), then per answer: first seq, last seq, frames, end flag.
# One entry per answer per batch: id 0-{last seq}, "f" its first seq, "d" its frames;
# MINID trims what is more than `keep` events old. pcall: a batch retried after a lost
# reply finds its entries there already, and goes on with the others.
_FLUSH = """
local ttl = ARGV[1]
local keep = tonumber(ARGV[2])
local a = 3
for i = 1, #KEYS, 2 do
  local last = tonumber(ARGV[a + 1])
  local minid = math.max(1, last - keep)
  if ARGV[a + 3] == '1' then
    redis.pcall('XADD', KEYS[i], 'MINID', '~', '0-' .. minid, '0-' .. last,
      'f', ARGV[a], 'd', ARGV[a + 2], 'e', '1')
    redis.call('HSET', KEYS[i + 1], 'state', 'done')
    redis.call('PEXPIRE', KEYS[i + 1], ttl)
  else
    redis.pcall('XADD', KEYS[i], 'MINID', '~', '0-' .. minid, '0-' .. last,
      'f', ARGV[a], 'd', ARGV[a + 2])
  end
  redis.call('PEXPIRE', KEYS[i], ttl)
  a = a + 4
end
return 1
"""


class RedisBatcher:
    """Writes the frames of every answer of this process to Redis, in batches.

    A flush runs ``flush_interval`` seconds after the first frame pending since the
    last one (at once when an answer has ``flush_events`` pending; an answer that
    ends waits for the next one): one
    Lua call for every answer with frames, whatever their number, so the cost per
    chunk in this process is a list append plus a share of one round trip. Frames
    added during a round trip go in the next one.
    """

    def __init__(self, replay: RedisReplay, flush_interval: float, flush_events: int) -> None:
        self.replay = replay
        self.flush_interval = flush_interval
        self.flush_events = flush_events
        self.dirty: list[RedisWriter] = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._script: Any = None

    def mark(self, writer: RedisWriter) -> None:
        self.dirty.append(writer)
        if self._task is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.kick)

    def kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is None and self.dirty:
            self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            batch, self.dirty = self.dirty, []
            await self._write(batch)
        finally:
            self._task = None
            # What came during the round trip waits for the next interval: batches stay
            # large under load instead of following each other round trip by round trip.
            if self.dirty and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.flush_interval, self.kick)

    async def _write(self, batch: list[RedisWriter]) -> None:
        keys: list[str] = []
        args: list[Any] = [self.replay.ttl_ms, self.replay.max_events]
        ended: list[RedisWriter] = []
        for writer in batch:
            writer.dirty = False
            frames, writer.frames = writer.frames, []
            end = writer.end and not writer.closed
            if not frames:
                if not end:
                    continue
                writer.last += 1  # the last frame went out already: an empty entry ends it
                writer.first = writer.last
            keys += (writer.events, writer.meta)
            args += (writer.first, writer.last, b"".join(frames), b"1" if end else b"")
            if end:
                writer.closed = True
                ended.append(writer)
        try:
            if keys:
                client = self.replay.client
                if self._script is None or self._script.registered_client is not client:
                    self._script = client.register_script(_FLUSH)
                await self._script(keys=keys, args=args)
        except Exception as exc:
            # The frames are lost for other processes; their followers see the gap
            # (seq numbers jump) and say so. This process's own clients are unaffected.
            warn_often_at_most(10, "writing answers' replay buffers to Redis failed: %s", exc)
        finally:
            for writer in ended:
                if writer.done is not None and not writer.done.done():
                    writer.done.set_result(None)

    async def aclose(self) -> None:
        while self.dirty or self._task is not None:
            self.kick()
            if self._task is not None:
                await asyncio.shield(self._task)


class RedisCap:
    """The cap on running streams across every process: a Redis sorted set of leases.

    Each running stream holds a member scored with Redis's clock; the process renews
    its members every ``lease / 3`` seconds, and a member not renewed for ``lease``
    seconds (its process died) is dropped by the next acquire, so a crash leaks no
    slot for longer than that. Acquire is one Lua script (drop expired, count,
    add), so two processes cannot both take the last slot. ``lease`` is
    :attr:`WebSettings.stream_lease <pk_notebook.web.WebSettings.stream_lease>`
    (``pk-notebook serve --stream-lease``), 15 s by default.
    """

    def __init__(self, replay: RedisReplay, key: str, lease: float) -> None:
        self.replay = replay
        self.key = key
        self.lease = lease
        self.held: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._acquire: Any = None
        self._renew: Any = None
        self._count: Any = None

    def _scripts(self) -> tuple[Any, Any]:
        client = self.replay.client
        if self._acquire is None or self._acquire.registered_client is not client:
            self._acquire = client.register_script(_CAP_ACQUIRE)
            self._renew = client.register_script(_CAP_RENEW)
            self._count = client.register_script(_CAP_COUNT)
        return self._acquire, self._renew

    async def acquire(self, limit: int) -> str | None:
        """A holder id, or None when ``limit`` streams are running (in all processes)."""
        acquire, _ = self._scripts()
        holder = uuid.uuid4().hex
        taken = await acquire(keys=[self.key], args=[int(self.lease * 1000), limit, holder])
        if not taken:
            return None
        self.held.add(holder)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.ensure_future(self._renew_loop())
        return holder

    async def release(self, holder: str) -> None:
        self.held.discard(holder)
        try:
            await self.replay.client.zrem(self.key, holder)
        except Exception as exc:  # its lease runs out instead
            warn_often_at_most(
                10, "releasing a stream slot in Redis failed (%s): it expires instead", exc
            )

    async def count(self) -> int:
        """Streams running in every process: leases still alive (a crashed process's
        count as soon as they expire, not only after the next acquire drops them)."""
        self._scripts()
        return int(await self._count(keys=[self.key], args=[int(self.lease * 1000)]))

    async def _renew_loop(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease / 3)
            if not self.held:
                return
            try:
                _, renew = self._scripts()
                await renew(keys=[self.key], args=sorted(self.held))
            except Exception as exc:
                warn_often_at_most(10, "renewing stream slots in Redis failed: %s", exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
