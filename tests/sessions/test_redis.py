"""What only the Redis store has: keys and prefixes, the cross-process lock, faults,
foreign data, many processes, and a server that dies mid-run."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from pk_notebook.runtime import (
    ConfigurationError,
    Message,
    Pipeline,
    ProviderMiddleware,
    SessionBusy,
    SessionError,
    StoreUnavailable,
    StreamStatus,
)
from pk_notebook.runtime.errors import redact

from .redis_server import RedisServer, free_port
from .test_store_contract import assert_turns_paired, echo_provider

redis_asyncio = pytest.importorskip("redis.asyncio")
from pk_notebook.sessions import RedisStore  # noqa: E402
from pk_notebook.sessions.redis import safe_url  # noqa: E402

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[object]:
    """A plain client, to look at keys and to plant foreign data."""
    client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def store(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(redis_server.url, prefix=redis_prefix)
    try:
        yield s
    finally:
        await s.aclose()


# --- keys, prefix, TTL ---------------------------------------------------------------------


def test_the_package_exports_redis_store_lazily() -> None:
    import pk_notebook.sessions as sessions

    assert sessions.RedisStore is RedisStore
    assert "RedisStore" not in sessions.__all__  # `import *` must work without redis
    assert RedisStore.from_url().prefix == "pk_notebook:"


async def test_keys_live_under_the_prefix_and_prefixes_are_apart(
    redis_server: RedisServer, raw: object, redis_prefix: str
) -> None:
    one = RedisStore.from_url(redis_server.url, prefix=redis_prefix + "one:")
    two = RedisStore.from_url(redis_server.url, prefix=redis_prefix + "two:")
    try:
        await one.append("s", [Message("user", "in one")])
        await two.append("s", [Message("user", "in two")])
        assert [m.content for m in await one.load("s")] == ["in one"]
        assert [i.session_id for i in await two.list_sessions()] == ["s"]
        keys = sorted(await raw.keys(redis_prefix + "*"))  # type: ignore[attr-defined]
        assert keys == sorted(
            f"{redis_prefix}{p}:{k}"
            for p in ("one", "two")
            for k in ("meta:s", "msgs:s", "sessions")
        )
        assert (
            json.loads((await raw.lrange(f"{redis_prefix}one:msgs:s", 0, -1))[0])["content"]
            == "in one"
        )  # type: ignore[attr-defined]
    finally:
        await one.aclose()
        await two.aclose()


async def test_ttl_is_set_on_write_and_refreshed_on_read(
    redis_server: RedisServer, raw: object, redis_prefix: str
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=redis_prefix, ttl="1m")
    forever = RedisStore.from_url(redis_server.url, prefix=redis_prefix + "x:")
    try:
        await store.append("t", [Message("user", "hi")])
        for kind in ("meta", "msgs"):
            assert 59_000 < await raw.pttl(f"{redis_prefix}{kind}:t") <= 60_000  # type: ignore[attr-defined]
        await raw.pexpire(f"{redis_prefix}meta:t", 5000)  # type: ignore[attr-defined]
        await raw.pexpire(f"{redis_prefix}msgs:t", 5000)  # type: ignore[attr-defined]
        await store.load("t")
        for kind in ("meta", "msgs"):
            assert await raw.pttl(f"{redis_prefix}{kind}:t") > 59_000  # type: ignore[attr-defined]
        await forever.append("t", [Message("user", "hi")])
        assert await raw.pttl(f"{redis_prefix}x:msgs:t") == -1  # type: ignore[attr-defined]
    finally:
        await store.aclose()
        await forever.aclose()


def test_options_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="Redis URL"):
        RedisStore.from_url("http://user:hunter2hunter2@localhost/0")
    with pytest.raises(ConfigurationError):
        RedisStore.from_url("redis://localhost", lease=0)
    with pytest.raises(ConfigurationError):
        RedisStore.from_url("redis://localhost", ttl="tomorrow")


# --- an unreachable server, and passwords -----------------------------------------------------


def test_redact_and_safe_url_remove_redis_passwords() -> None:
    for url in (
        "redis://alice:s3cret-pass@db.example:6379/0",
        "rediss://:s3cret-pass@db.example:6380",
        "redis://db.example:6379/0?password=s3cret-pass&db=1",
    ):
        assert "s3cret" not in safe_url(url)
        assert "db.example" in safe_url(url)
    assert "s3cret" not in redact("cannot reach redis://alice:s3cret-pass@db.example:6379/0")
    assert "s3cret" not in redact("cannot reach rediss://:s3cret-pass@db.example")


@pytest.mark.parametrize(
    "template",
    [
        "redis://alice:s3cret-pass@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password=s3cret-pass",
    ],
)
async def test_unreachable_redis_is_a_clear_store_unavailable(template: str) -> None:
    port = free_port()  # nothing listens there
    store = RedisStore.from_url(template.format(port=port))
    provider = echo_provider()
    try:
        for attempt in (
            store.ping,
            lambda: store.load("s"),
            lambda: store.append("s", [Message("user", "x")]),
        ):
            with pytest.raises(StoreUnavailable) as caught:
                await attempt()
            text = str(caught.value)
            assert f"127.0.0.1:{port}" in text and "s3cret" not in text
            assert "Check that the server is running" in text
        async with Pipeline(ProviderMiddleware(provider), state_store=store) as pipe:
            with pytest.raises(StoreUnavailable, match=str(port)):
                await pipe.execute_with_context("s", "user", "hello")
        assert provider.calls == []  # failed before anything was asked of the provider
    finally:
        await store.aclose()


# --- foreign or corrupted data -----------------------------------------------------------------


async def test_foreign_data_is_reported_with_the_key_not_a_crash(
    store: RedisStore, raw: object, redis_prefix: str
) -> None:
    p = redis_prefix
    r = raw
    await r.set(f"{p}msgs:str", "not a list")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}msgs:str holds a string, expected a list"):
        await store.load("str")
    with pytest.raises(StoreUnavailable, match=f"{p}msgs:str"):
        await store.append("str", [Message("user", "x")])
    assert await r.get(f"{p}msgs:str") == "not a list"  # type: ignore[attr-defined]

    await r.rpush(f"{p}msgs:json", json.dumps({"role": "user", "content": "ok"}), "{broken")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=rf"item 1 of the key '{p}msgs:json'"):
        await store.load("json")

    for bad in ([1, 2], {"content": "no role"}, {"role": "wizard", "content": "x"}, b"\xff\xfe"):
        await r.delete(f"{p}msgs:bad")  # type: ignore[attr-defined]
        await r.rpush(f"{p}msgs:bad", bad if isinstance(bad, bytes) else json.dumps(bad))  # type: ignore[attr-defined]
        with pytest.raises(StoreUnavailable, match=f"{p}msgs:bad"):
            await store.load("bad")

    await r.rpush(f"{p}meta:m", "a list, not a hash")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}meta:m holds a list, expected a hash"):
        await store.append("m", [Message("user", "x")])
    assert await r.exists(f"{p}msgs:m") == 0  # nothing half-written

    await store.append("fine", [Message("user", "x")])
    await r.hset(f"{p}meta:fine", "created_at", "yesterday")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}meta:fine"):
        await store.list_sessions()
    await r.delete(f"{p}meta:fine")  # type: ignore[attr-defined]
    await r.zadd(f"{p}sessions", {"m": 1})  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}meta:m"):
        await store.list_sessions()

    await r.delete(f"{p}sessions")  # type: ignore[attr-defined]
    await r.set(f"{p}sessions", "x")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}sessions"):
        await store.list_sessions()
    with pytest.raises(StoreUnavailable, match=f"{p}sessions holds a string"):
        await store.append("other", [Message("user", "x")])

    await r.hset(f"{p}lock:h", "owner", "x")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}lock:h holds a hash"):
        async with store.lock("h", timeout=1):
            pass
    await r.set(f"{p}lock:f", "forever")  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=f"{p}lock:f holds a value without expiry"):
        async with store.lock("f", timeout=1):
            pass


async def test_expired_sessions_leave_the_index(
    redis_server: RedisServer, raw: object, redis_prefix: str
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=redis_prefix, ttl=0.2)
    try:
        await store.append("short", [Message("user", "x")])
        await asyncio.sleep(0.4)
        assert await store.list_sessions() == []
        assert await raw.zcard(f"{redis_prefix}sessions") == 0  # type: ignore[attr-defined]
    finally:
        await store.aclose()


# --- the lock ------------------------------------------------------------------------------


async def test_a_held_lock_is_renewed_past_its_lease(
    redis_server: RedisServer, raw: object, redis_prefix: str
) -> None:
    holder = RedisStore.from_url(redis_server.url, prefix=redis_prefix, lease=0.3)
    other = RedisStore.from_url(redis_server.url, prefix=redis_prefix, lease=0.3)
    try:
        async with holder.lock("renew", timeout=1):
            with pytest.raises(SessionBusy):
                async with other.lock("renew", timeout=1.0):  # > 3 leases
                    pytest.fail("the lock lapsed while it was held")
            assert 0 < await raw.pttl(f"{redis_prefix}lock:renew") <= 300  # type: ignore[attr-defined]
        assert await raw.exists(f"{redis_prefix}lock:renew") == 0  # type: ignore[attr-defined]
    finally:
        await holder.aclose()
        await other.aclose()


async def test_the_lock_of_a_dead_process_expires_after_its_lease(
    store: RedisStore, raw: object, redis_prefix: str
) -> None:
    await raw.set(f"{redis_prefix}lock:crashed", "token-of-a-dead-kernel", px=300)  # type: ignore[attr-defined]
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with store.lock("crashed", timeout=5):
        assert loop.time() - started >= 0.2
        owner = await raw.get(f"{redis_prefix}lock:crashed")  # type: ignore[attr-defined]
        assert owner != "token-of-a-dead-kernel"


async def test_only_the_owner_releases_and_a_lost_lock_does_not_save(
    store: RedisStore, raw: object, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"{redis_prefix}lock:taken"
    await store.append("taken", [Message("user", "before")])
    async with store.lock("taken", timeout=1):
        # As if our lease had run out and another process had taken the session:
        await raw.set(key, "someone-else", px=5000)  # type: ignore[attr-defined]
        with pytest.raises(SessionError, match="was not saved"):
            await store.append("taken", [Message("user", "late"), Message("assistant", "x")])
    assert await raw.get(key) == "someone-else"  # type: ignore[attr-defined]
    assert [m.content for m in await store.load("taken")] == ["before"]
    await raw.delete(key)  # type: ignore[attr-defined]


async def test_a_lost_lock_reaches_the_result_as_a_warning_not_an_error(
    store: RedisStore, raw: object, redis_prefix: str
) -> None:
    provider = echo_provider()
    async with Pipeline(ProviderMiddleware(provider), state_store=store) as pipe:
        stream = await pipe.execute_stream_with_context("w", "user", "q")
        await raw.set(f"{redis_prefix}lock:w", "someone-else", px=5000)  # type: ignore[attr-defined]
        result = await stream.collect()
    assert result.complete and result.text.startswith("A: q")
    assert any("was not saved" in w for w in result.warnings)
    assert await store.load("w") == []


# --- two event loops -----------------------------------------------------------------------


class _LoopThread:
    """An event loop running in a thread, like the sync facade's portal."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[_LoopThread]:
    lt = _LoopThread()
    try:
        yield lt
    finally:
        lt.close()


