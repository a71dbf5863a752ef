"""Resumable /ws answers: drop the socket mid-answer, reconnect, send a resume message.

Real uvicorn servers on 127.0.0.1 driven by the ``websockets`` client: one process
(memory buffers), and real ``multiproc_server.py`` processes sharing a real
redis-server (the fixtures of ``test_resume.py``; under CI=true a missing
redis-server fails instead of skipping).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from pk_notebook.providers import MockProvider

from .conftest import LONG_ANSWER, direct_text, slow_provider, wait_for
from .test_resume import FULL, WORDS, Cluster, errors_of, read, start_cluster
from .test_ws import text_of, until_end

NEW_FIELDS = {"answer_id", "seq", "resume_token"}


async def first_chunks(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    """Messages up to the ``count``-th chunk (the caller then drops the socket)."""
    messages: list[dict[str, Any]] = []
    while sum(m["type"] == "chunk" for m in messages) < count:
        messages.append(json.loads(await ws.recv()))
    return messages


def resume_message(start: dict[str, Any], after: int, token: str | None = None) -> str:
    return json.dumps(
        {
            "type": "resume",
            "answer_id": start["answer_id"],
            "after": after,
            "token": start["resume_token"] if token is None else token,
        }
    )


def check_whole(messages: list[dict[str, Any]]) -> str:
    """Each event of the answer exactly once, in order, from seq 1; returns the text."""
    seqs = [m["seq"] for m in messages if "seq" in m]
    assert seqs == list(range(1, len(seqs) + 1)), "an event is missing or repeated"
    chunks = [m for m in messages if m["type"] == "chunk"]
    assert [m["index"] for m in chunks] == list(range(len(chunks))), "a chunk is lost or twice"
    assert len({m["answer_id"] for m in messages}) == 1
    assert messages[-1]["type"] == "result"
    return text_of(messages)


def resume_codes(messages: list[dict[str, Any]]) -> list[str]:
    return [m["error"].get("code") for m in messages if m["type"] == "error"]


# --- one process, memory buffers -----------------------------------------------------


async def test_drop_mid_answer_then_resume_loses_and_repeats_nothing(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0.005), resume_grace=3)
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "tell", "session": "wr1"}))
        first = await first_chunks(ws, 10)
    # The socket is closed mid-answer; the answer runs on. A new connection resumes it.
    start = first[0]
    assert start["type"] == "start" and start["seq"] == 1 and start["resume_token"]
    async with connect(live.ws_url) as ws:
        await ws.send(resume_message(start, first[-1]["seq"]))
        rest = await until_end(ws)
        # Its id is the new connection's; stop and resume again after the result.
        assert {m["id"] for m in rest} == {1}
        await ws.send(resume_message(start, rest[-1]["seq"]))
        (ended,) = await until_end(ws)
        # The connection then takes prompts as ever.
        await ws.send("short please")
        after = await until_end(ws)
    text = check_whole(first + rest)
    result = rest[-1]["result"]
    assert result["status"] == "finished" and text == result["text"] == LONG_ANSWER
    assert 10 <= len([m for m in first if m["type"] == "chunk"]) < 400
    assert ended["error"]["code"] == "resume_ended" and ended["final"] is True
    assert after[-1]["result"]["status"] == "finished" and after[0]["id"] == 3
    history = live.call(live.pipe.state_store.load("wr1"))
    assert history[-1].content == text and history[-1].status is None


async def test_a_resumed_answer_can_be_read_from_the_start_and_stopped(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0.01), resume_grace=3)
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "tell", "session": "wr2"}))
        first = await first_chunks(ws, 3)
    async with connect(live.ws_url) as ws:
        await ws.send(resume_message(first[0], 0))  # after 0: the whole answer again
        again = await first_chunks(ws, 8)
        await ws.send(json.dumps({"type": "prompt", "prompt": "meanwhile"}))
        busy = json.loads(await ws.recv())
        while busy["type"] != "error":
            again.append(busy)
            busy = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "stop"}))
        again += await until_end(ws)
    assert busy["error"]["type"] == "Busy" and busy["final"] is False
    assert again[0]["type"] == "start" and "resume_token" not in again[0]
    text = check_whole(again)
    result = again[-1]["result"]
    assert result["status"] == "stopped" and result["stop_reason"] == "stop requested"
    assert text == result["text"] and LONG_ANSWER.startswith(text)
    assert wait_for(lambda: live.app.state.slots.used == 0)
    history = live.call(live.pipe.state_store.load("wr2"))
    assert history[-1].status == "stopped" and history[-1].content == text


async def test_a_wrong_token_is_refused(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0.005), resume_grace=3, heartbeat=None)
    async with connect(live.ws_url) as ws:
        await ws.send("tell")
        first = await first_chunks(ws, 5)
    start = first[0]
    async with connect(live.ws_url) as ws:
        await ws.send(resume_message(start, 0, token="not-the-token"))
        wrong = await until_end(ws)
        await ws.send(json.dumps({"type": "resume", "answer_id": start["answer_id"]}))
        missing = await until_end(ws)
        await ws.send(resume_message(start, -1))
        bad_after = await until_end(ws)
        # Another answer's token does not open this one either.
        await ws.send("tell")
        other = await first_chunks(ws, 1)
        await ws.send(json.dumps({"type": "stop"}))
        await until_end(ws)
        await ws.send(resume_message(start, 0, token=other[0]["resume_token"]))
        crossed = await until_end(ws)
        # The owner's token still works after those attempts.
        await ws.send(resume_message(start, first[-1]["seq"]))
        rest = await until_end(ws)
    # /stream cannot read a /ws answer by its id alone.
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        sse = await read(client, "GET", "/stream", params={"answer_id": start["answer_id"]})
    assert len(wrong) == 1 and wrong[0]["final"] is True
    assert wrong[0]["error"]["type"] == "ResumeError"
    assert resume_codes(wrong) == ["resume_forbidden"] == resume_codes(crossed)
    assert not [m for m in wrong + crossed if m["type"] in ("start", "chunk", "result")]
    for refused in (missing, bad_after):
        assert refused[-1]["error"]["type"] == "InvalidRequest" and refused[-1]["final"]
    assert [e["code"] for e in errors_of(sse)] == ["resume_forbidden"]
    assert not [e for e in sse if e.event == "chunk"]
    assert check_whole(first + rest) == LONG_ANSWER


async def test_after_the_grace_period_the_answer_is_interrupted_then_expires(
    serve: Any,
) -> None:
    live = serve(slow_provider(chunk_delay=0.01), resume_grace=0.3, replay_ttl=1.0)
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "tell", "session": "wr3"}))
        first = await first_chunks(ws, 3)
    provider = live.provider
    # Nobody came back: the answer ran on past the 3 chunks, then stopped at the grace's end.
    assert wait_for(lambda: provider.calls[-1].ended is not None, 5.0)
    call = provider.calls[-1]
    assert call.outcome == "closed" and 3 < call.chunks_sent < 400
    history = live.call(live.pipe.state_store.load("wr3"))
    assert history[-1].status == "stopped" and history[-1].interrupted
    async with connect(live.ws_url) as ws:
        # While its buffer is kept, the rest (up to where it stopped) can still be read.
        await ws.send(resume_message(first[0], first[-1]["seq"]))
        rest = await until_end(ws)
        await asyncio.sleep(1.5)  # replay_ttl: the buffer is dropped
        await ws.send(resume_message(first[0], rest[-1]["seq"]))
        expired = await until_end(ws)
    text = check_whole(first + rest)
    assert rest[-1]["result"]["status"] == "stopped" and text == history[-1].content
    assert len(expired) == 1 and expired[0]["final"] is True
    assert resume_codes(expired) == ["resume_expired"]
    assert expired[0]["answer_id"] == first[0]["answer_id"] and "seq" not in expired[0]


async def test_an_unknown_answer_gives_resume_expired(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0))
    async with connect(live.ws_url) as ws:
        await ws.send(
            json.dumps({"type": "resume", "answer_id": "abc123", "after": 3, "token": "t"})
        )
        (expired,) = await until_end(ws)
    assert expired["error"]["code"] == "resume_expired" and expired["final"] is True


async def test_a_client_that_ignores_the_new_fields_works_as_before(serve: Any) -> None:
    provider = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    live = serve(provider)
    prompt = "Write a haiku about rain"
    expected = await direct_text(MockProvider.demo(chunk_delay=0, first_chunk_delay=0), prompt)
    old_shapes = {
        "start": {"type", "id"},
        "chunk": {"type", "id", "index", "content"},
        "result": {"type", "id", "result"},
    }
    async with connect(live.ws_url) as ws:
        for id in (1, 2, 3):
            await ws.send(prompt)
            messages = await until_end(ws)
            assert [m["id"] for m in messages] == [id] * len(messages)
            # What an old client reads: the same messages once the additions are dropped.
            for message in messages:
                assert set(message) - NEW_FIELDS == old_shapes[message["type"]]
            assert messages[0]["type"] == "start" and messages[-1]["type"] == "result"
            assert text_of(messages) == expected == messages[-1]["result"]["text"]


# --- several processes, one redis-server ------------------------------------------------


@pytest.fixture(scope="module")
def pair(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two ``multiproc_server.py`` processes, A and B, on one redis-server: grace 2 s."""
    yield from start_cluster(redis_server, tmp_path_factory.mktemp("ws-pair"), 2, grace=2.0)


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/ws"


