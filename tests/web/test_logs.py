"""The server log never holds the token, and refused handshakes cost one WARNING.

uvicorn logs ``WebSocket /ws?access_token=<token>`` at INFO whatever the
access-log setting, and at DEBUG the ``websockets`` library logs the request
line and every header. Both are captured here from a real server (in a
thread, and ``pk-notebook serve`` in a subprocess) at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from pk_notebook.providers import MockProvider

from .conftest import wait_until_serving
from .test_cli import free_port

TOKEN = "tok-" + "log-secret-4821"


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, self.format(record)))

    def start(self) -> None:
        """After the server started: its Config reset uvicorn's levels and handlers."""
        for name in NAMES:
            logging.getLogger(name).setLevel(logging.DEBUG)
        for name in HANDLED:
            logging.getLogger(name).addHandler(self)


NAMES = ("uvicorn", "uvicorn.error", "uvicorn.access", "pk_notebook")
HANDLED = ("uvicorn", "uvicorn.access", "pk_notebook")  # uvicorn.error propagates to uvicorn


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Every record of uvicorn's loggers and ours (uvicorn's do not propagate)."""
    capture = Capture()
    loggers = [logging.getLogger(name) for name in NAMES]
    levels = [logger.level for logger in loggers]
    yield capture
    for name in HANDLED:
        logging.getLogger(name).removeHandler(capture)
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


async def refused(url: str, **options: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **options):
            pass
    return info.value.response.status_code


async def exercise(base: str, ws_base: str) -> list[int]:
    """Accepted and refused requests that carry the token (or a wrong one) every way."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        ok = await client.get("/stream", params={"prompt": "hi", "access_token": TOKEN})
        assert ok.status_code == 200
        bearer = await client.post(
            "/stream", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert bearer.status_code == 200
    async with connect(f"{ws_base}/ws?access_token={TOKEN}") as ws:
        await ws.send("hi")
        await ws.recv()
    async with connect(
        f"{ws_base}/ws", additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as ws:
        await ws.send("hi")
        await ws.recv()
    return [
        await refused(f"{ws_base}/ws?access_token={TOKEN}x"),
        await refused(f"{ws_base}/ws?access_token=wrong-{TOKEN}"),
        await refused(f"{ws_base}/ws"),
        await refused(
            f"{ws_base}/ws?access_token={TOKEN}",
            additional_headers={"Origin": "https://evil.example"},
        ),
    ]


def check(lines: list[tuple[int, str]], statuses: list[int]) -> None:
    assert lines, "nothing was captured"
    leaked = [line for _, line in lines if TOKEN in line]
    assert not leaked, leaked
    assert not [line for level, line in lines if level >= logging.ERROR]
    warnings = [line for level, line in lines if level == logging.WARNING]
    refusals = [line for line in warnings if "refused a WebSocket handshake" in line]
    assert len(refusals) == len(statuses), warnings
    assert all("?" not in line and "access_token" not in line for line in refusals)
    # uvicorn's own lines about the refused handshakes are gone; accepted ones lost the query.
    assert not [line for _, line in lines if "connection rejected" in line]
    accepted = [line for _, line in lines if "[accepted]" in line]
    assert len(accepted) == 2 and all("?" not in line for line in accepted)


async def test_the_token_never_reaches_the_log(serve: Any, captured: Capture) -> None:
    live = serve(MockProvider(chunk_delay=0, first_chunk_delay=0), token=TOKEN)
    captured.start()
    statuses = await exercise(live.url, f"ws://127.0.0.1:{live.port}")
    assert statuses == [401, 401, 401, 403]
    await asyncio.sleep(0.2)  # uvicorn logs a handshake's end after the client saw it
    check(captured.lines, statuses)


async def test_the_token_never_reaches_the_log_of_pk_notebook_serve() -> None:
    port = free_port()
    env = {**os.environ, "PK_NOTEBOOK_TOKEN": TOKEN}
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
            "--log-level",
            "debug",
            "--access-log",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            await wait_until_serving(client)
        statuses = await exercise(base, f"ws://127.0.0.1:{port}")
        await asyncio.sleep(0.3)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    assert statuses == [401, 401, 401, 403]
    assert TOKEN not in err and TOKEN not in out  # uvicorn's access log goes to stdout
    lines = err.splitlines()
    assert not [line for line in lines if line.startswith(("ERROR", "CRITICAL"))], err
    refusals = [line for line in lines if "refused a WebSocket handshake" in line]
    assert len(refusals) == 4 and all(line.startswith("WARNING") for line in refusals)
    assert "connection rejected" not in err
    assert "GET /stream HTTP" in out  # the access log is on, without query strings


def test_tracebacks_and_paths_are_cleaned_too() -> None:
    from pk_notebook.runtime.errors import register_secret
    from pk_notebook.web import logs

    register_secret(TOKEN)  # as create_app does (security.register_pipeline_secrets)
    filter_ = logs.install()
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, '"WebSocket %s" %s', None, None
    )
    record.args = (f"/ws?access_token={TOKEN}", f"Bearer {TOKEN}")
    try:
        raise ValueError(f"bad request /stream?access_token={TOKEN}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert filter_.filter(record)
    text = logging.Formatter().format(record)
    assert TOKEN not in text and '"WebSocket /ws"' in text and "ValueError" in text