async def test_one_store_two_loops_one_client_each_closed_together(
    store: RedisStore, loop_thread: _LoopThread
) -> None:
    provider = echo_provider(chunk_delay=0.0005)
    async with Pipeline(ProviderMiddleware(provider), state_store=store) as pipe:

        def turns_in_thread() -> None:
            for i in range(8):
                loop_thread.run(pipe.execute_with_context("both", "user", f"thread{i}"))

        thread_turns = asyncio.to_thread(turns_in_thread)
        here = asyncio.gather(
            *(pipe.execute_with_context("both", "user", f"main{i}") for i in range(8))
        )
        await asyncio.gather(thread_turns, here)
    prompts = assert_turns_paired(await store.load("both"))
    assert sorted(prompts) == sorted(
        [f"thread{i}" for i in range(8)] + [f"main{i}" for i in range(8)]
    )
    clients = [entry.client for entry in store._clients.values()]
    assert {entry.loop for entry in store._clients.values()} == {
        asyncio.get_running_loop(),
        loop_thread.loop,
    }
    await store.aclose()  # closes the thread loop's client on its own loop, too
    assert store._clients == {}
    for client in clients:
        pool = client.connection_pool
        assert not any(
            c.is_connected for c in pool._available_connections + list(pool._in_use_connections)
        )


