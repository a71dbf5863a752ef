"""The ASGI application: :func:`create_app` puts a pipeline on the web.

    from pk_notebook.web import create_app
    app = create_app(pipe)                        # serve with: uvicorn module:app
    app = create_app(pipe, token="s3cret-token")  # WebSettings fields as keywords
    app = create_app(pipe, tools=[get_weather])   # server tools: every turn gets them

Routes: ``/stream`` (SSE; resumable), ``/stream/{answer_id}/stop``, ``/ws`` (WebSocket),
``/v1/chat/completions`` and ``/v1/models`` (OpenAI-compatible), ``/api/chat`` (the
Vercel AI SDK's UI message stream), ``/healthz``, and the demo page at ``/``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from ..runtime.pipeline import Pipeline
from . import logs
from .ai_sdk import ChatEndpoint
from .answers import Answers
from .openai_compat import ChatCompletionsEndpoint
from .replay import RedisReplay
from .security import (
    Slots,
    WebError,
    check_host,
    check_origin,
    check_token,
    register_pipeline_secrets,
)
from .settings import WebSettings
from .sse import StopEndpoint, StreamEndpoint
from .streaming import json_response_messages
from .tools import ServerTools
from .ws import WebSocketEndpoint

logger = logging.getLogger("pk_notebook")

_STATIC_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class HostGuard:
    """Refuses requests whose ``Host`` the server does not answer to (DNS rebinding)."""

    def __init__(self, app: Any, settings: WebSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            try:
                check_host(scope, self.settings)
            except WebError as exc:
                start, body = json_response_messages(exc.status, {"error": exc.to_dict()})
                if scope["type"] == "websocket":
                    logs.quiet("refused a WebSocket handshake: %d %s", exc.status, exc.kind)
                    if "websocket.http.response" not in scope.get("extensions", {}):
                        await send({"type": "websocket.close", "code": 1008})
                        return
                    start["type"] = "websocket.http.response.start"
                    body["type"] = "websocket.http.response.body"
                await send(start)
                await send(body)
                return
        await self.app(scope, receive, send)


def _static(name: str) -> bytes:
    return resources.files("pk_notebook.web").joinpath("static").joinpath(name).read_bytes()


def _origin_regex(patterns: tuple[str, ...]) -> str | None:
    wild = [p for p in patterns if p.endswith(":*")]
    if not wild:
        return None
    return "|".join(re.escape(p[:-2]) + r"(?::\d+)?" for p in wild)


def create_app(
    pipe: Pipeline,
    settings: WebSettings | None = None,
    *,
    tools: Any = None,
    max_tool_rounds: int | None = None,
    close_pipeline: bool = False,
    replay: Any = "auto",
    **options: Any,
) -> Starlette:
    """An ASGI (Starlette) app serving ``pipe``.

    ``settings`` (or its fields as keyword arguments) sets the access rules and
    limits; the defaults are the safe ones (see :class:`WebSettings`). ``tools``
    are the server's tools (Python functions or ``tool(...)`` objects), given to
    every turn on every endpoint and run by the pipeline inside it, at most
    ``max_tool_rounds`` rounds (``None``: the pipeline's default); clients cannot
    choose them (see :mod:`pk_notebook.web.tools`). A function that cannot be
    described raises :class:`~pk_notebook.runtime.errors.ConfigurationError` here. With
    ``close_pipeline=True`` the app shuts the pipeline down (letting running streams
    finish for its ``shutdown_grace``) and closes its session store when the server stops.

    ``replay``: where ``/stream`` answers are shared between processes (resume,
    stop and the stream cap across them). ``"auto"``: in Redis when the pipeline's
    session store is a :class:`~pk_notebook.sessions.RedisStore` (same server and
    prefix), else nowhere (one process: its own memory). A
    :class:`~pk_notebook.web.replay.RedisReplay`, or ``None``, chooses explicitly.
    """
    settings = settings or WebSettings()
    if options:
        settings = replace(settings, **options)
    slots = Slots(settings.max_concurrent)
    shared = _shared_replay(pipe, settings) if replay == "auto" else replay
    if shared is not None:
        slots.shared = shared.cap
    answers = Answers(settings, slots, shared)
    server_tools = ServerTools.build(tools, max_tool_rounds)
    # uvicorn logs WebSocket URLs (with ?access_token=) whatever the access-log setting:
    # its loggers get a filter that removes query strings, the token and the keys.
    register_pipeline_secrets(pipe, settings)
    logs.install()
    pages = {name: _static(name) for name in _STATIC_TYPES}

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in pages:
            raise HTTPException(404)
        return Response(pages[name], media_type=_STATIC_TYPES[name], headers=_PAGE_HEADERS)

    async def health(request: Request) -> Response:
        data: dict[str, Any] = {
            "status": "ok",
            "streams": slots.used,
            "max_concurrent": slots.limit,
        }
        if shared is not None:
            try:
                data["streams_all_processes"] = await shared.cap.count()
            except Exception:
                data["streams_all_processes"] = None
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    async def models(request: Request) -> Response:
        check_origin(request.scope, settings)
        check_token(request.scope, settings, query_ok=False)
        model = getattr(pipe.provider, "model", None) or "pk-notebook"
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "created": 0, "owned_by": "pk-notebook"}],
            }
        )

    async def web_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebError)
        return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        names = {404: "NotFound", 405: "MethodNotAllowed"}
        return JSONResponse(
            {
                "error": {
                    "type": names.get(exc.status_code, "HTTPError"),
                    "message": str(exc.detail),
                }
            },
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette logs nothing here once a handler is set: log it ourselves, and
        # send the client nothing but a generic message.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            {
                "error": {
                    "type": "InternalError",
                    "message": "internal server error; see the server log",
                }
            },
            status_code=500,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        logs.install()  # again: a server may have configured logging since create_app
        if shared is not None:
            try:
                await shared.listen(answers.stop_local, lambda: list(answers.running))
            except Exception as exc:
                logger.warning("cannot listen for stop messages in Redis yet: %s", exc)
        yield
        if close_pipeline:
            await pipe.shutdown()  # running answers may finish for its shutdown_grace
        await answers.aclose()  # stops what still runs (saved as interrupted)
        if close_pipeline:
            await pipe.state_store.aclose()

    chat = ChatEndpoint(pipe, settings, slots, server_tools, answers)
    middleware = [Middleware(HostGuard, settings=settings)]
    if settings.allowed_origins:
        exact = [p for p in settings.allowed_origins if not p.endswith(":*")]
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=exact,
                allow_origin_regex=_origin_regex(settings.allowed_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    app = Starlette(
        debug=False,
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/demo", page, methods=["GET"]),
            Route("/static/{name}", page, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
            Route(
                "/stream",
                StreamEndpoint(pipe, settings, slots, server_tools, answers),
                methods=["GET", "POST"],
            ),
            Route("/api/chat", chat, methods=["POST"]),
            Route("/api/chat/{chat_id}/stream", chat.resume, methods=["GET"]),
            Route(
                "/stream/{answer_id}/stop", StopEndpoint(settings, answers).handle, methods=["POST"]
            ),
            WebSocketRoute("/ws", WebSocketEndpoint(pipe, settings, slots, server_tools, answers)),
            Route(
                "/v1/chat/completions",
                ChatCompletionsEndpoint(pipe, settings, slots, server_tools),
                methods=["POST"],
            ),
            Route("/v1/models", models, methods=["GET"]),
        ],
        middleware=middleware,
        exception_handlers={
            WebError: web_error,
            HTTPException: http_error,
            Exception: server_error,
        },
        lifespan=lifespan,
    )
    app.state.pipeline = pipe
    app.state.settings = settings
    app.state.slots = slots
    app.state.tools = server_tools
    app.state.answers = answers
    return app


def _shared_replay(pipe: Pipeline, settings: WebSettings) -> RedisReplay | None:
    """A :class:`RedisReplay` on the pipeline's session store when that is Redis."""
    module = sys.modules.get("pk_notebook.sessions.redis")
    store = getattr(pipe, "state_store", None)
    if module is None or not isinstance(store, module.RedisStore):
        return None
    return RedisReplay.from_store(
        store,
        max_events=settings.replay_max_events,
        ttl=settings.replay_ttl,
        lease=settings.stream_lease,
    )
