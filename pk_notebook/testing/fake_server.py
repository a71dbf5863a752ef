"""A fake OpenAI-, Anthropic- and Gemini-compatible HTTP server for tests and benchmarks.

::

    from pk_notebook.testing import FakeProviderServer, Script

    with FakeProviderServer() as server:
        server.enqueue(Script("Hello there", fault="drop", after=1))
        provider = OpenAIProvider("gpt-4o-mini", base_url=server.base_url)
        ...
        assert server.requests[-1].disconnected

It is a real HTTP/1.1 server on 127.0.0.1 (asyncio, in a daemon thread), so
clients are tested through their real socket, pool and parser. ``base_url``
(``http://127.0.0.1:PORT/v1``) serves every dialect, chosen by path:
``.../chat/completions`` (OpenAI), ``.../messages`` (Anthropic),
``...:streamGenerateContent`` (Gemini), ``.../responses`` (OpenAI's Responses API).

Each request takes the next queued script (:meth:`FakeProviderServer.enqueue`)
or, when the queue is empty, :attr:`FakeProviderServer.default`. Every request
is recorded (:class:`RecordedRequest`): method, path, headers with credentials
redacted, the JSON body, and how it ended: ``completed`` (the server sent the
whole response) or ``disconnected`` (the client closed the connection first,
with ``disconnected_at`` on the ``time.monotonic()`` clock). Use
:meth:`RecordedRequest.wait_ended` before asserting on either: the server sees a
close a moment after the client makes it.

What a provider sent, the same in every dialect: :meth:`RecordedRequest.content_parts`
(the last user message's text, image and file parts, files as bytes) and
:meth:`RecordedRequest.requested_schema` (how structured output was asked for).
A structured answer is scripted with :meth:`Script.json <.scenarios.Script.json>`:
JSON text for OpenAI and Gemini, the forced tool's input for Anthropic.

From another process (benchmarks)::

    python -m pk_notebook.testing --port 8765

and control it over HTTP: ``POST /_fake/default`` or ``POST /_fake/enqueue`` with a
script as JSON (``{"repeat": 100000, "piece": "tok "}`` for a burst; ``"times"``
for how many requests it answers), ``GET /_fake/requests``, ``POST /_fake/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .scenarios import Script

__all__ = ["FakeProviderServer", "RecordedRequest"]

_SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
_KEEPALIVE = b": keep-alive\n\n"


@dataclass
class RecordedRequest:
    """What the server saw of one request, and how it ended."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    dialect: str | None
    started_at: float = field(default_factory=time.monotonic)
    events_sent: int = 0
    #: the server sent the whole response
    completed: bool = False
    #: the client closed the connection before the response was complete
    disconnected: bool = False
    disconnected_at: float | None = None
    ended_at: float | None = None
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def content_parts(self) -> list[dict[str, Any]]:
        """The last user message's parts, the same in every dialect.

        Each is ``{"type": "text", "text": ...}``, ``{"type": "image", "mime_type",
        "data" (bytes)}`` or ``{"type": "file", "mime_type", "data", "name"}`` (a
        PDF; ``name`` only where the dialect sends one), in the order sent. A
        plain-string message is one text part; tool results are left out.
        """
        body = self.json
        if not isinstance(body, dict):
            return []
        if self.dialect == "responses":
            from .responses_dialect import content_parts

            return content_parts(body)
        if self.dialect == "gemini":
            users = [c for c in body.get("contents", []) if c.get("role") == "user"]
            raw = users[-1].get("parts", []) if users else []
        else:
            users = [m for m in body.get("messages", []) if m.get("role") == "user"]
            raw = users[-1].get("content", []) if users else []
        if isinstance(raw, str):
            return [{"type": "text", "text": raw}]
        return [part for item in raw if (part := _neutral_part(item)) is not None]

    def requested_schema(self) -> dict[str, Any] | None:
        """How the request asked for structured output, the same in every dialect.

        ``{"mode", "name", "schema", "strict"}``: mode ``"json_schema"`` (OpenAI
        ``response_format``), ``"tool"`` (an Anthropic tool that ``tool_choice``
        forces, or the last tool with ``tool_choice`` ``any``), ``"response_schema"``
        (Gemini ``generationConfig``); None if it did not ask natively.
        """
        body = self.json
        if not isinstance(body, dict):
            return None
        if self.dialect == "responses":
            from .responses_dialect import requested_schema

            return requested_schema(body)
        if self.dialect == "openai":
            fmt = body.get("response_format") or {}
            if fmt.get("type") != "json_schema":
                return None
            spec = fmt.get("json_schema") or {}
            return {
                "mode": "json_schema",
                "name": spec.get("name"),
                "schema": spec.get("schema"),
                "strict": spec.get("strict"),
            }
        if self.dialect == "anthropic":
            choice = body.get("tool_choice") or {}
            if choice.get("type") not in ("tool", "any"):
                return None
            name = _forced_tool(body)
            tool = next((t for t in body.get("tools", []) if t.get("name") == name), None)
            if tool is None:
                return None
            return {
                "mode": "tool",
                "name": name,
                "schema": tool.get("input_schema"),
                "strict": None,
            }
        generation = body.get("generationConfig") or {}
        if "responseJsonSchema" not in generation and "responseSchema" not in generation:
            return None
        return {
            "mode": "response_schema",
            "name": None,
            "schema": generation.get("responseJsonSchema", generation.get("responseSchema")),
            "strict": None,
        }

    def wait_ended(self, timeout: float = 5.0) -> bool:
        """Block until the response was completed or the client disconnected."""
        return self._ended.wait(timeout)

    async def until_ended(self, timeout: float = 5.0) -> bool:
        """:meth:`wait_ended` for async code (polls; does not block the loop)."""
        deadline = time.monotonic() + timeout
        while not self._ended.is_set():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "json": self.json,
            "dialect": self.dialect,
            "events_sent": self.events_sent,
            "completed": self.completed,
            "disconnected": self.disconnected,
            "disconnected_at": self.disconnected_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }

    def _end(self, *, disconnected: bool, completed: bool = True) -> None:
        if self._ended.is_set():
            return
        now = time.monotonic()
        if disconnected:
            self.disconnected = True
            self.disconnected_at = now
        else:
            self.completed = completed
        self.ended_at = now
        self._ended.set()


