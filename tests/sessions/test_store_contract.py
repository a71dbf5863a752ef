"""One behaviour, three stores: every test here runs against memory, SQLite and Redis.

A store that passes this file can stand in for any other under a Pipeline.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from pk_notebook.providers import Fault, MockProvider, Scenario
from pk_notebook.runtime import (
    ConfigurationError,
    HistoryLimit,
    Message,
    Pipeline,
    ProviderError,
    ProviderMiddleware,
    SessionBusy,
    StreamStatus,
)

from .conftest import StoreFactory

pytestmark = pytest.mark.timeout(60)


def echo_provider(**options: object) -> MockProvider:
    """Answers every prompt with ``A:<prompt>``, in several chunks."""
    return MockProvider(default="A: {prompt} and some more words to stream", **options)  # type: ignore[arg-type]


def assert_turns_paired(messages: list[Message]) -> list[str]:
    """Every user message is followed by its own answer; returns the prompts in order."""
    assert len(messages) % 2 == 0, [m.content for m in messages]
    prompts = []
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert question.role == "user", question
        assert answer.role == "assistant", answer
        assert answer.content.startswith(f"A: {question.content} "), (question, answer)
        prompts.append(question.content)
    return prompts


# --- load / append -------------------------------------------------------------------


async def test_unknown_session_is_empty_and_not_created(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.load("nobody") == []
    assert await store.list_sessions() == []
    assert await store.delete("nobody") is False


async def test_append_then_load_keeps_order_and_fields(make_store: StoreFactory) -> None:
    store = make_store()
    first = [Message("system", "be brief"), Message("user", "héllo ✓")]
    second = [
        Message("assistant", "hi", meta={"finish_reason": "stop"}, created_at=1234.5),
        Message("user", "again"),
        Message("assistant", "partial", status="stopped"),
    ]
    await store.append("s1", first)
    await store.append("s1", second)
    loaded = await store.load("s1")
    assert loaded == first + second
    assert [m.to_dict() for m in loaded] == [m.to_dict() for m in first + second]
    assert loaded[2].created_at == 1234.5
    assert loaded[-1].interrupted


async def test_tool_rounds_and_reasoning_are_kept_whole(make_store: StoreFactory) -> None:
    """A tool-using turn replays to a provider only if every part comes back as written."""
    from pk_notebook.runtime import ToolCall

    turn = [
        Message("user", "Umbrella in Paris?"),
        Message(
            "assistant",
            "Let me check.",
            tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}', "sig=="),),
            reasoning="The user wants the weather.",
            reasoning_blocks=(
                {"provider": "anthropic", "type": "thinking", "thinking": "t", "signature": "S"},
                {"provider": "anthropic", "type": "redacted_thinking", "data": "opaque"},
            ),
        ),
        Message("tool", "rain, 12 C", tool_call_id="call_1", name="get_weather"),
        Message("tool", "Error: timeout", tool_call_id="call_2", name="x", is_error=True),
        Message("assistant", "Yes, take one."),
    ]
    store = make_store()
    await store.append("t", turn)
    loaded = await store.load("t")
    assert loaded == turn
    assert loaded[1].reasoning_blocks[0]["signature"] == "S"
    assert loaded[1].tool_calls[0].signature == "sig=="
    assert loaded[3].is_error and loaded[3].tool_call_id == "call_2"
    exported = json.loads(await store.export_json("t"))
    assert exported["messages"][1]["tool_calls"][0]["name"] == "get_weather"
    other = make_store()
    await other.import_session(exported, session_id="t2")
    assert await other.load("t2") == turn


async def test_append_of_many_messages_is_atomic(make_store: StoreFactory) -> None:
    """Concurrent multi-message appends (no lock) never interleave inside one append."""
    stores = [make_store(), make_store()]
    shared = stores[0] is not stores[1] and type(stores[0]).__name__ != "MemoryStore"
    if not shared:
        stores = [stores[0], stores[0]]

    async def add(i: int) -> None:
        batch = [
            Message("user", f"q{i}"),
            Message("assistant", f"A: q{i} "),
            Message("user", f"z{i}"),
        ]
        await stores[i % 2].append("atomic", batch)

    await asyncio.gather(*(add(i) for i in range(40)))
    loaded = await stores[0].load("atomic")
    assert len(loaded) == 120
    seen = set()
    for start in range(0, 120, 3):
        q, a, z = loaded[start : start + 3]
        i = q.content[1:]
        assert (q.content, a.content, z.content) == (f"q{i}", f"A: q{i} ", f"z{i}")
        seen.add(i)
    assert len(seen) == 40


async def test_append_nothing_creates_an_empty_session(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append("empty", [])
    assert await store.load("empty") == []
    assert [(i.session_id, i.messages) for i in await store.list_sessions()] == [("empty", 0)]


async def test_bad_session_ids_are_refused(make_store: StoreFactory) -> None:
    store = make_store()
    for bad in ("", "  ", "a\nb", "x" * 500):
        with pytest.raises(ConfigurationError):
            await store.append(bad, [Message("user", "hi")])


# --- listing, deleting, forking, exporting ------------------------------------------------


async def test_list_sessions_counts_most_recent_first(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append("a", [Message("user", "1"), Message("assistant", "2")])
    await store.append("b", [Message("user", "1")])
    await store.append("c", [Message("user", "1"), Message("assistant", "2"), Message("user", "3")])
    infos = await store.list_sessions()
    assert [(i.session_id, i.messages) for i in infos] == [("c", 3), ("b", 1), ("a", 2)]
    for info in infos:
        assert 0 < info.created_at <= info.updated_at

    await store.append("a", [Message("user", "4")])
    infos = await store.list_sessions()
    assert [(i.session_id, i.messages) for i in infos] == [("a", 3), ("c", 3), ("b", 1)]
    assert infos[0].updated_at >= infos[1].updated_at


async def test_delete_forgets_a_session(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append("gone", [Message("user", "x")])
    await store.append("kept", [Message("user", "y")])
    assert await store.delete("gone") is True
    assert await store.delete("gone") is False
    assert await store.load("gone") == []
    assert [i.session_id for i in await store.list_sessions()] == ["kept"]
    await store.append("gone", [Message("user", "fresh")])
    assert [m.content for m in await store.load("gone")] == ["fresh"]


async def test_fork_copies_history_independently(make_store: StoreFactory) -> None:
    store = make_store()
    history = [Message("user", "q"), Message("assistant", "a", meta={"k": 1})]
    await store.append("src", history)
    assert await store.fork("src", "copy") == 2
    assert await store.load("copy") == history
    await store.append("copy", [Message("user", "only in the copy")])
    assert await store.load("src") == history
    with pytest.raises(ConfigurationError, match="already has messages"):
        await store.fork("src", "copy")
    assert await store.fork("missing", "other") == 0


async def test_export_import_round_trip(make_store: StoreFactory) -> None:
    store = make_store()
    history = [
        Message("system", "sys"),
        Message("user", "q ✓", created_at=10.0),
        Message("assistant", "half", status="failed", meta={"finish_reason": "x"}),
    ]
    await store.append("orig", history)
    text = await store.export_json("orig")
    data = json.loads(text)
    assert data["session_id"] == "orig"
    assert await store.import_session(data, session_id="restored") == "restored"
    restored = await store.load("restored")
    assert [m.to_dict() for m in restored] == [m.to_dict() for m in history]
    with pytest.raises(ConfigurationError, match="already exists"):
        await store.import_session(data, session_id="restored")
    other = make_store()
    if other is not store:
        await other.delete("orig")
        assert await other.import_session(data) == "orig"
        assert [m.to_dict() for m in await other.load("orig")] == data["messages"]


# --- with a pipeline -------------------------------------------------------------------


async def test_history_limit_trims_what_the_provider_sees(make_store: StoreFactory) -> None:
    store = make_store()
    provider = echo_provider()
    pipe = Pipeline(
        ProviderMiddleware(provider), state_store=store, history=HistoryLimit(max_messages=3)
    )
    async with pipe:
        for i in range(4):
            await pipe.execute_with_context("lim", "user", f"t{i}")
    seen = [len(call.request.messages) for call in provider.calls]
    # 0, 2, then 3 trimmed to 2 (a window never opens on an answer), plus the new question
    assert seen == [1, 3, 3, 3]
    assert provider.calls[-1].request.messages[0].content == "t2"
    assert len(await store.load("lim")) == 8  # the store keeps everything


async def test_concurrent_turns_on_one_session_never_interleave(make_store: StoreFactory) -> None:
    store = make_store()
    provider = echo_provider(chunk_delay=0.0005)
    async with Pipeline(ProviderMiddleware(provider), state_store=store) as pipe:
        prompts = [f"p{i}" for i in range(24)]
        results = await asyncio.gather(
            *(pipe.execute_with_context("busy", "user", p) for p in prompts)
        )
    assert all(r.complete and not r.warnings for r in results)
    history = await store.load("busy")
    assert sorted(assert_turns_paired(history)) == sorted(prompts)
    # Each turn saw exactly the turns before it: the lock covers load .. append.
    assert sorted(len(c.request.messages) for c in provider.calls) == list(range(1, 49, 2))
    for call in provider.calls:
        prior = list(call.request.messages[:-1])
        assert prior == history[: len(prior)]


async def test_interrupted_turns_are_stored_with_their_status(make_store: StoreFactory) -> None:
    store = make_store()
    provider = MockProvider(
        [
            Scenario(
                "this answer fails after a few words", match="^fail", fault=Fault("error", after=3)
            ),
            Scenario("a long answer " * 50, match="^stop"),
        ],
        chunk_delay=0.001,
    )
    async with Pipeline(ProviderMiddleware(provider), state_store=store) as pipe:
        failed = await pipe.execute_stream_with_context("s", "user", "fail please")
        with pytest.raises(ProviderError):
            async for _ in failed:
                pass
        assert failed.status is StreamStatus.FAILED

        stream = await pipe.execute_stream_with_context("s", "user", "stop me")
        async for chunk in stream:
            if chunk.index >= 2:
                stream.stop()
        assert stream.status is StreamStatus.STOPPED
        assert stream.result.warnings == ()

    history = await store.load("s")
    assert [(m.role, m.status) for m in history] == [
        ("user", None),
        ("assistant", "failed"),
        ("user", None),
        ("assistant", "stopped"),
    ]
    assert history[1].content == "this answer fails"
    assert history[3].content == stream.text and stream.text

    async with Pipeline(
        ProviderMiddleware(provider), state_store=store, interrupted="drop"
    ) as pipe:
        dropped = await pipe.execute_stream_with_context("s", "user", "fail again")
        with pytest.raises(ProviderError):
            async for _ in dropped:
                pass
    assert len(await store.load("s")) == 4


# --- TTL -------------------------------------------------------------------------------


async def test_ttl_expires_unused_sessions_and_use_slides_it(make_store: StoreFactory) -> None:
    store = make_store(ttl=0.8)
    await store.append("idle", [Message("user", "x")])
    await store.append("used", [Message("user", "y")])
    await asyncio.sleep(0.5)
    assert len(await store.load("used")) == 1  # a read restarts the clock
    await asyncio.sleep(0.5)  # 1.0 s after the write, 0.5 s after the read
    assert len(await store.load("used")) == 1
    assert await store.load("idle") == []
    assert [i.session_id for i in await store.list_sessions()] == ["used"]
    await store.append("used", [Message("user", "z")])  # a write restarts it too
    await asyncio.sleep(0.5)
    assert len(await store.load("used")) == 2
    await asyncio.sleep(1.2)
    assert await store.load("used") == []
    assert await store.list_sessions() == []


def test_ttl_is_validated(make_store: StoreFactory) -> None:
    with pytest.raises(ConfigurationError):
        make_store(ttl="soon")
    with pytest.raises(ConfigurationError):
        make_store(ttl=-1)


# --- locks -----------------------------------------------------------------------------


async def test_lock_excludes_and_times_out_with_session_busy(make_store: StoreFactory) -> None:
    store = make_store()
    other = make_store()
    contenders = (
        [store] if other is store or type(store).__name__ == "MemoryStore" else [store, other]
    )
    async with store.lock("L", timeout=1):
        for contender in contenders:
            with pytest.raises(SessionBusy) as caught:
                async with contender.lock("L", timeout=0.2):
                    pytest.fail("two holders of one session lock")
            assert caught.value.session_id == "L"
            assert "lock_timeout" in str(caught.value)
        async with store.lock("another session", timeout=1):
            pass  # other sessions are not blocked
    for contender in contenders:
        async with contender.lock("L", timeout=1):
            pass


async def test_lock_waiters_take_turns(make_store: StoreFactory) -> None:
    store = make_store()
    stores = [store, make_store()]
    inside = 0
    most = 0
    order: list[int] = []

    async def worker(i: int) -> None:
        nonlocal inside, most
        async with stores[i % 2].lock("q", timeout=20):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.005)
            order.append(i)
            inside -= 1

    if type(store).__name__ == "MemoryStore":
        stores = [store, store]
    await asyncio.gather(*(worker(i) for i in range(12)))
    assert most == 1
    assert sorted(order) == list(range(12))


async def test_a_failed_body_releases_the_lock(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(RuntimeError):
        async with store.lock("r", timeout=1):
            raise RuntimeError("boom")
    async with store.lock("r", timeout=0.5):
        pass


# --- two event loops -------------------------------------------------------------------


async def test_the_store_works_from_the_sync_facade_and_the_caller_loop(
    make_store: StoreFactory,
) -> None:
    """The sync facade runs on its own background loop; the store must serve both."""
    store = make_store()
    pipe = Pipeline(ProviderMiddleware(echo_provider()), state_store=store)
    first = await asyncio.to_thread(pipe.sync.execute_with_context, "two", "user", "from sync")
    second = await pipe.execute_with_context("two", "user", "from async")
    third = await asyncio.to_thread(pipe.sync.execute_with_context, "two", "user", "sync again")
    assert [r.text.split(" ")[1] for r in (first, second, third)] == ["from", "from", "sync"]
    assert assert_turns_paired(await store.load("two")) == ["from sync", "from async", "sync again"]
    assert len(third.messages) == 6
    await pipe.shutdown()
