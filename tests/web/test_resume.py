"""Resume, stop and the stream cap: one process (memory), and several sharing a real Redis.

The multi-process tests start real uvicorn processes (``multiproc_server.py``: a
mock answer of 300 words, one chunk each, every 10 ms) on their own ports, all on
one redis-server on 127.0.0.1, and cut, resume and stop answers across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from .conftest import LONG_ANSWER, slow_provider, wait_for, wait_until_serving

SERVER = Path(__file__).with_name("multiproc_server.py")
ROOT = Path(__file__).resolve().parents[2]
WORDS = 300
FULL = " ".join(f"w{i}" for i in range(WORDS))


async def read(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    chunks: int | None = None,
    **kw: Any,
) -> list[ServerSentEvent]:
    """The events of one response; with ``chunks``, the connection is cut after that many."""
    events: list[ServerSentEvent] = []
    async with aconnect_sse(client, method, url, **kw) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            events.append(sse)
            if chunks is not None and sum(e.event == "chunk" for e in events) >= chunks:
                break
    return events


def chunk_texts(events: list[ServerSentEvent]) -> list[tuple[int, str]]:
    return [
        (json.loads(e.data)["index"], json.loads(e.data)["content"])
        for e in events
        if e.event == "chunk"
    ]


def result_of(events: list[ServerSentEvent]) -> dict[str, Any]:
    results = [json.loads(e.data) for e in events if e.event == "result"]
    assert len(results) == 1, [e.event for e in events]
    return results[0]


def errors_of(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data)["error"] for e in events if e.event == "error"]


def check_whole(events: list[ServerSentEvent]) -> str:
    """Each event exactly once, in order, none missing; returns the streamed text."""
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in events if e.id]
    assert seqs == list(range(1, len(seqs) + 1)), "an event is missing or repeated"
    pieces = chunk_texts(events)
    assert [i for i, _ in pieces] == list(range(len(pieces))), "a chunk is missing or repeated"
    assert events[-1].data == "[DONE]"
    return "".join(text for _, text in pieces)


# --- one process, memory buffers -----------------------------------------------------


async def test_resume_on_the_same_process_with_last_event_id(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0.005), resume_grace=3, heartbeat=None)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        first = await read(
            client, "POST", "/stream", json={"prompt": "tell", "session": "r1"}, chunks=10
        )
        assert first[0].event == "start"
        answer_id = json.loads(first[0].data)["answer_id"]
        assert first[0].id == f"{answer_id}:1"
        # What EventSource does: the same URL again, with the last id it saw.
        rest = await read(client, "GET", "/stream", headers={"Last-Event-ID": first[-1].id})
    text = check_whole(first + rest)
    result = result_of(rest)
    assert result["status"] == "finished" and text == result["text"] == LONG_ANSWER
    history = live.call(live.pipe.state_store.load("r1"))
    assert history[-1].content == text and history[-1].status is None


async def test_resume_by_answer_id_and_after(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0), heartbeat=None)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        whole = await read(client, "POST", "/stream", json={"prompt": "tell"})
        answer_id = json.loads(whole[0].data)["answer_id"]
        again = await read(client, "GET", "/stream", params={"answer_id": answer_id, "after": 5})
    assert [e.id for e in again] == [e.id for e in whole[5:]]
    assert [e.data for e in again] == [e.data for e in whole[5:]]


async def test_an_unknown_answer_gives_resume_expired(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0), heartbeat=None)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        events = await read(client, "GET", "/stream", headers={"Last-Event-ID": "abc123:7"})
        bad = await client.get("/stream", params={"answer_id": "no/such"})
    assert [e["code"] for e in errors_of(events)] == ["resume_expired"]
    assert events[-1].data == "[DONE]"
    assert bad.status_code == 422


async def test_a_trimmed_memory_buffer_gives_resume_gap(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0), heartbeat=None, replay_max_events=5)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        whole = await read(client, "POST", "/stream", json={"prompt": "tell"})
        # (A reader more than 5 events behind the answer gets the gap too: the id is
        # taken from the last event.)
        answer_id = whole[-1].id.rsplit(":", 1)[0]
        late = await read(client, "GET", "/stream", params={"answer_id": answer_id, "after": 1})
    (gap,) = errors_of(late)
    assert gap["code"] == "resume_gap" and gap["missing"][0] == 2
    assert result_of(late)["text"] == LONG_ANSWER  # the rest follows; its result is whole
    assert late[-1].data == "[DONE]"


async def test_stop_endpoint_stops_at_once_and_keeps_the_partial_answer(serve: Any) -> None:
    token = "stop-token-123"
    live = serve(slow_provider(), token=token, heartbeat=None)
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        assert (await client.post("/stream/abc/stop")).status_code == 401
        assert (await client.post("/stream/abc/stop", headers=auth)).status_code == 404
        events: list[ServerSentEvent] = []
        async with aconnect_sse(
            client, "POST", "/stream", json={"prompt": "tell", "session": "st"}, headers=auth
        ) as source:
            async for sse in source.aiter_sse():
                events.append(sse)
                if sse.event == "chunk" and sum(e.event == "chunk" for e in events) == 5:
                    answer_id = json.loads(events[0].data)["answer_id"]
                    stopped = await client.post(f"/stream/{answer_id}/stop", headers=auth)
                    assert stopped.status_code == 200
                    assert stopped.json() == {
                        "answer_id": answer_id,
                        "stopped": True,
                        "state": "running",
                    }
    text = check_whole(events)
    result = result_of(events)
    assert result["status"] == "stopped" and result["stop_reason"] == "stop requested"
    assert len(chunk_texts(events)) < 30 and LONG_ANSWER.startswith(text)
    history = live.call(live.pipe.state_store.load("st"))
    assert history[-1].status == "stopped" and history[-1].content == text
    assert wait_for(lambda: live.app.state.slots.used == 0)


async def test_a_disconnected_answer_runs_on_for_the_grace_period(serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0.01), resume_grace=0.5, heartbeat=None)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        await read(client, "POST", "/stream", json={"prompt": "tell", "session": "g"}, chunks=3)
    provider = live.provider
    assert wait_for(lambda: provider.calls[-1].ended is not None, 5.0)
    call = provider.calls[-1]
    # It ran on after the client left (well past 3 chunks), then stopped at the grace's end.
    assert call.outcome == "closed" and 10 < call.chunks_sent < 400
    history = live.call(live.pipe.state_store.load("g"))
    assert history[-1].status == "stopped" and history[-1].interrupted


def test_resume_settings_are_checked() -> None:
    from pk_notebook.runtime import ConfigurationError
    from pk_notebook.web import WebSettings

    assert WebSettings(resume_grace=0).resume_grace == 0
    for bad in (
        {"resume_grace": -1},
        {"replay_ttl": 0},
        {"replay_max_events": 0},
        {"stream_lease": 0},
    ):
        with pytest.raises(ConfigurationError):
            WebSettings(**bad)


def test_several_workers_need_the_redis_store(capsys: pytest.CaptureFixture[str]) -> None:
    from pk_notebook.web.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["serve", "--workers", "2", "--store", "memory", "--log-level", "warning"])
    assert exit.value.code == 2
    assert "--workers 2 needs --store redis://" in capsys.readouterr().err


# --- several processes, one redis-server ------------------------------------------------


class Process:
    """``multiproc_server.py`` on a free port."""

    def __init__(self, redis_url: str, prefix: str, log: Path, **options: Any) -> None:
        from ..sessions.redis_server import free_port

        self.port = free_port()
        args = [sys.executable, str(SERVER), "--port", str(self.port), "--redis", redis_url]
        args += ["--prefix", prefix]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        self.log = log
        self._log = log.open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(args, stdout=self._log, stderr=self._log, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        text = self.log.read_text(errors="replace")
        assert "Traceback" not in text, text


class Cluster:
    def __init__(self, url: str, prefix: str, processes: list[Process]) -> None:
        self.redis_url = url
        self.prefix = prefix
        self.processes = processes

    async def history(self, session: str) -> list[Any]:
        from pk_notebook.sessions import RedisStore

        store = RedisStore.from_url(self.redis_url, prefix=self.prefix)
        try:
            return await store.load(session)
        finally:
            await store.aclose()


def start_cluster(redis_server: Any, tmp: Path, count: int, **options: Any) -> Iterator[Cluster]:
    prefix = f"mp-{uuid.uuid4().hex[:8]}:"
    processes = [
        Process(redis_server.url, prefix, tmp / f"server{i}.log", **options) for i in range(count)
    ]
    try:
        for process in processes:
            process.wait()
        yield Cluster(redis_server.url, prefix, processes)
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def cluster(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three processes, A, B and C: grace 1 s."""
    yield from start_cluster(redis_server, tmp_path_factory.mktemp("cluster"), 3, grace=1.0)


