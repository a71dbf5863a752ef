"""A broken upstream answer ends its turn on every web surface and frees what it held.

The upstream is a real HTTP server sending, after some text, a chunk whose
``delta.content`` is a number (a broken OpenAI-compatible server). Each surface
must answer with a typed error, free its stream slot and the session lock, and
keep serving: three such answers used to leave the server answering 503 forever.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from websockets.asyncio.client import connect

from pk_notebook.providers.openai import OpenAIProvider
from pk_notebook.testing import FakeProviderServer, Script

from .conftest import make_pipeline, wait_for

BAD_BODY = (
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hello "}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{"content":42}}]}\n\n'
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.fixture
def upstream() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        server.default = Script.recorded(BAD_BODY)
        yield server


def started(upstream: FakeProviderServer, **settings: Any) -> Any:
    provider = OpenAIProvider("gpt-test", base_url=upstream.base_url, api_key="unused-key-000")
    return make_pipeline(provider), {"max_concurrent": 2, "heartbeat": None, **settings}


async def still_serves(live: Any, client: httpx.AsyncClient, upstream: FakeProviderServer) -> None:
    # The handler frees its slot a moment after its response went out.
    assert wait_for(lambda: live.pipe.active_streams == 0 and live.app.state.slots.used == 0)
    health = (await client.get("/healthz")).json()
    assert health["streams"] == 0
    upstream.enqueue(Script("fine again"))
    good = await client.post("/v1/chat/completions", json={
        "model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert good.status_code == 200, good.text
    assert good.json()["choices"][0]["message"]["content"] == "fine again"


async def test_sse_stream(serve: Any, upstream: FakeProviderServer) -> None:
    pipe, settings = started(upstream)
    live = serve(pipe, **settings)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        for _ in range(3):
            async with aconnect_sse(
                client, "POST", "/stream", json={"prompt": "hi", "session": "bad"}
            ) as source:
                events = [sse async for sse in source.aiter_sse()]
            result = json.loads(next(e.data for e in events if e.event == "result"))
            assert result["status"] == "failed"
            assert result["error"]["type"] == "ProtocolError"
            assert result["text"] == "Hello "
        await still_serves(live, client, upstream)
    # the session lock was released each time: the partial turns were saved, in order
    history = live.call(live.pipe.state_store.load("bad"))
    assert [m.status for m in history if m.role == "assistant"] == ["failed"] * 3


async def test_websocket(serve: Any, upstream: FakeProviderServer) -> None:
    pipe, settings = started(upstream)
    live = serve(pipe, **settings)
    async with connect(live.ws_url) as ws:
        for _ in range(3):
            await ws.send(json.dumps({"prompt": "hi", "session": "bad"}))
            while (message := json.loads(await ws.recv()))["type"] != "result":
                pass
            assert message["result"]["status"] == "failed"
            assert message["result"]["error"]["type"] == "ProtocolError"
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        await still_serves(live, client, upstream)


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "json"])
async def test_openai_endpoint(serve: Any, upstream: FakeProviderServer, streaming: bool) -> None:
    pipe, settings = started(upstream)
    live = serve(pipe, **settings)
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": streaming}
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=request)
            if streaming:
                assert response.status_code == 200
                assert '"ProtocolError"' in response.text and "data: [DONE]" in response.text
            else:
                assert response.status_code == 502, response.text
                assert response.json()["error"]["pk_notebook"]["type"] == "ProtocolError"
        await still_serves(live, client, upstream)
