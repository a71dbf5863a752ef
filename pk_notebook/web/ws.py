"""``/ws``: prompts in, chunks out, and a stop message, over one WebSocket.

Client to server (text frames):

* a prompt: plain text, or ``{"prompt": "...", "session": "id", "options": {...}}``;
* ``{"type": "stop"}``: stop the running answer (the partial text is kept).

Server to client (JSON), ``id`` numbering the prompts of the connection::

    {"type": "start",     "id": 1}
    {"type": "reasoning", "id": 1, "index": 0, "text": "The user wants..."}
    {"type": "tool",      "id": 1, "kind": "start", "call_id": "c1", "name": "get_weather",
                          "index": 0, "round": 1}
    {"type": "chunk",     "id": 1, "index": 0, "content": "Hel"}
    {"type": "error",     "id": 1, "final": false, "error": {...}}   # the answer failed midway
    {"type": "result",    "id": 1, "result": {"status": "finished", "text": ..., "usage": ...}}

``reasoning`` and ``tool`` carry the same payloads as the SSE events of the same
names (the table in :mod:`pk_notebook.web`). Tools are the server's
(``create_app(tools=...)``); a prompt message naming ``tools`` is refused
(``"type": "ToolsNotAllowed"``).

A prompt ends with its ``result``, or with an ``error`` whose ``final`` is true
when it failed before its first chunk (or was refused). Prompts on a connection
run one at a time; one sent while another runs is refused (``"type": "Busy"``).

A JSON message nested too deeply to parse closes the connection with code 1007
(invalid payload data), after an error message saying why (other text that is
not JSON, ``{like this``, is a plain-text prompt). A client that stops reading is
treated as gone once a message has waited ``write_timeout`` seconds: its answer is
stopped (the partial text saved as stopped), its stream slot freed, the
connection closed.

The handshake is checked before it is accepted: the page's ``Origin`` must be
allowed (cross-site WebSocket hijacking is the classic hole: an upgrader that
accepts every origin lets any page drive the server) and the token, if any,
must match.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..runtime.errors import PkNotebookError
from ..runtime.pipeline import Pipeline
from ..runtime.stream import Stream
from ..runtime.types import Chunk
from . import logs
from .security import (
    Slots,
    WebError,
    check_origin,
    check_prompt,
    check_token,
    error_dict,
    log_unexpected,
)
from .settings import WebSettings
from .sse import parse_options, parse_session
from .streaming import bounded_send, dumps, json_response_messages, result_dict, tool_payload
from .tools import ServerTools, refuse_client_tools

logger = logging.getLogger("pk_notebook")


def _client(scope: Any) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown client"


class _Connection:
    def __init__(self, endpoint: WebSocketEndpoint, send: Any) -> None:
        self.endpoint = endpoint
        self.settings = endpoint.settings
        self._send = send
        self.broken = False
        self.count = 0
        self.task: asyncio.Task[None] | None = None
        self.stream: Stream | None = None  # the running turn, built before its task starts
        #: set when a send timed out: the receive loop stops waiting for the client
        self.gone = asyncio.Event()
        self._receiving: asyncio.Task[Any] | None = None

    async def send(self, message: dict[str, Any]) -> None:
        if self.broken:
            return
        try:
            await bounded_send(
                self._send,
                {"type": "websocket.send", "text": dumps(message)},
                self.settings.write_timeout,
            )
        except OSError:
            self.broken = True  # the client is gone; the receive loop will see it
        except asyncio.TimeoutError:
            self.broken = True
            logger.warning(
                "a WebSocket client read nothing for %g s; its answer was stopped and "
                "the connection closed",
                self.settings.write_timeout,
            )
            self.stop()
            self.gone.set()

    async def next_message(self, receive: Any) -> dict[str, Any] | None:
        """The client's next message, or None once a send timed out (the client is
        not reading, and may never send again: waiting on it would hold the
        connection forever). The pending receive is kept across calls, and
        cancelled by :meth:`close`."""
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(receive())
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({self._receiving, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
        if not self._receiving.done():
            return None
        receiving, self._receiving = self._receiving, None
        message: dict[str, Any] = receiving.result()
        return message

    async def close(self) -> None:
        if self._receiving is not None:
            self._receiving.cancel()
            await asyncio.gather(self._receiving, return_exceptions=True)
            self._receiving = None

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()  # valid in every phase of the turn

    async def handle(self, text: str) -> None:
        settings = self.settings
        if len(text) > settings.max_body_bytes:
            await self.refuse(
                WebError(
                    413,
                    "RequestTooLarge",
                    f"the message is larger than {settings.max_body_bytes} bytes",
                )
            )
            return
        data: dict[str, Any] | None = None
        if text.lstrip().startswith("{"):
            try:
                parsed = json.loads(text)
            except RecursionError:
                # Not a prompt that happens to start with "{": the caller closes with 1007.
                raise WebError(400, "InvalidJSON", "the JSON is nested too deeply") from None
            except ValueError:
                parsed = None  # "{not json": taken as a plain-text prompt
            if isinstance(parsed, dict):
                data = parsed
        if data is None:
            data = {"prompt": text}
        kind = data.get("type", "prompt")
        if kind == "stop":
            self.stop()
            return
        if kind != "prompt":
            await self.refuse(WebError(422, "InvalidRequest", f"unknown message type {kind!r}"))
            return
        if self.task is not None and not self.task.done():
            await self.refuse(
                WebError(
                    409,
                    "Busy",
                    "an answer is still streaming: wait for its result or "
                    'send {"type": "stop"} first',
                ),
                final=False,
            )
            return
        self.count += 1
        try:
            refuse_client_tools(data)
            prompt = check_prompt(data.get("prompt"), settings)
            session = parse_session(data.get("session", data.get("session_id")))
            config = parse_options(data.get("options"), settings)
            stream = self.endpoint.pipe.stream(
                prompt,
                session=session,
                config=config,
                **self.endpoint.tools.stream_options(),
            )
            holder = await self.endpoint.slots.enter()
        except WebError as exc:
            await self.refuse(exc, id=self.count)
            return
        except PkNotebookError as exc:  # the pipeline is shutting down
            await self.send(
                {"type": "error", "id": self.count, "final": True, "error": error_dict(exc)}
            )
            return
        self.stream = stream
        self.task = asyncio.ensure_future(self.run(self.count, stream, holder))
        # Held by the endpoint too, until it ends: if the connection's handler is
        # cancelled while awaiting it (a server shutting down), it is still referenced.
        self.endpoint.tasks.add(self.task)
        self.task.add_done_callback(self.endpoint.tasks.discard)

    async def refuse(self, exc: WebError, *, id: int | None = None, final: bool = True) -> None:
        await self.send({"type": "error", "id": id, "final": final, "error": exc.to_dict()})

    async def run(self, id: int, stream: Stream, holder: Any = None) -> None:
        try:
            try:
                await stream.open()
            except Exception as exc:
                log_unexpected(exc, "opening a WebSocket stream")
                await self.send(
                    {"type": "error", "id": id, "final": True, "error": error_dict(exc)}
                )
                return
            await self.send({"type": "start", "id": id})
            try:
                async for chunk in stream:
                    if chunk.final:
                        continue
                    for message in chunk_messages(id, chunk):
                        await self.send(message)
                    if self.broken:
                        stream.stop()
            except PkNotebookError:
                pass  # on stream.result
            except Exception as exc:
                log_unexpected(exc, "a WebSocket stream")
            data = result_dict(await stream.wait_closed())
            if data["error"] is not None:
                await self.send({"type": "error", "id": id, "final": False, "error": data["error"]})
            await self.send({"type": "result", "id": id, "result": data})
        finally:
            await stream.aclose()
            self.stream = None
            await self.endpoint.slots.leave(holder)


def chunk_messages(id: int, chunk: Chunk) -> list[dict[str, Any]]:
    """The messages for one chunk: a ``tool`` message, or ``reasoning`` and/or ``chunk``."""
    if chunk.tool is not None:
        return [{"type": "tool", "id": id, **tool_payload(chunk.tool)}]
    messages: list[dict[str, Any]] = []
    if chunk.reasoning:
        messages.append(
            {"type": "reasoning", "id": id, "index": chunk.index, "text": chunk.reasoning}
        )
    if chunk.content or not messages:
        messages.append({"type": "chunk", "id": id, "index": chunk.index, "content": chunk.content})
    return messages


class WebSocketEndpoint:
    """The ASGI app behind ``/ws``."""

    def __init__(
        self,
        pipe: Pipeline,
        settings: WebSettings,
        slots: Slots,
        tools: ServerTools | None = None,
    ) -> None:
        self.pipe = pipe
        self.settings = settings
        self.slots = slots
        self.tools = tools or ServerTools()
        self.connections = 0
        #: the answers running on the endpoint's connections
        self.tasks: set[asyncio.Task[None]] = set()

    async def deny(self, scope: Any, send: Any, exc: WebError) -> None:
        # One WARNING, without the query string (it may hold a token); uvicorn's
        # own lines about this handshake, one of them an ERROR, are dropped.
        logs.quiet(
            "refused a WebSocket handshake from %s: %d %s",
            _client(scope),
            exc.status,
            exc.kind,
        )
        if "websocket.http.response" in scope.get("extensions", {}):
            start, body = json_response_messages(exc.status, {"error": exc.to_dict()}, exc.headers)
            start["type"] = "websocket.http.response.start"
            body["type"] = "websocket.http.response.body"
            await send(start)
            await send(body)
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": exc.kind})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            check_origin(scope, self.settings)
            check_token(scope, self.settings, query_ok=True)
            if self.connections >= self.settings.max_websockets:
                raise WebError(
                    503,
                    "ServerBusy",
                    "too many WebSocket connections; retry later",
                    headers={"Retry-After": "5"},
                )
        except WebError as exc:
            await self.deny(scope, send, exc)
            return
        self.connections += 1
        connection = _Connection(self, send)
        try:
            await send({"type": "websocket.accept"})
            while True:
                message = await connection.next_message(receive)
                if message is None:
                    break  # the client stopped reading: leave without waiting for it
                kind = message["type"]
                if kind == "websocket.disconnect":
                    break
                if kind != "websocket.receive":
                    continue
                text = message.get("text")
                if text is None:
                    await connection.refuse(
                        WebError(
                            415, "UnsupportedMediaType", "send text frames (plain text or JSON)"
                        )
                    )
                    continue
                try:
                    await connection.handle(text)
                except WebError as exc:  # the message cannot be parsed at all
                    await connection.refuse(exc)
                    await send({"type": "websocket.close", "code": 1007, "reason": exc.kind})
                    break
        except OSError:
            pass  # the client went away
        finally:
            self.connections -= 1
            connection.broken = True
            connection.stop()
            await connection.close()
            if connection.task is not None:
                try:
                    await connection.task
                except Exception:
                    logger.debug("a WebSocket stream task failed", exc_info=True)
