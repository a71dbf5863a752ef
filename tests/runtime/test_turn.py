"""One turn, one object: ``pipe.stream()`` is stoppable in every phase and always ends.

Each phase of a turn (built, waiting for the session lock, loading history, waiting
for the first chunk, streaming, saving) is exercised with a stop, a cancellation, or
a failure, and every test checks what a user relies on afterwards: a result is set,
the session lock is free, ``active_streams`` is back to zero, ``shutdown()`` returns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from pk_notebook import (
    ConfigurationError,
    Delta,
    Finish,
    Message,
    Pipeline,
    ProtocolError,
    ProviderMiddleware,
    Request,
    RetryPolicy,
    StreamStatus,
    UsageError,
)
from pk_notebook.providers import MockProvider
from pk_notebook.runtime.memory import MemoryStore

LONG = " ".join(f"word{i}" for i in range(200))


class RecordingProvider:
    """Plays a list of events (floats are pauses) and records calls and closes."""

    name = "recording"
    model = "rec-1"

    def __init__(self, events: Sequence[object]) -> None:
        self.events = list(events)
        self.calls = 0
        self.closed = 0

    async def stream(self, request: Request) -> AsyncIterator[Delta | Finish]:
        self.calls += 1
        try:
            for event in self.events:
                if isinstance(event, float):
                    await asyncio.sleep(event)
                else:
                    yield event  # type: ignore[misc]
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        return None


class SlowStore(MemoryStore):
    """A memory store whose reads or writes can be slowed down or made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.load_delay = 0.0
        self.append_delay = 0.0
        self.append_error: Exception | None = None
        self.release_error: Exception | None = None
        self.appended = 0
        self.save_started = asyncio.Event()

    async def load(self, session_id: str) -> list[Message]:
        await asyncio.sleep(self.load_delay)
        return await super().load(session_id)

    async def append(self, session_id: str, messages: Sequence[Message]) -> None:
        self.save_started.set()
        await asyncio.sleep(self.append_delay)
        if self.append_error is not None:
            raise self.append_error
        self.appended += 1
        await super().append(session_id, messages)

    def lock(
        self, session_id: str, timeout: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        inner = super().lock(session_id, timeout)
        store = self

        class Guard:
            async def __aenter__(self) -> None:
                await inner.__aenter__()

            async def __aexit__(self, *exc: object) -> None:
                await inner.__aexit__(None, None, None)
                if store.release_error is not None:
                    raise store.release_error

        return Guard()


def pipe_for(provider: Any, store: Any = None, **options: Any) -> Pipeline:
    return Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)),
        state_store=store,
        **options,
    )


async def lock_is_free(store: Any, session: str) -> bool:
    try:
        async with store.lock(session, timeout=0.5):
            return True
    except Exception:
        return False


def text_events(*pieces: str) -> list[object]:
    return [*(Delta(text=p) for p in pieces), Finish("stop")]


# --- the object exists before any I/O ----------------------------------------------


async def test_stream_returns_at_once_and_sends_nothing_until_opened() -> None:
    provider = RecordingProvider(text_events("Hello", " world"))
    pipe = pipe_for(provider)
    stream = pipe.stream("hi", session="s1")
    assert provider.calls == 0 and not stream.opened and pipe.active_streams == 0
    async with stream:
        assert provider.calls == 1
        text = "".join([c.content async for c in stream])
    assert text == "Hello world"
    assert stream.result.status is StreamStatus.FINISHED
    assert [m.content for m in await pipe.state_store.load("s1")] == ["hi", "Hello world"]
    await pipe.shutdown()


async def test_stop_before_opening_never_calls_the_provider_and_raises_nothing() -> None:
    provider = RecordingProvider(text_events("Hello"))
    pipe = pipe_for(provider)
    stream = pipe.stream("hi", session="s1")
    stream.stop()
    async with stream:
        chunks = [c async for c in stream]
    assert chunks == []
    assert provider.calls == 0
    assert stream.result.status is StreamStatus.STOPPED and stream.result.text == ""
    assert await pipe.state_store.load("s1") == []  # no question without an answer
    assert pipe.active_streams == 0
    await pipe.shutdown()


