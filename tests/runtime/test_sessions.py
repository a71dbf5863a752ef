"""Session memory through the pipeline: history sent, turns saved, concurrency, policies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pk_notebook import (
    ConfigurationError,
    HistoryLimit,
    Message,
    Pipeline,
    ProviderMiddleware,
    RetryPolicy,
    SessionBusy,
    StreamStatus,
)
from pk_notebook.providers import Fault, MockProvider, Scenario, split_tokens
from pk_notebook.sessions import MemoryStore, SQLiteStore

LONG = " ".join(f"w{i}" for i in range(300))


def stores(tmp_path: Path) -> dict[str, object]:
    return {"memory": MemoryStore(), "sqlite": SQLiteStore(tmp_path / "s.sqlite3")}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    return stores(tmp_path)[request.param]


async def test_a_session_remembers_earlier_turns(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store)
    await pipe.execute_with_context("ada", "user", "My name is Ada")
    result = await pipe.execute_with_context("ada", "user", "What is my name?")
    sent = provider.calls[-1].request.messages
    assert [m.content for m in sent] == [
        "My name is Ada",
        "Nice to meet you, Ada! I will remember that for the rest of this session.",
        "What is my name?",
    ]
    history = await store.load("ada")
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[-1].content == result.text
    assert result.session_id == "ada"
    # Another session knows nothing of it.
    await pipe.execute_with_context("bob", "user", "hello")
    assert len(provider.calls[-1].request.messages) == 1


async def test_concurrent_turns_on_one_session_never_interleave(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario("answer to {prompt}")], chunk_delay=0.001)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store)
    prompts = [f"q{i}" for i in range(12)]
    results = await asyncio.gather(
        *(pipe.execute_with_context("shared", "user", p) for p in prompts)
    )
    history = await store.load("shared")
    assert len(history) == 2 * len(prompts)
    for question, answer in zip(history[::2], history[1::2], strict=True):
        assert question.role == "user" and answer.role == "assistant"
        assert answer.content == f"answer to {question.content}"
    assert sorted(m.content for m in history[::2]) == sorted(prompts)
    # Each turn saw all the turns saved before it: histories grow 1, 3, 5, ...
    sizes = sorted(len(call.request.messages) for call in provider.calls)
    assert sizes == list(range(1, 2 * len(prompts), 2))
    assert all(r.complete for r in results)


async def test_a_stopped_turn_is_stored_marked_as_interrupted(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store)
    stream = await pipe.execute_stream_with_context("s", "user", "go")
    async for chunk in stream:
        if chunk.index == 3:
            stream.stop()
    history = await store.load("s")
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].status == "stopped" and history[1].interrupted
    assert history[1].content == stream.text != ""


async def test_a_failed_turn_keeps_its_partial_answer_marked_failed(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario("one two three", fault=Fault("error", after=2))])
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), state_store=store
    )
    from pk_notebook import ProviderError

    with pytest.raises(ProviderError):
        await pipe.execute_with_context("s", "user", "go")
    history = await store.load("s")
    assert history[1].content == "one two" and history[1].status == "failed"


async def test_drop_policy_stores_nothing_for_an_interrupted_turn(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store, interrupted="drop")
    await pipe.execute_with_context("s", "user", "first")  # completes
    stream = await pipe.execute_stream_with_context("s", "user", "second")
    await stream.next()
    await stream.aclose()
    history = await store.load("s")
    assert history[0].content == "first"
    assert len(history) == 2


async def test_a_turn_that_fails_before_any_text_leaves_history_unchanged(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario("x", fault=Fault("server_error", times=9))])
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), state_store=store
    )
    from pk_notebook import ServerError

    with pytest.raises(ServerError):
        await pipe.execute_with_context("s", "user", "go")
    assert await store.load("s") == []
    # ... and the session is not left locked.
    provider.fault = None
    provider.scenarios = [Scenario("fine")]
    assert (await pipe.execute_with_context("s", "user", "again")).text == "fine"


async def test_a_cancelled_consumer_still_saves_the_partial_turn_and_releases_the_lock(
    store,
) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store, lock_timeout=2)
    task = asyncio.ensure_future(pipe.execute_with_context("s", "user", "go"))
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    history = await store.load("s")
    assert history[1].status == "stopped" and history[1].content
    provider.scenarios = [Scenario("next")]
    assert (await pipe.execute_with_context("s", "user", "again")).text == "next"


async def test_a_turn_waiting_too_long_for_the_session_gets_session_busy(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.02)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store, lock_timeout=0.1)
    stream = await pipe.execute_stream_with_context("s", "user", "long one")
    with pytest.raises(SessionBusy, match="'s' is busy"):
        await pipe.execute_with_context("s", "user", "impatient")
    await stream.aclose()


async def test_history_limit_trims_what_is_sent_but_not_what_is_stored(store) -> None:  # type: ignore[no-untyped-def]
    provider = MockProvider([Scenario("ok")])
    pipe = Pipeline(
        ProviderMiddleware(provider), state_store=store, history=HistoryLimit(max_messages=3)
    )
    for i in range(4):
        await pipe.execute_with_context("s", "user", f"q{i}")
    sent = provider.calls[-1].request.messages
    # The window of 3 would start on an answer; it is trimmed to start on a question.
    assert [m.content for m in sent] == ["q2", "ok", "q3"]
    assert len(await store.load("s")) == 8


def test_history_limit_by_tokens_keeps_the_newest_messages() -> None:
    messages = [
        Message("user", "x" * 400),
        Message("assistant", "y" * 400),
        Message("user", "short"),
    ]
    assert [m.content for m in HistoryLimit(max_tokens=150).apply(messages)] == ["short"]
    assert len(HistoryLimit(max_tokens=1000).apply(messages)) == 3


async def test_sessions_can_be_listed_read_forked_exported_and_cleared(store) -> None:  # type: ignore[no-untyped-def]
    pipe = Pipeline(ProviderMiddleware(MockProvider([Scenario("ok {prompt}")])), state_store=store)
    await pipe.execute_with_context("a", "user", "one")
    await pipe.execute_with_context("b", "user", "two")
    infos = await store.list_sessions()
    assert [i.session_id for i in infos] == ["b", "a"]  # most recent first
    assert infos[0].messages == 2
    assert await store.fork("a", "a2") == 2
    await pipe.execute_with_context("a2", "user", "three")
    assert len(await store.load("a")) == 2 and len(await store.load("a2")) == 4
    with pytest.raises(ConfigurationError, match="already has messages"):
        await store.fork("b", "a2")
    exported = json.loads(await store.export_json("a2"))
    assert exported["session_id"] == "a2"
    assert [m["content"] for m in exported["messages"]][-1] == "ok three"
    assert await store.delete("a") is True
    assert await store.load("a") == []
    assert await store.delete("a") is False
    await store.import_session(exported, session_id="copy")
    assert [m.content for m in await store.load("copy")] == [
        m["content"] for m in exported["messages"]
    ]


async def test_sqlite_sessions_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    first = SQLiteStore(path)
    pipe = Pipeline(
        ProviderMiddleware(MockProvider.demo(chunk_delay=0, first_chunk_delay=0)), state_store=first
    )
    await pipe.execute_with_context("trip", "user", "My name is Ada")
    await first.aclose()
    # A new kernel: a new store object on the same file.
    second = SQLiteStore(path)
    history = await second.load("trip")
    assert history[0].content == "My name is Ada"
    # What is known about the answer is stored with it: enough to total a session's cost.
    meta = history[1].meta
    assert meta["finish_reason"] == "stop" and meta["model"] == "demo"
    assert meta["usage"]["output_tokens"] == len(split_tokens(history[1].content))
    await second.aclose()


async def test_sqlite_lock_excludes_a_second_store_on_the_same_file(tmp_path: Path) -> None:
    # Two store objects = two processes as far as the lock is concerned.
    a, b = SQLiteStore(tmp_path / "x.sqlite3"), SQLiteStore(tmp_path / "x.sqlite3")
    async with a.lock("s", timeout=1):
        with pytest.raises(SessionBusy):
            async with b.lock("s", timeout=0.1):
                pass
    async with b.lock("s", timeout=0.5):
        pass
    await a.aclose()
    await b.aclose()


def test_sqlite_default_location_is_documented_and_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pk_notebook.sessions import default_path

    monkeypatch.setenv("PK_NOTEBOOK_HOME", str(tmp_path))
    assert default_path() == tmp_path / "sessions.sqlite3"
    monkeypatch.delenv("PK_NOTEBOOK_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "pk_notebook" / "sessions.sqlite3"


async def test_memory_store_forgets_least_recently_used_sessions() -> None:
    store = MemoryStore(max_sessions=2)
    await store.append("a", [Message("user", "1")])
    await store.append("b", [Message("user", "2")])
    await store.load("a")  # a is now more recent than b
    await store.append("c", [Message("user", "3")])
    assert [i.session_id for i in await store.list_sessions()] == ["c", "a"]


async def test_memory_store_ttl_slides_on_use() -> None:
    store = MemoryStore(ttl=0.2)
    await store.append("s", [Message("user", "1")])
    for _ in range(3):
        await asyncio.sleep(0.1)
        assert await store.load("s")  # each read keeps it alive
    await asyncio.sleep(0.3)
    assert await store.load("s") == []


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "x" * 300])
async def test_bad_session_ids_are_rejected_clearly(bad: str) -> None:
    pipe = Pipeline(ProviderMiddleware(MockProvider()))
    with pytest.raises(ConfigurationError, match="session id"):
        await pipe.execute_with_context(bad, "user", "x")


async def test_stream_status_and_session_id_are_on_the_result() -> None:
    pipe = Pipeline(ProviderMiddleware(MockProvider([Scenario("ok")])))
    result = await pipe.execute_with_context("sid", "user", "x")
    assert result.session_id == "sid" and result.status is StreamStatus.FINISHED


class FlakyReleaseStore(MemoryStore):
    """A store whose lock release fails, as when its server has just gone away."""

    def lock(self, session_id, timeout=None):  # type: ignore[no-untyped-def]
        inner = super().lock(session_id, timeout)

        class Broken:
            async def __aenter__(self) -> None:
                await inner.__aenter__()

            async def __aexit__(self, *exc: object) -> None:
                await inner.__aexit__(None, None, None)
                raise ConnectionError("store went away")

        return Broken()


async def test_a_failed_lock_release_is_reported_without_hiding_the_saved_turn() -> None:
    store = FlakyReleaseStore()
    pipe = Pipeline(ProviderMiddleware(MockProvider([Scenario("ok")])), state_store=store)
    result = await pipe.execute_with_context("s", "user", "x")
    assert result.text == "ok"
    assert len(await store.load("s")) == 2  # the turn was saved ...
    assert result.warnings == ("the session lock was not released cleanly: store went away",)


def test_many_stores_opening_one_new_sqlite_file_at_once_all_work(tmp_path: Path) -> None:
    # Kernels starting together on a fresh sessions file: switching it to WAL mode
    # needs an exclusive lock that SQLite does not wait for by itself.
    import threading

    from pk_notebook.runtime.sync import run_sync

    for round_ in range(20):
        path = tmp_path / f"fresh-{round_}.sqlite3"
        stores = [SQLiteStore(path) for _ in range(8)]
        start = threading.Barrier(len(stores))
        errors: list[BaseException] = []

        def open_and_write(
            store: SQLiteStore,
            n: int,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                run_sync(store.append(f"s{n}", [Message("user", "hi")]))
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=open_and_write, args=(s, n)) for n, s in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert len(run_sync(stores[0].list_sessions())) == len(stores)
        for store in stores:
            run_sync(store.aclose())
