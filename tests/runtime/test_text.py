"""Line splitting and throttling helpers never lose text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pk_notebook import Pipeline, ProviderMiddleware, Throttle, coalesce, iter_lines
from pk_notebook.providers import MockProvider, Scenario


async def pieces(items: list[str], delay: float = 0.0) -> AsyncIterator[str]:
    for item in items:
        if delay:
            await asyncio.sleep(delay)
        yield item


async def test_iter_lines_yields_complete_lines_then_the_remainder() -> None:
    lines = [line async for line in iter_lines(pieces(["1. app", "le\n2. pe", "ar\n\n3. fig"]))]
    assert lines == ["1. apple", "2. pear", "", "3. fig"]


async def test_iter_lines_works_on_a_real_stream() -> None:
    pipe = Pipeline(ProviderMiddleware(MockProvider.demo(chunk_delay=0, first_chunk_delay=0)))
    stream = await pipe.execute_stream("user", "list 5 plants for a balcony")
    items = [line async for line in iter_lines(stream)]
    assert items == ["1. Tomatoes", "2. Basil", "3. Mint", "4. Chillies", "5. Lettuce"]


async def test_coalesce_batches_for_a_slow_consumer_without_dropping_text() -> None:
    words = [f"w{i} " for i in range(200)]
    batches = []
    async for batch in coalesce(pieces(words, delay=0.001), interval=0.02):
        batches.append(batch)
        await asyncio.sleep(0.01)  # a slow UI
    assert "".join(batches) == "".join(words)
    assert 1 < len(batches) < len(words) / 3
    assert batches[0] == "w0 "  # the first words are shown at once


async def test_coalesce_stops_the_stream_when_the_consumer_leaves() -> None:
    provider = MockProvider([Scenario(" ".join(["w"] * 300))], chunk_delay=0.005)
    stream = await Pipeline(ProviderMiddleware(provider)).execute_stream("user", "x")
    async for _ in coalesce(stream, interval=0.01):
        break
    await asyncio.wait_for(stream.wait_closed(), 1)
    assert provider.calls[-1].outcome == "closed"


async def test_throttle_flushes_first_at_once_then_at_most_once_per_interval() -> None:
    shown: list[str] = []
    throttle = Throttle(shown.append, interval=0.05)
    for i in range(100):
        throttle.push(f"{i},")
        await asyncio.sleep(0.002)
    final = throttle.close()
    expected = "".join(f"{i}," for i in range(100))
    assert shown[0] == "0,"
    assert shown[-1] == final == expected
    assert len(shown) <= 0.2 / 0.05 + 3 + 2  # ~0.2 s of pushes at 20 Hz, plus first and last


async def test_throttle_trailing_flush_shows_text_after_the_pushes_stop() -> None:
    shown: list[str] = []
    throttle = Throttle(shown.append, interval=0.05)
    throttle.push("a")
    throttle.push("b")
    await asyncio.sleep(0.1)
    assert shown == ["a", "ab"]
    throttle.close()
    assert shown == ["a", "ab"]  # nothing new: no extra flush
