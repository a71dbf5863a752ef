"""/ws over a real uvicorn, driven by the ``websockets`` client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from pk_notebook.providers import Fault, MockProvider

from .conftest import LONG_ANSWER, TRICKY, direct_text, scenario_provider, slow_provider, wait_for


async def until_end(ws: ClientConnection) -> list[dict[str, Any]]:
    """Messages up to and including the prompt's last one (a result or a final error)."""
    messages = []
    while True:
        message = json.loads(await ws.recv())
        messages.append(message)
        if message["type"] == "result" or (message["type"] == "error" and message["final"]):
            return messages


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m["content"] for m in messages if m["type"] == "chunk")


async def test_plain_and_json_prompts_on_one_connection(serve: Any) -> None:
    live = serve(MockProvider.demo(chunk_delay=0, first_chunk_delay=0))
    prompt = "Write a haiku about rain"
    expected = await direct_text(MockProvider.demo(chunk_delay=0, first_chunk_delay=0), prompt)
    async with connect(live.ws_url) as ws:
        await ws.send(prompt)
        first = await until_end(ws)
        await ws.send(json.dumps({"prompt": prompt, "session": "w1", "options": {"max_tokens": 3}}))
        second = await until_end(ws)
        await ws.send(json.dumps({"prompt": "and again", "session": "w1"}))
        third = await until_end(ws)
    start = first[0]
    assert {k: start[k] for k in ("type", "id")} == {"type": "start", "id": 1}
    # Additive fields only: the answer id, the event's seq, the secret to resume it.
    assert set(start) == {"type", "id", "answer_id", "seq", "resume_token"} and start["seq"] == 1
    assert text_of(first) == expected == first[-1]["result"]["text"]
    assert first[-1]["result"]["status"] == "finished"
    assert first[-1]["result"]["usage"]["output_tokens"] > 0
    assert second[-1]["id"] == 2 and second[-1]["result"]["finish_reason"] == "length"
    assert third[-1]["result"]["status"] == "finished"
    history = live.call(live.pipe.state_store.load("w1"))
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]


async def test_any_content_survives(serve: Any) -> None:
    live = serve(scenario_provider(TRICKY))
    async with connect(live.ws_url) as ws:
        await ws.send("x")
        assert text_of(await until_end(ws)) == TRICKY


async def test_stop_mid_stream_keeps_the_partial_answer(serve: Any) -> None:
    live = serve(slow_provider())
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "go", "session": "stop-me"}))
        received = []
        while len([m for m in received if m["type"] == "chunk"]) < 3:
            received.append(json.loads(await ws.recv()))
        await ws.send(json.dumps({"type": "stop"}))
        received += await until_end(ws)
        result = received[-1]["result"]
        # The connection stays usable after a stop.
        await ws.send("short prompt")
        follow_up = await until_end(ws)
    assert result["status"] == "stopped"
    assert result["text"] == text_of(received)
    assert 3 <= result["chunks"] < 100 and LONG_ANSWER.startswith(result["text"])
    assert follow_up[-1]["result"]["status"] == "finished"
    first_call = live.provider.calls[0]
    assert first_call.outcome == "closed" and first_call.ended is not None
    history = live.call(live.pipe.state_store.load("stop-me"))
    assert history[-1].status == "stopped" and history[-1].content == result["text"]


async def test_a_prompt_while_streaming_is_refused(serve: Any) -> None:
    live = serve(slow_provider())
    async with connect(live.ws_url) as ws:
        await ws.send("one")
        assert json.loads(await ws.recv())["type"] == "start"
        await ws.send("two")
        busy = None
        while busy is None:
            message = json.loads(await ws.recv())
            if message["type"] == "error":
                busy = message
        assert busy["error"]["type"] == "Busy" and busy["final"] is False
        await ws.send('{"type": "stop"}')
        assert (await until_end(ws))[-1]["result"]["status"] == "stopped"