async def test_a_closed_unopened_stream_ends_stopped() -> None:
    pipe = pipe_for(RecordingProvider(text_events("x")))
    stream = pipe.stream("hi")
    await stream.aclose()
    assert stream.result.status is StreamStatus.STOPPED
    await pipe.shutdown()


def test_bad_options_raise_when_the_stream_is_built() -> None:
    pipe = pipe_for(RecordingProvider(text_events("x")))
    with pytest.raises(ConfigurationError, match="timeout"):
        pipe.stream("hi", timeout=-1)
    with pytest.raises(ConfigurationError, match="session"):
        pipe.stream("hi", session="s", history=[Message("user", "earlier")])


# --- stop in every phase -----------------------------------------------------------


async def test_stop_while_waiting_for_the_session_lock() -> None:
    provider = RecordingProvider(text_events("answer"))
    store = MemoryStore()
    pipe = pipe_for(provider, store)
    async with store.lock("s1", timeout=1):  # another turn holds the session
        stream = pipe.stream("hi", session="s1")
        opening = asyncio.ensure_future(stream.open())
        await asyncio.sleep(0.05)
        assert not opening.done()
        started = time.monotonic()
        stream.stop()
        await asyncio.wait_for(opening, 1)
        assert time.monotonic() - started < 0.5
    assert stream.result.status is StreamStatus.STOPPED
    assert provider.calls == 0
    assert await lock_is_free(store, "s1")
    assert pipe.active_streams == 0
    await pipe.shutdown()


async def test_stop_while_loading_history_releases_the_lock() -> None:
    provider = RecordingProvider(text_events("answer"))
    store = SlowStore()
    store.load_delay = 5.0
    pipe = pipe_for(provider, store)
    stream = pipe.stream("hi", session="s1")
    opening = asyncio.ensure_future(stream.open())
    await asyncio.sleep(0.05)
    stream.stop()
    await asyncio.wait_for(opening, 1)
    assert stream.result.status is StreamStatus.STOPPED and provider.calls == 0
    store.load_delay = 0
    assert await lock_is_free(store, "s1")
    await pipe.shutdown()


async def test_stop_before_the_first_chunk_closes_the_provider_call() -> None:
    provider = RecordingProvider([10.0, *text_events("late")])
    pipe = pipe_for(provider)
    stream = pipe.stream("hi", session="s1")
    opening = asyncio.ensure_future(stream.open())
    await asyncio.sleep(0.05)
    assert provider.calls == 1 and provider.closed == 0
    threading.Thread(target=stream.stop).start()  # from another thread, as a widget does
    await asyncio.wait_for(opening, 1)
    assert provider.closed == 1
    assert stream.result.status is StreamStatus.STOPPED and stream.result.text == ""
    assert await pipe.state_store.load("s1") == []
    await pipe.shutdown()


async def test_stop_while_streaming_keeps_the_text_and_saves_it_marked() -> None:
    pipe = pipe_for(MockProvider.scripted(LONG, chunk_delay=0.01))
    async with pipe.stream("hi", session="s1") as stream:
        async for _chunk in stream:
            if stream.chunk_count == 3:
                stream.stop()
    assert stream.result.status is StreamStatus.STOPPED
    saved = await pipe.state_store.load("s1")
    assert saved[-1].status == "stopped" and saved[-1].content == stream.text != ""
    await pipe.shutdown()