@pytest.fixture(scope="module")
def small(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two processes sharing a cap of 1 stream and replay buffers of 5 events."""
    yield from start_cluster(
        redis_server,
        tmp_path_factory.mktemp("small"),
        2,
        max_concurrent=1,
        max_events=5,
        grace=1.0,
    )


@pytest.mark.redis
async def test_cut_on_one_process_resume_on_another(cluster: Cluster) -> None:
    a, b, _ = cluster.processes
    session = "s-" + uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=15) as client:
        first = await read(
            client, "POST", a.url + "/stream", json={"prompt": "x", "session": session}, chunks=40
        )
        rest = await read(client, "GET", b.url + "/stream", headers={"Last-Event-ID": first[-1].id})
    assert 40 <= len(chunk_texts(first)) < WORDS
    text = check_whole(first + rest)
    result = result_of(rest)
    assert result["status"] == "finished" and text == result["text"] == FULL
    history = await cluster.history(session)
    assert [m.role for m in history] == ["user", "assistant"]
    assert history[1].content == text and history[1].status is None


@pytest.mark.redis
async def test_stop_from_a_third_process(cluster: Cluster) -> None:
    a, b, c = cluster.processes
    session = "s-" + uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=15) as client:
        first = await read(
            client, "POST", a.url + "/stream", json={"prompt": "x", "session": session}, chunks=10
        )
        answer_id = json.loads(first[0].data)["answer_id"]
        asked = time.monotonic()
        stopped = await client.post(f"{c.url}/stream/{answer_id}/stop")
        assert stopped.status_code == 200 and stopped.json()["stopped"] is True
        rest = await read(client, "GET", b.url + "/stream", headers={"Last-Event-ID": first[-1].id})
        took = time.monotonic() - asked
        again = await client.post(f"{c.url}/stream/{answer_id}/stop")
        unknown = await client.post(f"{c.url}/stream/{'0' * 24}/stop")
    text = check_whole(first + rest)
    result = result_of(rest)
    assert result["status"] == "stopped" and result["stop_reason"] == "stop requested"
    assert len(text.split()) < WORDS // 2 and FULL.startswith(text)
    assert took < 3
    assert again.json() == {"answer_id": answer_id, "stopped": False, "state": "done"}
    assert unknown.status_code == 404
    history = await cluster.history(session)
    assert history[1].content == text and history[1].status == "stopped"


@pytest.mark.redis
async def test_grace_expiry_stores_the_answer_as_interrupted(cluster: Cluster) -> None:
    a, b, _ = cluster.processes
    session = "s-" + uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=15) as client:
        first = await read(
            client, "POST", a.url + "/stream", json={"prompt": "x", "session": session}, chunks=5
        )
        deadline = time.monotonic() + 8
        history: list[Any] = []
        while time.monotonic() < deadline and len(history) < 2:
            history = await cluster.history(session)
        assert len(history) == 2, "the answer was not stopped after the grace period"
        # Its buffer outlives it: a late client still gets the rest, up to the stop.
        rest = await read(client, "GET", b.url + "/stream", headers={"Last-Event-ID": first[-1].id})
    assert history[1].status == "stopped" and history[1].interrupted
    text = check_whole(first + rest)
    assert history[1].content == text and len(text.split()) < WORDS
    result = result_of(rest)
    assert result["stop_reason"] == "no client attached during the grace period"


@pytest.mark.redis
async def test_a_trimmed_redis_buffer_gives_resume_gap(small: Cluster) -> None:
    d, e = small.processes
    async with httpx.AsyncClient(timeout=15) as client:
        whole = await read(client, "POST", d.url + "/stream", json={"prompt": "x"})
        answer_id = whole[-1].id.rsplit(":", 1)[0]
        params = {"answer_id": answer_id, "after": 1}
        remote = await read(client, "GET", e.url + "/stream", params=params)
        local = await read(client, "GET", d.url + "/stream", params=params)
        expired = await read(client, "GET", e.url + "/stream", params={"answer_id": "f" * 24})
    for late in (remote, local):
        gaps = errors_of(late)
        assert [g["code"] for g in gaps] == ["resume_gap"] and gaps[0]["missing"][0] == 2
        assert result_of(late)["text"] == FULL
        assert late[-1].data == "[DONE]"
    assert [g["code"] for g in errors_of(expired)] == ["resume_expired"]


@pytest.mark.redis
async def test_the_stream_cap_holds_across_processes(small: Cluster) -> None:
    d, e = small.processes
    async with httpx.AsyncClient(timeout=15) as client:
        first = await read(client, "POST", d.url + "/stream", json={"prompt": "x"}, chunks=2)
        answer_id = json.loads(first[0].data)["answer_id"]
        for process in (e, d):
            refused = await client.post(process.url + "/stream", json={"prompt": "x"})
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "ServerBusy"
        health = (await client.get(e.url + "/healthz")).json()
        assert health["streams"] == 0 and health["streams_all_processes"] == 1
        assert (await client.post(f"{e.url}/stream/{answer_id}/stop")).status_code == 200

        async def free() -> bool:
            return (await client.get(e.url + "/healthz")).json()["streams_all_processes"] == 0

        deadline = time.monotonic() + 5
        while not await free():
            assert time.monotonic() < deadline, "the slot was not given back"
        accepted = await read(client, "POST", e.url + "/stream", json={"prompt": "x"}, chunks=1)
        assert accepted[0].event == "start"


LEASE = 3.0  # seconds: WebSettings.stream_lease of the processes below (15 by default)


@pytest.mark.redis
async def test_a_crashed_process_frees_its_stream_slots_when_their_leases_expire(
    redis_server: Any, tmp_path: Path
) -> None:
    """A process killed (SIGKILL) while its streams hold the whole global cap: another
    process refuses new streams while their leases live, and takes one once they expire
    (no restart, no cleanup by hand). The answers are slow (15 s) and run on without a
    client (grace 30 s), so only the crash can end them."""
    cluster = start_cluster(
        redis_server,
        tmp_path,
        2,
        max_concurrent=2,
        stream_lease=LEASE,
        chunk_delay=0.05,
        grace=30.0,
    )
    doomed, other = next(cluster).processes

    async def all_streams(client: httpx.AsyncClient) -> int:
        health = (await client.get(other.url + "/healthz")).json()
        return int(health["streams_all_processes"])

    async def start(client: httpx.AsyncClient, process: Process) -> str | None:
        """A new stream's answer id (left running, detached), or None: 503 ServerBusy."""
        url = process.url + "/stream"
        async with aconnect_sse(client, "POST", url, json={"prompt": "x"}) as source:
            if source.response.status_code == 503:
                body = json.loads(await source.response.aread())
                assert body["error"]["type"] == "ServerBusy"
                return None
            assert source.response.status_code == 200, await source.response.aread()
            async for sse in source.aiter_sse():
                assert sse.event == "start"
                return str(json.loads(sse.data)["answer_id"])
        raise AssertionError("the stream ended before its start event")

    try:
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(2):
                assert await start(client, doomed) is not None
            assert await all_streams(client) == 2
            assert await start(client, other) is None and await start(client, doomed) is None
            # The running streams renew their leases: still full after a whole lease.
            await asyncio.sleep(LEASE + 0.5)
            assert await start(client, other) is None

            killed = time.monotonic()
            doomed.process.kill()  # a crash: no shutdown, no slot given back
            doomed.process.wait(10)
            assert await start(client, other) is None, "the dead process's leases still hold"
            assert await all_streams(client) == 2

            # Each renewal lasts LEASE; the last came at most LEASE / 3 before the kill.
            deadline = killed + LEASE + 5
            # /healthz stops counting the dead leases once they expire, with no stream
            # request in between to drop them.
            while await all_streams(client) != 0:
                assert time.monotonic() < deadline, "/healthz went on counting dead leases"
                await asyncio.sleep(0.1)
            assert time.monotonic() - killed >= LEASE / 2
            while (first := await start(client, other)) is None:
                assert time.monotonic() < deadline, "the crashed process's slots never came back"
                await asyncio.sleep(0.1)
            freed_after = time.monotonic() - killed
            assert freed_after >= LEASE / 2, f"a slot came back {freed_after:.1f} s after"
            # The stream just started is the only one counted: the dead leases are gone,
            # and both slots are usable again.
            assert await all_streams(client) == 1
            second = await start(client, other)
            assert second is not None and await all_streams(client) == 2
            assert await start(client, other) is None, "the cap of 2 holds again"
            for answer_id in (first, second):  # so that the process stops at once
                await client.post(f"{other.url}/stream/{answer_id}/stop")
    finally:
        with contextlib.suppress(StopIteration):
            next(cluster)


@pytest.mark.redis
async def test_serve_with_workers_shares_answers_through_redis(
    redis_server: Any, tmp_path: Path
) -> None:
    from ..sessions.redis_server import free_port

    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only polled over HTTP
        [
            sys.executable,
            "-m",
            "pk_notebook.web.cli",
            "serve",
            "--provider",
            "mock",
            "--port",
            str(port),
            "--workers",
            "2",
            "--store",
            redis_server.url,
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
            await wait_until_serving(client, "pk-notebook serve --workers 2")
            session = "w-" + uuid.uuid4().hex[:8]
            whole = await read(
                client, "POST", "/stream", json={"prompt": "hello", "session": session}
            )
            text = check_whole(whole)
            answer_id = json.loads(whole[0].data)["answer_id"]
            # New connections land on either worker: every one replays the same answer.
            for _ in range(6):
                again = await read(client, "GET", "/stream", params={"answer_id": answer_id})
                assert [e.data for e in again] == [e.data for e in whole]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
        log.close()
    output = (tmp_path / "serve.log").read_text(errors="replace")
    assert "Traceback" not in output, output
    assert result_of(whole)["status"] == "finished" and text


# --- the buffers themselves ---------------------------------------------------------------


async def test_memory_buffers_are_bounded_in_events_and_in_ended_answers() -> None:
    from pk_notebook.web.replay import MemoryReplay

    replay = MemoryReplay(max_events=4, ttl=60, max_ended=2)
    buffer = replay.create("a")
    for n in range(1, 21):
        buffer.add(f"id: a:{n}\ndata: {n}\n\n".encode())
    replay.end("a")
    got = b"".join([frames async for frames in replay.follow("a", 18)])
    assert got == b"id: a:19\ndata: 19\n\n" + b"id: a:20\ndata: 20\n\n"
    gap = b"".join([frames async for frames in replay.follow("a", 0)])
    assert b'"code":"resume_gap"' in gap and gap.endswith(b"id: a:20\ndata: 20\n\n")
    for name in ("b", "c"):
        replay.create(name)
        replay.end(name)
    assert "a" not in replay and "b" in replay and "c" in replay  # the oldest went first
    expired = b"".join([frames async for frames in replay.follow("a", 0)])
    assert b'"code":"resume_expired"' in expired and expired.endswith(b"data: [DONE]\n\n")


def test_skip_frames() -> None:
    from pk_notebook.web.replay import skip_frames

    frames = b"id: x:1\ndata: 1\n\nid: x:2\ndata: 2\n\nid: x:3\ndata: 3\n\n"
    assert skip_frames(frames, 0) == frames
    assert skip_frames(frames, 2) == b"id: x:3\ndata: 3\n\n"
    assert skip_frames(frames, 3) == b"" == skip_frames(frames, 9)


def test_event_ids_are_parsed_strictly() -> None:
    from pk_notebook.web.answers import parse_event_id

    assert parse_event_id("ab12:7") == ("ab12", 7)
    assert parse_event_id("7") == (None, 7)
    for bad in (None, "", "x", "ab/12:7", "ab12:-1", "ab12:1e3", ":", "a" * 65 + ":1"):
        assert parse_event_id(bad) == (None, None)


@pytest.mark.redis
async def test_an_answer_whose_process_died_gives_answer_lost(
    redis_server: Any, tmp_path: Path
) -> None:
    cluster = start_cluster(redis_server, tmp_path, 2, grace=5.0)
    doomed, other = next(cluster).processes
    try:
        async with httpx.AsyncClient(timeout=15) as client:
            first = await read(
                client, "POST", doomed.url + "/stream", json={"prompt": "x"}, chunks=5
            )
            doomed.process.kill()  # a crash: no shutdown, nothing flushed
            doomed.process.wait(10)
            rest = await read(
                client, "GET", other.url + "/stream", headers={"Last-Event-ID": first[-1].id}
            )
    finally:
        with contextlib.suppress(StopIteration):
            next(cluster)
    assert [e["code"] for e in errors_of(rest)] == ["answer_lost"]
    assert rest[-1].data == "[DONE]"
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in first + rest if e.id]
    assert seqs == list(range(1, len(seqs) + 1))  # what was flushed came once, in order
