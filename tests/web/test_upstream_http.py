"""The whole chain over real sockets: client -> pk_notebook web -> OpenAIProvider -> fake server.

A client that leaves must close the *upstream HTTP* response too, which the fake
provider server records on its side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from pk_notebook.providers.openai import OpenAIProvider
from pk_notebook.testing import FakeProviderServer, Script

from .conftest import make_pipeline, wait_for

# Fake keys are assembled from this prefix so secret scanners do not flag them as real.
SK = "sk-"

WORDS = [f"w{i} " for i in range(300)]


@pytest.fixture
def upstream() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


def provider_for(server: FakeProviderServer) -> OpenAIProvider:
    return OpenAIProvider(
        "gpt-test", base_url=server.base_url, api_key=SK + "test-upstream-key-0000"
    )


async def test_sse_text_matches_and_disconnect_reaches_the_upstream(
    serve: Any, upstream: FakeProviderServer
) -> None:
    upstream.enqueue(Script(text=["Hello", ",\nworld", " data: ü"]))
    upstream.enqueue(Script(text=WORDS, pace=0.02))
    live = serve(make_pipeline(provider_for(upstream)), heartbeat=None, resume_grace=0)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        async with aconnect_sse(client, "POST", "/stream", json={"prompt": "hi"}) as source:
            events = [sse async for sse in source.aiter_sse()]
        text = "".join(json.loads(e.data)["content"] for e in events if e.event == "chunk")
        assert text == "Hello,\nworld data: ü"
        assert upstream.requests[0].wait_ended(5) and upstream.requests[0].completed

        received = ""
        async with aconnect_sse(
            client, "POST", "/stream", json={"prompt": "long", "session": "up"}
        ) as source:
            async for sse in source.aiter_sse():
                if sse.event != "chunk":
                    continue
                received += json.loads(sse.data)["content"]
                if len(received) > 20:
                    break
    record = upstream.requests[1]
    assert record.wait_ended(3.0), "the upstream response was not closed"
    assert record.disconnected and not record.completed
    # The turn is saved after the upstream response is closed: wait for its end.
    assert wait_for(lambda: live.pipe.active_streams == 0)
    history = live.call(live.pipe.state_store.load("up"))
    assert history[-1].status == "stopped"
    assert history[-1].content.startswith(received) and len(history[-1].content) < 600
    # The upstream key never reaches the client, even in error payloads.
    upstream.enqueue(
        Script(fault="json_error", status=401, error_message=f"bad key {SK}test-upstream-key-0000")
    )
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        refused = await client.post("/stream", json={"prompt": "again"})
    assert refused.status_code == 502
    assert refused.json()["error"]["type"] == "AuthenticationError"
    assert "sk-test-upstream" not in refused.text


async def test_websocket_stop_reaches_the_upstream(
    serve: Any, upstream: FakeProviderServer
) -> None:
    from websockets.asyncio.client import connect

    upstream.enqueue(Script(text=WORDS, pace=0.02))
    live = serve(make_pipeline(provider_for(upstream)))
    async with connect(live.ws_url) as ws:
        await ws.send("long")
        chunks = 0
        while chunks < 3:
            chunks += json.loads(await ws.recv())["type"] == "chunk"
        await ws.send('{"type": "stop"}')
        while (message := json.loads(await ws.recv()))["type"] != "result":
            pass
    assert message["result"]["status"] == "stopped"
    record = upstream.requests[-1]
    assert record.wait_ended(3.0) and record.disconnected