async def test_stop_during_a_slow_save_lets_the_save_finish() -> None:
    store = SlowStore()
    store.append_delay = 0.3
    pipe = pipe_for(RecordingProvider(text_events("done")), store)
    stream = pipe.stream("hi", session="s1")
    consumer = asyncio.ensure_future(stream.collect())
    await asyncio.wait_for(store.save_started.wait(), 2)
    stream.stop()  # the answer is complete: stopping now must not lose it
    result = await asyncio.wait_for(consumer, 2)
    assert result.status is StreamStatus.FINISHED
    assert store.appended == 1
    assert await lock_is_free(store, "s1")
    await pipe.shutdown()


async def test_a_cancel_during_a_slow_save_still_ends_the_stream() -> None:
    store = SlowStore()
    store.append_delay = 0.3
    pipe = pipe_for(RecordingProvider(text_events("done")), store)
    stream = pipe.stream("hi", session="s1")
    consumer = asyncio.ensure_future(stream.collect())
    await asyncio.wait_for(store.save_started.wait(), 2)
    consumer.cancel()  # an Interrupt or an outer timeout lands during the save
    with pytest.raises(asyncio.CancelledError):
        await consumer
    result = await asyncio.wait_for(stream.wait_closed(), 2)
    assert result.status is StreamStatus.FINISHED and store.appended == 1
    assert await lock_is_free(store, "s1")
    assert pipe.active_streams == 0
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_a_foreign_cancel_while_waiting_for_the_lock_goes_on_to_the_caller() -> None:
    store = MemoryStore()
    pipe = pipe_for(RecordingProvider(text_events("x")), store)
    async with store.lock("s1", timeout=1):
        stream = pipe.stream("hi", session="s1")
        task = asyncio.ensure_future(stream.open())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert stream.result.status is StreamStatus.STOPPED
    assert await lock_is_free(store, "s1")
    await pipe.shutdown()


# --- a stream always ends ----------------------------------------------------------


@pytest.mark.parametrize(
    "piece",
    [pytest.param(42, id="number"), pytest.param({"type": "text"}, id="object"),
     pytest.param(["a", "b"], id="list")],
)
async def test_a_non_string_text_piece_is_a_protocol_error_and_the_turn_ends(piece: object) -> None:
    provider = RecordingProvider([Delta(text="Hello "), Delta(text=piece), Finish("stop")])  # type: ignore[arg-type]
    store = MemoryStore()
    pipe = pipe_for(provider, store)
    with pytest.raises(ProtocolError) as caught:
        async with pipe.stream("hi", session="s1") as stream:
            async for _ in stream:
                pass
    assert caught.value.partial_text == "Hello "
    assert caught.value.raw == repr(piece)
    assert stream.result.status is StreamStatus.FAILED and stream.result.text == "Hello "
    assert provider.closed == 1
    assert await lock_is_free(store, "s1")
    assert pipe.active_streams == 0
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_a_non_string_piece_from_a_middleware_is_caught_too() -> None:
    async def breaks_text(request: Request, call_next: Any) -> AsyncIterator[Any]:
        async for event in call_next(request):
            if isinstance(event, Delta):
                event.reasoning = 7  # type: ignore[assignment]
            yield event

    pipe = Pipeline(breaks_text, ProviderMiddleware(RecordingProvider(text_events("a"))))
    with pytest.raises(ProtocolError, match="reasoning piece of type int"):
        await pipe.execute("user", "hi")
    assert pipe.active_streams == 0
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_an_event_of_the_wrong_type_is_a_protocol_error() -> None:
    async def yields_junk(request: Request, call_next: Any) -> AsyncIterator[Any]:
        async for event in call_next(request):
            yield "text instead of a Delta"
            yield event

    pipe = Pipeline(yields_junk, ProviderMiddleware(RecordingProvider(text_events("a"))))
    stream = pipe.stream("hi", session="s")
    with pytest.raises(ProtocolError, match="yielded str"):
        await stream.open()
    assert stream.result.status is StreamStatus.FAILED
    assert await lock_is_free(pipe.state_store, "s")
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_a_raising_middleware_ends_the_turn() -> None:
    async def explodes(request: Request, call_next: Any) -> AsyncIterator[Any]:
        count = 0
        async for event in call_next(request):
            count += 1
            if count == 2:
                raise RuntimeError("middleware bug")
            yield event

    pipe = Pipeline(explodes, ProviderMiddleware(RecordingProvider(text_events("a", "b", "c"))))
    with pytest.raises(RuntimeError, match="middleware bug"):
        async with pipe.stream("hi", session="s") as stream:
            async for _ in stream:
                pass
    assert stream.result.status is StreamStatus.FAILED and stream.result.text == "a"
    assert await lock_is_free(pipe.state_store, "s")
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_a_provider_whose_close_raises_does_not_block_the_end() -> None:
    class BadClose(RecordingProvider):
        async def stream(self, request: Request) -> AsyncIterator[Delta | Finish]:
            try:
                yield Delta(text="partial")
                await asyncio.sleep(10)
                yield Finish("stop")
            finally:
                raise OSError("close failed")

    pipe = pipe_for(BadClose([]))
    async with pipe.stream("hi", session="s") as stream:
        async for _ in stream:
            break
    assert stream.result.status is StreamStatus.STOPPED and stream.result.text == "partial"
    assert await lock_is_free(pipe.state_store, "s")
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_a_failing_store_is_a_warning_not_a_hang() -> None:
    store = SlowStore()
    store.append_error = OSError("disk full")
    store.release_error = OSError("store gone")
    pipe = pipe_for(RecordingProvider(text_events("kept")), store)
    result = await pipe.execute_with_context("s", "user", "hi")
    assert result.text == "kept"
    assert any("disk full" in w for w in result.warnings)
    assert any("store gone" in w for w in result.warnings)
    assert pipe.active_streams == 0
    await asyncio.wait_for(pipe.shutdown(), 2)


