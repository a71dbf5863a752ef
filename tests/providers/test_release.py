"""Breaking, cancelling, stopping or closing a stream releases its connection within
100 ms, as the server sees it; many concurrent streams and several event loops work."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from pk_notebook import Pipeline, ProviderMiddleware, StreamStatus
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.testing import FakeProviderServer, Script

pytestmark = pytest.mark.usefixtures("each_transport")

RELEASE_BOUND = 0.1
SLOW = Script(["tok "] * 200, pace=0.05)


async def _break(stream: Any) -> None:
    async for chunk in stream:
        if chunk.index == 1:
            break


async def _aclose(stream: Any) -> None:
    await stream.next()
    await stream.aclose()


async def _stop(stream: Any) -> None:
    await stream.next()
    stream.stop()
    async for _ in stream:
        pass
    assert stream.status is StreamStatus.STOPPED


async def _cancel(stream: Any) -> None:
    async def consume() -> None:
        async for _ in stream:
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(_break, id="break"),
        pytest.param(_aclose, id="aclose"),
        pytest.param(_stop, id="stop"),
        pytest.param(_cancel, id="cancel"),
    ],
)
@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(OpenAIProvider, id="openai"),
        pytest.param(AnthropicProvider, id="anthropic"),
        pytest.param(GeminiProvider, id="gemini"),
    ],
)
async def test_release_within_100ms(fake_server: FakeProviderServer, cls: type, how: Any) -> None:
    fake_server.default = SLOW
    pipe = Pipeline(ProviderMiddleware(cls("m", base_url=fake_server.base_url)))
    stream = await pipe.execute_stream("user", "hi")
    await how(stream)
    released = time.monotonic()
    record = fake_server.requests[-1]
    assert await record.until_ended(2)
    assert record.disconnected and not record.completed
    assert record.disconnected_at - released < RELEASE_BOUND
    assert stream.result.status is StreamStatus.STOPPED and stream.result.text
    await pipe.shutdown()


async def test_provider_used_without_a_pipeline_closes_on_aclose(
    fake_server: FakeProviderServer,
) -> None:
    from pk_notebook import ProviderConfig, Request
    from pk_notebook.runtime.types import Message

    fake_server.default = SLOW
    provider = OpenAIProvider("m", base_url=fake_server.base_url)
    events = provider.stream(Request((Message("user", "hi"),), ProviderConfig()))
    async for event in events:
        if getattr(event, "text", ""):
            break
    await events.aclose()  # type: ignore[attr-defined]
    closed = time.monotonic()
    record = fake_server.requests[-1]
    assert await record.until_ended(2)
    assert record.disconnected_at - closed < RELEASE_BOUND
    await provider.aclose()


@pytest.mark.slow
async def test_1000_concurrent_paced_streams(
    fake_server: FakeProviderServer, each_transport: str
) -> None:
    fake_server.default = Script(["a ", "b ", "c ", "d ", "e"], pace=0.05)
    provider = OpenAIProvider("m", base_url=fake_server.base_url)
    pipe = Pipeline(ProviderMiddleware(provider), idle_timeout=30)
    results = await asyncio.wait_for(
        asyncio.gather(*(pipe.execute("user", f"q{i}") for i in range(1000))), 60
    )
    await pipe.shutdown()
    assert all(r.text == "a b c d e" and r.status is StreamStatus.FINISHED for r in results)
    assert len(fake_server.requests) == 1000
    # all at once: each stream had its own connection, and shutdown closed them all
    assert fake_server.peak_connections == 1000
    deadline = time.monotonic() + 5
    # the count lives on the server's own thread and loop: poll it
    while fake_server.open_connections and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert fake_server.open_connections == 0


def test_one_provider_from_two_event_loops(fake_server: FakeProviderServer) -> None:
    """The sync facade runs calls on its own loop: a provider shared with another loop works."""
    provider = OpenAIProvider("m", base_url=fake_server.base_url)
    pipe = Pipeline(ProviderMiddleware(provider))
    texts: list[str] = []

    async def call() -> None:
        texts.append((await pipe.execute("user", "hi")).text)
        await provider.aclose()  # this loop's pool; the loop is about to close

    asyncio.run(call())
    thread = threading.Thread(target=lambda: asyncio.run(call()))
    thread.start()
    thread.join(10)
    texts.append(pipe.sync.execute("user", "hi").text)  # the facade's background loop
    asyncio.run(call())  # also closes the facade loop's pool, over there
    assert texts == ["Hello from the fake provider server."] * 4
    time.sleep(0.1)