async def start_and_drop(base: str, chunks: int) -> tuple[str, list[dict[str, Any]]]:
    """A new session's answer on the process at ``base``, its socket closed after ``chunks``
    chunks: the session, and the messages received."""
    session = "ws-" + uuid.uuid4().hex[:8]
    async with connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"prompt": "x", "session": session}))
        return session, await first_chunks(ws, chunks)


@pytest.mark.redis
async def test_drop_on_one_process_resume_on_another(pair: Cluster) -> None:
    a, b = pair.processes
    session, first = await start_and_drop(a.url, 40)
    start = first[0]
    async with connect(ws_url(b.url)) as ws:
        # A wrong token is refused on the other process too (checked in Redis).
        await ws.send(resume_message(start, first[-1]["seq"], token="x" + start["resume_token"]))
        wrong = await until_end(ws)
        await ws.send(resume_message(start, first[-1]["seq"]))
        rest = await until_end(ws)
    async with httpx.AsyncClient(timeout=15) as client:
        sse = await read(client, "GET", b.url + "/stream", params={"answer_id": start["answer_id"]})
    assert resume_codes(wrong) == ["resume_forbidden"] and wrong[0]["final"] is True
    assert [e["code"] for e in errors_of(sse)] == ["resume_forbidden"]
    assert 40 <= len([m for m in first if m["type"] == "chunk"]) < WORDS
    text = check_whole(first + rest)
    result = rest[-1]["result"]
    assert result["status"] == "finished" and text == result["text"] == FULL
    history = await pair.history(session)
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].content == text and history[1].status is None


@pytest.mark.redis
async def test_stop_a_resumed_answer_from_another_process(pair: Cluster) -> None:
    a, b = pair.processes
    session, first = await start_and_drop(a.url, 5)
    async with connect(ws_url(b.url)) as ws:
        await ws.send(resume_message(first[0], first[-1]["seq"]))
        rest = await first_chunks(ws, 5)
        asked = time.monotonic()
        await ws.send(json.dumps({"type": "stop"}))
        rest += await until_end(ws)
    assert time.monotonic() - asked < 2.0  # the stop went through Redis, not the grace
    text = check_whole(first + rest)
    result = rest[-1]["result"]
    assert result["status"] == "stopped" and text == result["text"] and FULL.startswith(text)
    assert len(text.split()) < WORDS
    history = await pair.history(session)
    assert history[-1].status == "stopped" and history[-1].content == text
