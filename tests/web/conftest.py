"""A real uvicorn server on 127.0.0.1 (a free port, its own thread) per test.

``serve(provider_or_pipeline, **web_settings)`` starts one and returns a
:class:`LiveServer`; it is stopped (and its pipeline shut down) after the test.
``live.call(coro)`` runs a coroutine on the server's event loop, where the
pipeline and its session store live.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import uvicorn

from pk_notebook.providers import MockProvider, Scenario
from pk_notebook.runtime import Pipeline, ProviderMiddleware, RetryPolicy
from pk_notebook.web import create_app
from pk_notebook.web.server import server_config

T = TypeVar("T")

LONG_ANSWER = " ".join(f"word{i}" for i in range(400))
TRICKY = (
    "line one\ndata: not a field\r\n\nevent: fake\n: comment\n[DONE]\nünïcödé 🎉 — “quotes” \\ end"
)


class LiveServer:
    """The app served as ``pk-notebook serve`` serves it (:func:`server_config`: h11,
    bounded headers, request deadline, write-stall abort), or with uvicorn's plain
    defaults when ``plain=True`` (what a user's own ``uvicorn module:app`` gives)."""

    def __init__(self, pipe: Pipeline, *, plain: bool = False, **settings: Any) -> None:
        self.pipe = pipe
        self.app = create_app(pipe, close_pipeline=True, **settings)
        self.loop: asyncio.AbstractEventLoop | None = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._sock = sock
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "on",
            "interface": "asgi3",
            "timeout_graceful_shutdown": 3,
            "ws_ping_interval": None,
        }
        if plain:
            config = uvicorn.Config(self._asgi, **options)
        else:
            config = server_config(self._asgi, self.app.state.settings, **options)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn"
        )

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def provider(self) -> Any:
        return self.pipe.provider

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self._sock.close()
        assert not self._thread.is_alive(), "uvicorn did not stop"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def make_pipeline(provider: Any, *, retry: RetryPolicy | None = None, **options: Any) -> Pipeline:
    return Pipeline(ProviderMiddleware(provider, retry=retry), **options)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true; a generous "it did not hang" bound, not a timing test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(target: Any, *, plain: bool = False, **settings: Any) -> LiveServer:
        pipe = target if isinstance(target, Pipeline) else make_pipeline(target)
        live = LiveServer(pipe, plain=plain, **settings)
        servers.append(live)
        return live.start()

    yield start
    for live in servers:
        live.stop()


def scenario_provider(text: str = TRICKY, **options: Any) -> MockProvider:
    return MockProvider([Scenario(text)], **options)


def slow_provider(**options: Any) -> MockProvider:
    options.setdefault("chunk_delay", 0.02)
    return MockProvider(
        [Scenario("a short answer", match="^short"), Scenario(LONG_ANSWER)], **options
    )


async def direct_text(provider: MockProvider, prompt: str) -> str:
    """What the pipeline produces without the web layer (a fresh, identical pipeline)."""
    async with make_pipeline(provider) as pipe:
        return (await pipe.execute("user", prompt)).text


async def wait_until_serving(
    client: Any, what: str = "pk-notebook serve", timeout: float = 20
) -> None:
    """Poll ``/healthz`` until the server answers 200 (a subprocess takes a moment to bind)."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{what} did not start"
        await asyncio.sleep(0.05)
