"""Everything a client can hold on ``serve`` is bounded, and malformed input gets a typed answer.

Raw sockets against real servers on 127.0.0.1: a 64 MiB header, half-open
sockets, a client that stops reading (SSE and WebSocket), half a body, and
deeply nested JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from pk_notebook.providers import MockProvider
from pk_notebook.runtime.types import Delta

from .conftest import make_pipeline, wait_for, wait_until_serving
from .test_cli import free_port

MiB = 1024 * 1024


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` (anything it sends is read)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


# --- the request head ----------------------------------------------------------------


async def test_a_64_mib_header_is_refused_without_growing_memory() -> None:
    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, then only polled over HTTP
        [
            sys.executable,
            "-m",
            "pk_notebook.web.cli",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            await wait_until_serving(client)
            before = rss(process.pid)

            def flood() -> tuple[int, bytes]:
                sock = raw(port)
                sent = 0
                try:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                    piece = b"a" * MiB
                    while sent < 64 * MiB:
                        sock.sendall(piece)
                        sent += len(piece)
                    sock.settimeout(5)
                    answer = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    answer = b""
                except TimeoutError:
                    answer = b"(no answer)"
                finally:
                    sock.close()
                return sent, answer

            sent, answer = await asyncio.to_thread(flood)
            grown = rss(process.pid) - before
            assert sent < 64 * MiB or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer
            assert grown < 16 * MiB, f"the server grew by {grown / MiB:.1f} MiB"
            assert (await client.get("/healthz")).status_code == 200  # still serving
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)


async def test_half_open_sockets_are_closed_after_the_request_timeout(serve: Any) -> None:
    live = serve(MockProvider(chunk_delay=0, first_chunk_delay=0), request_timeout=0.5)

    def open_many() -> list[bool]:
        socks = [raw(live.port) for _ in range(50)]
        for i, sock in enumerate(socks):
            if i % 3 == 1:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # half a head
            elif i % 3 == 2:
                # a whole request, then half of the next one on the kept-alive connection
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert b"200 OK" in sock.recv(65536)
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.3)
        socks[1].sendall(b"X-Slow: 1\r\n")  # trickling does not extend the deadline
        try:
            return [closed_by_server(sock, 10) for sock in socks]
        finally:
            for sock in socks:
                sock.close()

    closed = await asyncio.to_thread(open_many)
    assert all(closed), f"{closed.count(False)} of 50 sockets were left open"
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_half_a_body_gets_408(serve: Any) -> None:
    live = serve(MockProvider(), plain=True, read_timeout=0.3)

    def half() -> bytes:
        sock = raw(live.port)
        sock.sendall(
            b"POST /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"prompt": "h'
        )
        sock.settimeout(10)
        try:
            return sock.recv(65536)
        finally:
            sock.close()

    answer = await asyncio.to_thread(half)
    assert answer.startswith(b"HTTP/1.1 408") and b"RequestTimeout" in answer


# --- a client that stops reading -----------------------------------------------------


class Endless:
    """Text as fast as the server takes it, for as long as it asks."""

    name = "endless"

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        piece = "x" * 16384
        while True:
            yield Delta(piece)
            await asyncio.sleep(0)

    async def aclose(self) -> None:
        pass


def frame(text: str) -> bytes:
    """One masked WebSocket text frame, as a client sends it."""
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    return (
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


@pytest.mark.parametrize("plain", [False, True], ids=["serve", "plain-uvicorn"])
@pytest.mark.parametrize("surface", ["sse", "ws"])
async def test_a_client_that_stops_reading_frees_its_slot(
    serve: Any, plain: bool, surface: str
) -> None:
    # resume_grace=0: the stalled client is detached and its answer stopped at once.
    live = serve(
        make_pipeline(Endless()), plain=plain, write_timeout=0.5, heartbeat=None, resume_grace=0
    )
    session = f"{surface}-stalled"
    body = json.dumps({"prompt": "go", "session": session})
    sock = raw(live.port, rcvbuf=4096)
    try:
        if surface == "sse":
            sock.sendall(
                b"POST /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
            )
        else:
            sock.sendall(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert b" 101 " in sock.recv(4096)
            sock.sendall(frame(body))
        # ... and never read again.
        assert wait_for(lambda: live.app.state.slots.used == 1, 5)
        assert wait_for(lambda: live.app.state.slots.used == 0, 15), "the slot is still held"
        assert wait_for(lambda: live.pipe.active_streams == 0)
        history = live.call(live.pipe.state_store.load(session))
        assert history[-1].status == "stopped" and len(history[-1].content) > 100_000
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            assert (await client.get("/healthz")).json()["streams"] == 0
    finally:
        sock.close()


# --- malformed input -------------------------------------------------------------------

NESTED = b"[" * 2048


@pytest.mark.parametrize("path", ["/stream", "/v1/chat/completions"])
async def test_deeply_nested_json_is_a_400(
    serve: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    live = serve(MockProvider())
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        response = await client.post(
            path, content=NESTED, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    assert "InvalidJSON" in response.text and "nested too deeply" in response.text
    assert not [r for r in caplog.records if r.levelno >= 40]  # no traceback in the log


async def test_deeply_nested_json_on_the_websocket_closes_with_1007(serve: Any) -> None:
    live = serve(MockProvider(chunk_delay=0, first_chunk_delay=0))
    async with connect(live.ws_url) as ws:
        await ws.send('{"prompt": ' + "[" * 2000 + "]" * 2000 + "}")
        message = json.loads(await ws.recv())
        assert message["type"] == "error" and message["error"]["type"] == "InvalidJSON"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    async with connect(live.ws_url) as ws:  # "{not json" is still a plain-text prompt
        await ws.send("{not json")
        while json.loads(await ws.recv())["type"] != "result":
            pass


async def test_the_request_deadline_does_not_cut_answers_or_websockets(serve: Any) -> None:
    live = serve(
        MockProvider(chunk_delay=0.05, first_chunk_delay=0), request_timeout=0.3, heartbeat=None
    )
    async with httpx.AsyncClient(base_url=live.url, timeout=15) as client:
        # A streamed answer that lasts longer than the deadline (its request was complete).
        response = await client.post("/stream", json={"prompt": "Write a long story"})
        assert response.status_code == 200 and '"status":"finished"' in response.text
        await asyncio.sleep(0.5)  # and the kept-alive connection idles past it
        assert (await client.get("/healthz")).status_code == 200
    async with connect(live.ws_url) as ws:
        await asyncio.sleep(0.6)  # an open WebSocket is not a request in progress
        await ws.send("hi")
        while json.loads(await ws.recv())["type"] != "result":
            pass


async def test_websocket_answers_are_referenced_until_they_end(serve: Any) -> None:
    live = serve(MockProvider(chunk_delay=0.05, first_chunk_delay=0))
    endpoint = next(r.endpoint for r in live.app.routes if getattr(r, "path", "") == "/ws")
    async with connect(live.ws_url) as ws:
        await ws.send("Write a long story")
        assert json.loads(await ws.recv())["type"] == "start"
        assert len(endpoint.tasks) == 1
    # The client left mid-answer: the answer was stopped, awaited and let go.
    assert wait_for(lambda: not endpoint.tasks and live.pipe.active_streams == 0)
