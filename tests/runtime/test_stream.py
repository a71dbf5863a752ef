"""Streams: iteration, the end of a stream, stopping, cancellation and time limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from pk_notebook import (
    Delta,
    Finish,
    Pipeline,
    ProviderConfig,
    ProviderMiddleware,
    Request,
    RetryPolicy,
    StreamStatus,
    StreamTimeout,
    TruncatedStream,
    Usage,
    UsageError,
)
from pk_notebook.providers import Fault, MockProvider, Scenario, split_tokens

LONG = " ".join(f"word{i}" for i in range(400))


def make_pipe(provider: MockProvider, **options: object) -> Pipeline:
    return Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), **options)  # type: ignore[arg-type]


class ScriptedProvider:
    """A provider that plays a fixed list of events with pauses: for shapes the mock cannot make."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, events: list[object]) -> None:
        self.events = events
        self.closed_at: float | None = None

    async def stream(self, request: Request) -> AsyncIterator[Delta | Finish]:
        try:
            for event in self.events:
                if isinstance(event, float):
                    await asyncio.sleep(event)
                else:
                    yield event  # type: ignore[misc]
        finally:
            self.closed_at = time.monotonic()

    async def aclose(self) -> None:
        return None


async def test_the_readme_snippet_runs_and_reports_the_result() -> None:
    pipe = Pipeline(
        ProviderMiddleware(
            MockProvider.demo(chunk_delay=0, first_chunk_delay=0),
            config=ProviderConfig(max_tokens=1500, temperature=0.7),
        )
    )
    stream = await pipe.execute_stream("user", "Write a story")
    seen = []
    async with stream:
        async for chunk in stream:
            seen.append(chunk.content)
    assert "".join(seen) == stream.result.text
    assert stream.result.text.startswith("The lighthouse keeper")
    assert stream.result.finish_reason == "stop"
    assert stream.result.usage is not None and stream.result.usage.output_tokens == len(seen) - 1
    assert stream.result.status is StreamStatus.FINISHED
    await pipe.shutdown()


async def test_next_returns_chunks_then_a_final_chunk_then_stop_async_iteration() -> None:
    pipe = make_pipe(MockProvider([Scenario("one two three")]))
    stream = await pipe.execute_stream("user", "hi")
    contents = []
    while True:
        try:
            chunk = await stream.next()
        except StopAsyncIteration:
            break
        contents.append(chunk)
    assert [c.content for c in contents[:-1]] == ["one", " two", " three"]
    assert [c.index for c in contents] == [0, 1, 2, 3]
    final = contents[-1]
    assert final.final and final.content == "" and final.finish_reason == "stop"
    assert final.usage == Usage(input_tokens=1, output_tokens=3)
    # Reading past the end keeps saying "the end", and the result stays.
    with pytest.raises(StopAsyncIteration):
        await stream.next()
    assert stream.result.text == "one two three"


async def test_text_accumulates_while_streaming() -> None:
    pipe = make_pipe(MockProvider([Scenario("alpha beta gamma delta")]))
    stream = await pipe.execute_stream("user", "x")
    snapshots = []
    async for chunk in stream:
        if not chunk.final:
            snapshots.append(stream.text)
    assert snapshots == ["alpha", "alpha beta", "alpha beta gamma", "alpha beta gamma delta"]


async def test_result_before_the_end_is_a_usage_error() -> None:
    pipe = make_pipe(MockProvider([Scenario("a b c")]))
    stream = await pipe.execute_stream("user", "x")
    with pytest.raises(UsageError, match="has not ended"):
        _ = stream.result
    await stream.aclose()
    assert stream.result.status is StreamStatus.STOPPED


async def test_a_stream_without_the_end_marker_is_truncated_not_complete() -> None:
    provider = MockProvider([Scenario("one two three four", fault=Fault("truncate", after=2))])
    stream = await make_pipe(provider).execute_stream("user", "x")
    got = []
    with pytest.raises(TruncatedStream) as info:
        async for chunk in stream:
            got.append(chunk.content)
    assert "".join(got) == "one two"
    assert info.value.partial_text == "one two"
    assert stream.status is StreamStatus.TRUNCATED
    assert not stream.result.complete
    with pytest.raises(TruncatedStream):
        stream.result.raise_for_status()