async def test_shutdown_returns_with_a_turn_waiting_for_a_lock() -> None:
    store = MemoryStore()
    pipe = pipe_for(RecordingProvider(text_events("x")), store, shutdown_grace=0.1)
    async with store.lock("s1", timeout=1):
        stream = pipe.stream("hi", session="s1")
        task = asyncio.ensure_future(stream.open())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(pipe.shutdown(), 2)
        await asyncio.wait_for(task, 1)
    assert stream.result.status is StreamStatus.STOPPED


async def test_a_closed_pipeline_refuses_new_streams_with_a_clear_error() -> None:
    pipe = pipe_for(RecordingProvider(text_events("x")))
    stream = pipe.stream("hi")
    await pipe.shutdown()
    with pytest.raises(UsageError, match="shut down"):
        await stream.open()
    with pytest.raises(UsageError, match="shut down"):
        pipe.stream("again")


# --- the shorthand and the sync form ----------------------------------------------


async def test_pipeline_of_a_provider_is_the_one_provider_chain() -> None:
    pipe = Pipeline(RecordingProvider(text_events("short")))
    assert isinstance(pipe.middleware[0], ProviderMiddleware)
    assert (await pipe.execute("user", "hi")).text == "short"
    await pipe.shutdown()


def test_a_provider_name_string_says_how_to_build_it() -> None:
    with pytest.raises(ConfigurationError, match=r"create_provider\('openai:gpt-4o-mini'\)"):
        Pipeline("openai:gpt-4o-mini")  # type: ignore[arg-type]


def test_the_sync_form_works_the_same() -> None:
    pipe = pipe_for(MockProvider.scripted("one two three"))
    with pipe.sync.stream("hi", session="s") as stream:
        text = "".join(chunk.content for chunk in stream)
    assert text == "one two three"
    assert stream.result.status is StreamStatus.FINISHED
    assert len(pipe.sync.run(pipe.state_store.load("s"))) == 2

    stopped = pipe.sync.stream("hi", session="s")
    stopped.stop()
    with stopped:
        assert list(stopped) == []
    assert stopped.result.status is StreamStatus.STOPPED
    pipe.sync.shutdown()