async def test_disconnect_closes_the_provider(serve: Any) -> None:
    # resume_grace=0: a client that disconnects stops its answer at once (the old rule).
    live = serve(slow_provider(), resume_grace=0)
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "go", "session": "gone"}))
        for _ in range(4):
            await ws.recv()
    assert wait_for(lambda: live.provider.calls[-1].ended is not None, 2.0)
    assert live.provider.calls[-1].outcome == "closed"
    assert wait_for(lambda: live.app.state.slots.used == 0)
    history = live.call(live.pipe.state_store.load("gone"))
    assert history[-1].status == "stopped" and history[-1].content


async def test_error_mid_stream(serve: Any) -> None:
    live = serve(scenario_provider("one two three four", fault=Fault(kind="error", after=3)))
    async with connect(live.ws_url) as ws:
        await ws.send("x")
        messages = await until_end(ws)
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1 and errors[0]["final"] is False
    assert errors[0]["error"]["type"] == "ProviderError"
    assert errors[0]["error"]["partial_text"] == "one two three" == text_of(messages)
    assert messages[-1]["result"]["status"] == "failed"
    assert "Traceback" not in json.dumps(messages)


async def test_refusals_are_error_messages(serve: Any) -> None:
    live = serve(
        MockProvider(fault=Fault(kind="rate_limit", times=9)),
        max_prompt_chars=10,
        max_body_bytes=1000,
    )
    async with connect(live.ws_url) as ws:
        await ws.send("this prompt is too long")
        too_long = await until_end(ws)
        await ws.send("x" * 2000)
        too_big = await until_end(ws)
        await ws.send('{"type": "dance"}')
        unknown = await until_end(ws)
        await ws.send(b"binary")
        binary = await until_end(ws)
    assert too_long[-1]["error"]["type"] == "PromptTooLong"
    assert too_big[-1]["error"]["type"] == "RequestTooLarge"
    assert unknown[-1]["error"]["type"] == "InvalidRequest"
    assert binary[-1]["error"]["type"] == "UnsupportedMediaType"


async def test_origin_allow_list(serve: Any) -> None:
    live = serve(scenario_provider("ok"))
    with pytest.raises(InvalidStatus) as refused:
        async with connect(live.ws_url, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403
    assert b"OriginNotAllowed" in refused.value.response.body
    for origin in (live.url, "http://localhost:8888", None):
        async with connect(live.ws_url, origin=origin) as ws:
            await ws.send("x")
            assert (await until_end(ws))[-1]["result"]["text"] == "ok"

    configured = serve(scenario_provider("ok"), allowed_origins=("https://app.example",))
    async with connect(configured.ws_url, origin="https://app.example") as ws:
        await ws.send("x")
        assert (await until_end(ws))[-1]["type"] == "result"
    with pytest.raises(InvalidStatus):
        async with connect(configured.ws_url, origin="http://localhost:8888"):
            pass


async def test_token(serve: Any) -> None:
    token = "a-long-enough-token"
    live = serve(scenario_provider("ok"), token=token)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(live.ws_url):
            pass
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        async with connect(live.ws_url + "?access_token=wrong-token-value"):
            pass
    async with connect(live.ws_url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send("x")
        assert (await until_end(ws))[-1]["result"]["text"] == "ok"
    async with connect(live.ws_url + "?access_token=" + token) as ws:
        await ws.send("x")
        assert (await until_end(ws))[-1]["result"]["text"] == "ok"


async def test_concurrency_limit_applies_to_websockets(serve: Any) -> None:
    live = serve(slow_provider(), max_concurrent=1)
    async with connect(live.ws_url) as first, connect(live.ws_url) as second:
        await first.send("one")
        assert json.loads(await first.recv())["type"] == "start"
        await second.send("two")
        refused = await until_end(second)
        assert refused[-1]["error"]["type"] == "ServerBusy"
        await first.send('{"type": "stop"}')
        await until_end(first)
        await second.send("two")
        assert json.loads(await second.recv())["type"] == "start"