async def test_collect_raises_for_a_truncated_stream_with_the_partial_text() -> None:
    provider = MockProvider([Scenario("one two three", fault=Fault("truncate", after=1))])
    stream = await make_pipe(provider).execute_stream("user", "x")
    with pytest.raises(TruncatedStream) as info:
        await stream.collect()
    assert info.value.partial_text == "one"


@pytest.mark.parametrize("how", ["aclose", "break", "cancel", "stop", "async-with"])
async def test_stopping_releases_the_provider_within_100_ms_and_keeps_the_text(how: str) -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    pipe = make_pipe(provider)
    stream = await pipe.execute_stream("user", "x")
    released_after: float

    if how == "aclose":
        await stream.next()
        await stream.next()
        t0 = time.monotonic()
        await stream.aclose()
    elif how == "break":
        async for chunk in stream:
            if chunk.index == 2:
                t0 = time.monotonic()
                break
        await asyncio.sleep(0)  # the dropped iterator closes the stream on the next loop turn
    elif how == "async-with":
        async with stream:
            async for chunk in stream:
                if chunk.index == 2:
                    t0 = time.monotonic()
                    break
    elif how == "stop":

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        stream.stop()
        await task  # ends normally: a stop is not an error
    else:

        async def consume() -> None:
            async for _ in stream:
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await asyncio.wait_for(stream.wait_closed(), 1)
    call = provider.calls[-1]
    assert call.ended is not None
    released_after = call.ended - t0
    assert released_after < 0.1, f"provider released after {released_after * 1000:.0f} ms"
    assert call.outcome == "closed"
    assert stream.status is StreamStatus.STOPPED
    assert stream.text and LONG.startswith(stream.text)
    assert stream.result.text == stream.text


async def test_stop_from_another_thread_ends_the_stream() -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    stream = await make_pipe(provider).execute_stream("user", "x")
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, lambda: loop.run_in_executor(None, stream.stop))
    chunks = [c async for c in stream]
    assert stream.status is StreamStatus.STOPPED
    assert 0 < len(chunks) < len(split_tokens(LONG))


async def test_stop_while_nobody_reads_closes_the_provider_at_once() -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    stream = await make_pipe(provider).execute_stream("user", "x")
    await stream.next()
    stream.stop()
    await asyncio.wait_for(stream.wait_closed(), 0.5)
    assert provider.calls[-1].outcome == "closed"
    assert [c async for c in stream] == []  # nothing more to read, no error


async def test_collect_of_a_stopped_stream_raises_cancelled_with_partial_text() -> None:
    from pk_notebook import StreamCancelled

    provider = MockProvider([Scenario(LONG)], chunk_delay=0.01)
    stream = await make_pipe(provider).execute_stream("user", "x")
    asyncio.get_running_loop().call_later(0.05, stream.stop)
    with pytest.raises(StreamCancelled) as info:
        await stream.collect()
    assert info.value.partial_text == stream.text != ""


async def test_idle_timeout_ends_a_stalled_stream_with_the_partial_text() -> None:
    provider = MockProvider([Scenario("one two three four", fault=Fault("stall", after=2))])
    stream = await make_pipe(provider, idle_timeout=0.2).execute_stream("user", "x")
    t0 = time.monotonic()
    with pytest.raises(StreamTimeout) as info:
        async for _ in stream:
            pass
    waited = time.monotonic() - t0
    assert info.value.kind == "idle"
    assert info.value.partial_text == "one two"
    assert stream.status is StreamStatus.TIMED_OUT
    assert 0.15 < waited < 2.0
    assert provider.calls[-1].ended is not None  # the stalled provider was closed