# --- many processes ------------------------------------------------------------------------


@pytest.mark.slow
def test_many_processes_share_sessions_without_losing_or_interleaving(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    workers, turns, sessions = 8, 50, 10
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.sessions._redis_worker",
                redis_server.url,
                redis_prefix,
                str(w),
                str(turns),
                str(sessions),
                "3",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(workers)
    ]
    lines = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=80)
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
            lines += [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert len(lines) == workers * turns

    async def read_all() -> dict[str, list[Message]]:
        store = RedisStore.from_url(redis_server.url, prefix=redis_prefix)
        try:
            infos = await store.list_sessions()
            return {i.session_id: await store.load(i.session_id) for i in infos}
        finally:
            await store.aclose()

    histories = asyncio.run(read_all())
    assert len(histories) == sessions
    prompts = Counter(p for h in histories.values() for p in assert_turns_paired(h))
    assert prompts == Counter(f"w{w}-t{t}" for w in range(workers) for t in range(turns))
    for line in lines:
        # The turn was given exactly the history that precedes it in the store.
        history = histories[line["session"]]
        assert history[line["seen"]].content == line["prompt"]


# --- the server dies mid-run ------------------------------------------------------------------


async def test_redis_dying_mid_run_loses_no_answer_and_nothing_saved(
    durable_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pk_notebook")
    store = RedisStore.from_url(durable_redis.url, lease=1.0)
    provider = echo_provider(chunk_delay=0.001)
    acknowledged: list[tuple[str, str]] = []
    failed: list[tuple[str, str]] = []
    stop = asyncio.Event()
    try:
        async with Pipeline(
            ProviderMiddleware(provider), state_store=store, lock_timeout=30
        ) as pipe:

            async def keep_talking(session: str) -> None:
                turn = 0
                while not stop.is_set():
                    prompt = f"{session}-{turn}"
                    turn += 1
                    try:
                        result = await pipe.execute_with_context(session, "user", prompt)
                    except StoreUnavailable:
                        failed.append((session, prompt))
                        await asyncio.sleep(0.02)
                        continue
                    assert result.complete and result.text.startswith(f"A: {prompt} ")
                    (failed if result.warnings else acknowledged).append((session, prompt))

            talkers = [asyncio.ensure_future(keep_talking(f"bg{i}")) for i in range(3)]
            await asyncio.sleep(0.3)

            # One turn is in flight (lock held, history read) when the server dies.
            stream = await pipe.execute_stream_with_context("main", "user", "mid")
            durable_redis.kill()
            result = await stream.collect()  # the answer is not lost, nothing is raised
            assert result.status is StreamStatus.FINISHED
            assert result.text.startswith("A: mid ")
            assert len(result.warnings) == 1 and "not saved" in result.warnings[0]
            assert f"127.0.0.1:{durable_redis.port}" in result.warnings[0]
            assert "could not release the lock of session 'main'" in caplog.text

            with pytest.raises(StoreUnavailable, match=str(durable_redis.port)):
                await pipe.execute_with_context("main", "user", "while down")
            await asyncio.sleep(0.3)
            durable_redis.start()
            await asyncio.sleep(0.3)
            after = await pipe.execute_with_context("main", "user", "after")  # waits out the lease
            assert after.complete and not after.warnings
            stop.set()
            await asyncio.gather(*talkers)

        assert failed, "the background turns never noticed the server was gone"
        histories = {s: await store.load(s) for s in ("bg0", "bg1", "bg2")}
        stored = {(s, p) for s, h in histories.items() for p in assert_turns_paired(h)}
        assert set(acknowledged) <= stored  # nothing acknowledged was lost
        assert stored <= set(acknowledged) | set(failed)
        assert assert_turns_paired(await store.load("main")) == ["after"]
    finally:
        await store.aclose()