def _data_url(url: str) -> tuple[str, bytes]:
    """``(media type, bytes)`` of a ``data:...;base64,...`` URL."""
    head, _, data = url.partition(",")
    return head[5:].split(";", 1)[0], base64.b64decode(data)


def _neutral_part(item: Any) -> dict[str, Any] | None:
    """One content part of any dialect as ``{"type": "text" | "image" | "file", ...}``."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind == "text" or (kind is None and "text" in item):
        return {"type": "text", "text": item.get("text", "")}
    if kind == "image_url":
        mime, data = _data_url(item["image_url"]["url"])
        return {"type": "image", "mime_type": mime, "data": data}
    if kind == "file":
        mime, data = _data_url(item["file"].get("file_data", ""))
        return {
            "type": "file",
            "mime_type": mime,
            "data": data,
            "name": item["file"].get("filename"),
        }
    if kind in ("image", "document"):
        source = item.get("source", {})
        mime = source.get("media_type", "")
        data = base64.b64decode(source.get("data", ""))
        if kind == "image":
            return {"type": "image", "mime_type": mime, "data": data}
        return {"type": "file", "mime_type": mime, "data": data, "name": item.get("title")}
    inline = item.get("inlineData") or item.get("inline_data")
    if isinstance(inline, dict):
        mime = inline.get("mimeType") or inline.get("mime_type") or ""
        data = base64.b64decode(inline.get("data", ""))
        if mime.startswith("image/"):
            return {"type": "image", "mime_type": mime, "data": data}
        return {"type": "file", "mime_type": mime, "data": data, "name": None}
    return None


def _redact_headers(headers: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, value in headers.items():
        if name in _SECRET_HEADERS:
            scheme = (
                value.split(" ", 1)[0] + " " if name == "authorization" and " " in value else ""
            )
            value = scheme + "[REDACTED]"
        out[name] = value
    return out


def _request_key(headers: dict[str, str]) -> str:
    """The API key a request carried, in whichever header its dialect uses."""
    for name in ("x-api-key", "api-key", "x-goog-api-key"):
        if headers.get(name):
            return headers[name]
    value = headers.get("authorization", "")
    return value.split(" ", 1)[1] if " " in value else value


def _dialect(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return "openai"
    if path.endswith("/messages"):
        return "anthropic"
    if ":streamGenerateContent" in path:
        return "gemini"
    if path.endswith("/responses"):  # OpenAI's Responses API: see responses_dialect.py
        return "responses"
    return None


class _ClientGone(Exception):
    pass


class _Connection(asyncio.Protocol):
    def __init__(self, server: FakeProviderServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.gone = asyncio.Event()
        self.current: RecordedRequest | None = None
        self.transport: asyncio.Transport | None = None

    # --- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # events are small writes: send each at once (no Nagle delay)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server._connections.add(self)
        self.server.peak_connections = max(
            self.server.peak_connections, len(self.server._connections)
        )
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.readable.set()

    def eof_received(self) -> bool:
        self._client_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone()
        self.server._connections.discard(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _client_gone(self) -> None:
        if self.gone.is_set():
            return
        self.gone.set()
        self.readable.set()
        self.writable.set()
        if self.current is not None:
            self.current._end(disconnected=True)

    # --- reading ----------------------------------------------------------------------

    async def _read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        while b"\r\n\r\n" not in self.buffer:
            if self.gone.is_set():
                return None
            self.readable.clear()
            await self.readable.wait()
        end = self.buffer.index(b"\r\n\r\n")
        head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[: end + 4]
        request_line, *header_lines = head.split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(self.buffer) < length:
            if self.gone.is_set():
                return None
            self.readable.clear()
            await self.readable.wait()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return method, target, headers, body

    # --- writing ----------------------------------------------------------------------

    async def _write(self, data: bytes) -> None:
        if self.gone.is_set():
            raise _ClientGone
        assert self.transport is not None
        self.transport.write(data)
        if not self.writable.is_set():
            await self.writable.wait()
            if self.gone.is_set():
                raise _ClientGone

    async def _chunk(self, data: bytes) -> None:
        await self._write(b"%x\r\n%s\r\n" % (len(data), data))

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up (and stop) at once if the client goes away."""
        if seconds <= 0:
            if self.gone.is_set():
                raise _ClientGone
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.gone.wait(), seconds)
        if self.gone.is_set():
            raise _ClientGone

    def _head(
        self, status: int, content_type: str, extra: dict[str, str], length: int | None
    ) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
            f"content-type: {content_type}",
        ]
        if length is None:
            lines.append("transfer-encoding: chunked")
        else:
            lines.append(f"content-length: {length}")
        lines += [f"{k}: {v}" for k, v in extra.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # --- serving ----------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while True:
                parsed = await self._read_request()
                if parsed is None:
                    return
                keep = await self._respond(*parsed)
                if not keep:
                    return
        except _ClientGone:
            return
        except Exception:
            import logging

            logging.getLogger("pk_notebook.testing").exception("fake server failed a request")
        finally:
            if self.transport is not None and not self.gone.is_set():
                self.transport.close()

    async def _respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> bool:
        parts = urlsplit(target)
        path = unquote(parts.path)
        if path.startswith("/_fake/"):
            return await self._control(method, path, body)
        dialect = _dialect(path)
        record = RecordedRequest(method, path, parts.query, _redact_headers(headers), body, dialect)
        self.server.requests.append(record)
        self.current = record
        try:
            if dialect is None:
                await self._simple(
                    404, "application/json", b'{"error":{"message":"no such route"}}'
                )
                return True
            script = self.server._next_script()
            if script.echo_key:
                script = script.with_key(_request_key(headers))
            model = _requested_model(dialect, path, record.json)
            keep = await self._play(script, dialect, model, record, _forced_tool(record.json))
            if keep:
                record._end(disconnected=False)
            return keep
        finally:
            self.current = None

    async def _simple(
        self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        await self._write(self._head(status, content_type, extra or {}, len(body)) + body)

    async def _play(
        self,
        script: Script,
        dialect: str,
        model: str,
        record: RecordedRequest,
        answer_tool: str = "",
    ) -> bool:
        """Send the response; True if the connection may serve another request."""
        extra = dict(script.headers)
        fault = script.fault
        if script.first_delay:
            await self._sleep(script.first_delay)
        if fault == "rate_limit":
            if script.retry_after is not None:
                extra.setdefault("retry-after", script.retry_after)
            await self._simple(
                script.status or 429, "application/json", script.error_body(dialect), extra
            )
            return True
        if fault == "server_error":
            await self._simple(
                script.status or 500, "application/json", script.error_body(dialect), extra
            )
            return True
        if fault == "html":
            page = b"<!doctype html><html><body><h1>Sign in</h1></body></html>"
            await self._simple(script.status or 200, "text/html; charset=utf-8", page, extra)
            return True
        await self._write(self._head(script.status or 200, script.content_type, extra, None))
        if script.body is not None:
            await self._play_recorded(script, record)
        else:
            opening, pieces, closing = script.render(dialect, model, answer_tool)
            sent = await self._events(opening, script.pace, record, first=True)
            fault_at = script.after if fault not in (None, "no_close") else -1
            for index, piece in enumerate(pieces):
                if index == fault_at:
                    return await self._fault(script, dialect, record)
                await self._events((piece,), script.pace, record, first=not sent)
                sent = True
            if fault_at >= len(pieces):
                return await self._fault(script, dialect, record)
            await self._events(closing, script.pace, record, first=False)
            if fault == "no_close":
                await self._hold()
        await self._write(b"0\r\n\r\n")
        return True

    async def _play_recorded(self, script: Script, record: RecordedRequest) -> None:
        assert script.body is not None
        if not script.pace:
            await self._chunk(script.body)
            record.events_sent += 1
            return
        for event in script.body.replace(b"\r\n", b"\n").split(b"\n\n"):
            if event:
                await self._sleep(script.pace)
                await self._chunk(event + b"\n\n")
                record.events_sent += 1

    async def _events(
        self, events: Any, pace: float, record: RecordedRequest, *, first: bool
    ) -> bool:
        for index, event in enumerate(events):
            if pace and not (first and index == 0):
                await self._sleep(pace)
            await self._chunk(event)
            record.events_sent += 1
        return bool(events)

    async def _fault(self, script: Script, dialect: str, record: RecordedRequest) -> bool:
        fault = script.fault
        if fault == "disconnect":
            assert self.transport is not None
            record._end(disconnected=False, completed=False)  # the server hung up, not the client
            self.transport.close()  # mid-body: the chunked body never ends
            raise _ClientGone
        if fault == "truncate":
            await self._write(b"0\r\n\r\n")
            return True
        if fault == "malformed":
            broken = b'data: {"choices":[{"index":0,"delta":{"content":"unfinished\n\n'
            await self._chunk(broken)
            await self._write(b"0\r\n\r\n")
            return True
        if fault == "error":
            await self._chunk(script.error_event(dialect))
            record.events_sent += 1
            if dialect == "openai":
                await self._chunk(b"data: [DONE]\n\n")
            await self._write(b"0\r\n\r\n")
            return True
        if fault == "endless_line":
            await self._chunk(b'data: {"choices":[{"index":0,"delta":{"content":"')
            filler = b"x" * 65536
            while True:
                await self._chunk(filler)
                await asyncio.sleep(0)  # let the loop notice a disconnect
                await self._sleep(0)
        if fault == "stall":
            await self._hold()
        if fault == "keepalive_stall":
            while True:
                await self._sleep(script.pace or 0.05)
                await self._chunk(_KEEPALIVE)
        raise AssertionError(f"fault {fault!r} is not handled mid-stream")

    async def _hold(self) -> None:
        await self.gone.wait()
        raise _ClientGone

    async def _control(self, method: str, path: str, body: bytes) -> bool:
        server = self.server
        try:
            data = json.loads(body) if body else {}
            if path == "/_fake/requests":
                payload: Any = [r.to_dict() for r in server.requests]
            elif path == "/_fake/reset" and method == "POST":
                server.reset()
                payload = {"ok": True}
            elif path in ("/_fake/default", "/_fake/enqueue") and method == "POST":
                times = int(data.pop("times", 1))
                script = Script.from_dict(data)
                if path == "/_fake/default":
                    server.default = script
                else:
                    server.enqueue(script, times=times)
                payload = {"ok": True}
            else:
                await self._simple(404, "application/json", b'{"error":"unknown control path"}')
                return True
        except (ValueError, TypeError) as exc:
            message = json.dumps({"error": str(exc)}).encode()
            await self._simple(400, "application/json", message)
            return True
        await self._simple(200, "application/json", json.dumps(payload).encode())
        return True


def _forced_tool(body: Any) -> str:
    """The tool an Anthropic request forces (``tool_choice`` ``{"type": "tool"}``), else
    its last tool (where the provider puts its structured-answer tool), else ""."""
    if not isinstance(body, dict):
        return ""
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        return str(choice.get("name") or "")
    tools = body.get("tools")
    if isinstance(tools, list) and tools and isinstance(tools[-1], dict):
        return str(tools[-1].get("name") or "")
    return ""


def _requested_model(dialect: str, path: str, body: Any) -> str:
    if dialect == "gemini":
        return path.rsplit("/", 1)[-1].split(":", 1)[0]
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return body["model"]
    return "fake-model"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


class FakeProviderServer:
    """The fake server. Use as a context manager, or :meth:`start` / :meth:`stop`."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, default: Script | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.default: Script = default or Script()
        self.requests: list[RecordedRequest] = []
        self._queue: collections.deque[Script] = collections.deque()
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        #: the most connections open at the same time (since start or reset())
        self.peak_connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None

    # --- scripting --------------------------------------------------------------------

    def enqueue(self, script: Script, *, times: int = 1) -> None:
        """Answer the next ``times`` requests with ``script`` (after those queued before)."""
        with self._lock:
            self._queue.extend([script] * times)

    def fail_times(self, n: int, *, status: int = 503, **options: Any) -> None:
        """The next ``n`` requests fail with ``status`` (``429`` rate-limits), then the default."""
        fault = "rate_limit" if status == 429 else "json_error"
        self.enqueue(Script(fault=fault, status=status, **options), times=n)

    def reset(self) -> None:
        """Forget recorded requests and queued scripts; the default becomes ``Script()``."""
        with self._lock:
            self._queue.clear()
        self.requests.clear()
        self.default = Script()
        self.peak_connections = len(self._connections)

    def _next_script(self) -> Script:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.default

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the base_url for every provider class."""
        return f"{self.url}/v1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> FakeProviderServer:
        if self._thread is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(4096)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                self._loop.create_server(lambda: _Connection(self), sock=sock, backlog=4096)
            )
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-provider-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for conn in list(self._connections):
                if conn.transport is not None:
                    conn.transport.abort()
            tasks = [c.task for c in list(self._connections) if hasattr(c, "task")]
            for task in tasks:
                task.cancel()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeProviderServer {self.base_url} requests={len(self.requests)}>"


@contextlib.contextmanager
def fake_provider_server(**options: Any) -> Iterator[FakeProviderServer]:
    with FakeProviderServer(**options) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground (for benchmarks in a separate process)."""
    parser = argparse.ArgumentParser(description="pk_notebook's fake provider server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = FakeProviderServer(args.host, args.port).start()
    print(server.base_url, flush=True)  # the one line a parent process reads
    try:
        assert server._thread is not None
        while server._thread.is_alive():
            server._thread.join(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