async def test_keep_alives_do_not_count_as_content_for_the_idle_timeout() -> None:
    # A server that sends only keep-alive comments must not hold the stream forever:
    # providers turn comments into empty deltas (or nothing), which the idle clock ignores.
    events: list[object] = [Delta("hello")] + [0.05, Delta("")] * 40 + [Finish("stop")]
    provider = ScriptedProvider(events)
    pipe = Pipeline(ProviderMiddleware(provider), idle_timeout=0.3)  # type: ignore[arg-type]
    stream = await pipe.execute_stream("user", "x")
    with pytest.raises(StreamTimeout) as info:
        await stream.collect()
    assert info.value.kind == "idle" and info.value.partial_text == "hello"


async def test_activity_deltas_reset_the_idle_clock() -> None:
    # Reasoning-only or tool-call fragments are the model working: not idle.
    events: list[object] = (
        [Delta("a")] + [0.05, Delta(activity=True)] * 10 + [Delta("b"), Finish("stop")]
    )
    pipe = Pipeline(ProviderMiddleware(ScriptedProvider(events)), idle_timeout=0.2)  # type: ignore[arg-type]
    result = await pipe.execute("user", "x")
    assert result.text == "ab"


async def test_slow_consumer_time_does_not_count_as_provider_idleness() -> None:
    provider = MockProvider([Scenario("one two three")])
    stream = await make_pipe(provider, idle_timeout=0.1).execute_stream("user", "x")
    got = []
    async for chunk in stream:
        got.append(chunk.content)
        await asyncio.sleep(0.25)  # the consumer is slow; the provider is not idle
    assert stream.status is StreamStatus.FINISHED


async def test_total_timeout_ends_a_slow_stream() -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.02)
    stream = await make_pipe(provider, timeout=0.3).execute_stream("user", "x")
    with pytest.raises(StreamTimeout) as info:
        async for _ in stream:
            pass
    assert info.value.kind == "total"
    assert info.value.partial_text and LONG.startswith(info.value.partial_text)
    assert provider.calls[-1].outcome == "closed"


async def test_per_call_timeouts_override_the_pipeline_defaults() -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.02)
    pipe = make_pipe(provider, timeout=60)
    stream = await pipe.execute_stream("user", "x", timeout=0.2)
    with pytest.raises(StreamTimeout):
        await stream.collect()


async def test_first_chunk_wait_counts_against_the_idle_timeout() -> None:
    provider = MockProvider([Scenario("late")], first_chunk_delay=5)
    pipe = make_pipe(provider, idle_timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(StreamTimeout):
        await pipe.execute_stream("user", "x")
    assert time.monotonic() - t0 < 2


async def test_an_outer_asyncio_timeout_is_not_mistaken_for_ours() -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.02)
    stream = await make_pipe(provider, idle_timeout=10).execute_stream("user", "x")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stream.collect(), 0.1)
    assert stream.status is StreamStatus.STOPPED
    assert stream.text


async def test_errors_mid_stream_carry_the_partial_text() -> None:
    from pk_notebook import ProviderError

    provider = MockProvider([Scenario("one two three four", fault=Fault("error", after=3))])
    stream = await make_pipe(provider).execute_stream("user", "x")
    with pytest.raises(ProviderError) as info:
        async for _ in stream:
            pass
    assert info.value.partial_text == "one two three"
    assert stream.status is StreamStatus.FAILED
    assert stream.result.error is info.value
    # The error is raised once; afterwards the stream just says "ended".
    assert [c async for c in stream] == []


async def test_reasoning_is_kept_apart_from_the_answer() -> None:
    provider = MockProvider([Scenario("42", reasoning="six times seven")])
    result = await make_pipe(provider).execute("user", "x")
    assert result.text == "42"
    assert result.reasoning == "six times seven"


async def test_done_callbacks_run_once_with_the_result() -> None:
    stream = await make_pipe(MockProvider([Scenario("a b")])).execute_stream("user", "x")
    seen = []
    stream.add_done_callback(seen.append)
    await stream.collect()
    stream.add_done_callback(seen.append)  # after the end: called at once
    assert [r.text for r in seen] == ["a b", "a b"]


async def test_repr_is_short_and_shows_the_state() -> None:
    stream = await make_pipe(MockProvider([Scenario("a b")])).execute_stream("user", "x")
    assert repr(stream).startswith("<Stream status=streaming")
    await stream.collect()
    assert "finished" in repr(stream)
