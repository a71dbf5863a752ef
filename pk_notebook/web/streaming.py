"""Server-Sent Events: safe framing, and one driver that runs a stream over HTTP.

Framing: every payload is JSON, so newlines, ``data:`` inside the text, and any
Unicode arrive intact (writing raw text after ``data:`` breaks on the first
newline). Lines are never split by content.

The driver (:func:`run_sse`) adapts one turn (a :class:`Stream`, not yet opened)
to one HTTP response:

* a task watches ``receive()`` for ``http.disconnect`` from the start; when the
  client goes away the turn is stopped at once, in whatever phase it is (the
  provider's response is closed and the session keeps the partial answer,
  marked as interrupted);
* an error raised before the response has started is answered as JSON with a
  real HTTP status (:func:`~pk_notebook.web.security.status_for`); once the
  response has started, errors travel in the stream. The response starts at the
  first chunk, or after one heartbeat interval without one, so that a slow first
  token does not leave a proxy waiting for headers;
* comment lines (``: ping``) are sent whenever nothing else was written for a
  heartbeat interval;
* each write waits at most ``write_timeout`` seconds for the client to read: a
  client that stops reading is treated as gone (the turn is stopped, its partial
  answer saved as stopped, its stream slot freed) instead of holding the slot for
  as long as it keeps the socket open.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from ..runtime.errors import PkNotebookError
from ..runtime.stream import Stream
from ..runtime.types import Chunk, Result, ToolEvent
from . import logs
from .security import client_warnings, error_dict, error_headers, log_unexpected, status_for

logger = logging.getLogger("pk_notebook")

_timeout: Any = getattr(asyncio, "timeout", None)  # Python 3.11+

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
    (b"x-content-type-options", b"nosniff"),
)

DONE = b"data: [DONE]\n\n"
PING = b": ping\n\n"


def dumps(value: Any) -> str:
    """Compact JSON; non-ASCII kept as UTF-8 unless it cannot be encoded (lone surrogates)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, separators=(",", ":"))
    return text


def sse_event(data: str, event: str | None = None) -> bytes:
    """One SSE event. ``data`` with line breaks becomes several ``data:`` lines, which
    the client joins back with ``\\n`` (JSON payloads never contain any)."""
    if "\n" in data or "\r" in data:
        lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        body = "".join(f"data: {line}\n" for line in lines)
    else:
        body = f"data: {data}\n"
    if event is not None:
        body = f"event: {event}\n{body}"
    return (body + "\n").encode("utf-8")


def json_response_messages(
    status: int, data: Any, headers: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    body = dumps(data).encode("utf-8")
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
    ]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return (
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": body},
    )


async def send_json(
    send: Any, status: int, data: Any, headers: Mapping[str, str] | None = None
) -> None:
    start, body = json_response_messages(status, data, headers)
    await send(start)
    await send(body)


class Encoder(Protocol):
    """How one endpoint writes a stream: its chunk, end and error events."""

    def chunk(self, chunk: Chunk) -> bytes: ...

    def end(self, result: Result) -> bytes: ...

    def error_body(self, exc: BaseException) -> Any: ...


async def bounded_send(send: Any, message: dict[str, Any], seconds: float | None) -> None:
    """``await send(message)`` for at most ``seconds`` (then ``TimeoutError``).

    Every chunk goes through here, so the cheap way: ``asyncio.timeout`` is a
    timer handle (about 4 us a write on 3.11), where ``wait_for`` before 3.12
    wraps each write in a task of its own (about 12 us).
    """
    if seconds is None:
        await send(message)
    elif _timeout is None:  # Python 3.10
        await asyncio.wait_for(send(message), seconds)
    else:
        async with _timeout(seconds):
            await send(message)


class _Writer:
    """Serialises writes (chunks and heartbeats come from two tasks), each bounded.

    A write that waits longer than ``timeout`` (the client stopped reading and the
    socket buffer is full) marks the writer broken and ``timed_out``, and calls
    ``on_timeout`` (which stops the turn): the same outcome as a disconnect.
    """

    def __init__(self, send: Any, timeout: float | None = None, on_timeout: Any = None) -> None:
        self._send = send
        self._timeout = timeout
        self._on_timeout = on_timeout
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self.started = False
        self.broken = False
        self.timed_out = False

    async def _put(self, message: dict[str, Any]) -> None:
        async with self._lock:
            if self.broken:
                return
            try:
                await bounded_send(self._send, message, self._timeout)
            except asyncio.TimeoutError:
                self.broken = self.timed_out = True
                if self._on_timeout is not None:
                    self._on_timeout()

    async def start(self, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.started = True
        await self._put(
            {"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *extra]}
        )
        self.last = self._loop.time()

    async def write(self, data: bytes) -> None:
        if self.broken:
            return
        await self._put({"type": "http.response.body", "body": data, "more_body": True})
        self.last = self._loop.time()

    async def finish(self) -> None:
        if not self.broken:
            await self._put({"type": "http.response.body", "body": b"", "more_body": False})

    async def heartbeat(self, interval: float) -> None:
        while True:
            delay = self.last + interval - self._loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self.write(PING)


async def watch_disconnect(receive: Any) -> None:
    """Return when the client has gone away (the body has already been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_sse(
    send: Any,
    receive: Any,
    stream: Stream,
    encoder: Encoder,
    *,
    heartbeat: float | None,
    write_timeout: float | None = None,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """Run one turn (not yet opened) as an SSE response (see the module docstring)."""
    writer = _Writer(send, write_timeout, stream.stop)
    gone: asyncio.Task[None] = asyncio.ensure_future(watch_disconnect(receive))
    # The client leaving stops the turn in whatever phase it is (lock, call, stream).
    gone.add_done_callback(lambda _: stream.stop())
    opener: asyncio.Task[Stream] = asyncio.ensure_future(stream.open())
    beat: asyncio.Task[None] | None = None
    try:
        done, _ = await asyncio.wait({opener}, timeout=heartbeat)
        if not done:
            # No first chunk yet after one interval: commit to streaming and keep
            # the connection visibly alive while the provider thinks.
            await writer.start(extra_headers)
            beat = asyncio.ensure_future(writer.heartbeat(heartbeat))  # type: ignore[arg-type]
            await asyncio.wait({opener})
        try:
            opener.result()
        except Exception as exc:
            if gone.done():
                return
            log_unexpected(exc, "opening a stream")
            if writer.started:
                await writer.write(encoder_error(encoder, exc))
                await writer.write(DONE)
                await writer.finish()
            else:
                await send_json(send, status_for(exc), encoder.error_body(exc), error_headers(exc))
            return
        if gone.done():
            return
        if not writer.started:
            await writer.start(extra_headers)
        if beat is None and heartbeat is not None:
            beat = asyncio.ensure_future(writer.heartbeat(heartbeat))
        failure: BaseException | None = None
        try:
            async for chunk in stream:
                if not chunk.final:
                    data = encoder.chunk(chunk)
                    if data:  # an encoder may have nothing to say (a hidden tool event)
                        await writer.write(data)
        except PkNotebookError:
            pass  # the stream ended with an error: it is on stream.result
        except OSError:
            writer.broken = True  # the client went away while we wrote
        except Exception as exc:
            log_unexpected(exc, "streaming")
            failure = exc
        if gone.done() or writer.broken:
            return
        result = await stream.wait_closed()
        if failure is not None:
            await writer.write(encoder_error(encoder, failure))
        await writer.write(encoder.end(result))
        await writer.finish()
    except OSError:
        writer.broken = True
    finally:
        if writer.timed_out:
            # Said once, here, in the request's own task: uvicorn's ERROR about the
            # response left incomplete (it comes from this task too) is dropped.
            logs.quiet(
                "a client read nothing for %g s; its stream was stopped and the connection closed",
                write_timeout,
            )
        stream.stop()  # a no-op once it has ended
        for task in (beat, gone):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (opener, beat, gone) if t is not None), return_exceptions=True
        )
        await stream.aclose()


def encoder_error(encoder: Encoder, exc: BaseException) -> bytes:
    return sse_event(dumps(encoder.error_body(exc)), "error")


class NativeEncoder:
    """The ``/stream`` format: ``event: chunk`` per piece of text, ``event: reasoning``
    per piece of thinking, ``event: tool`` per step of a tool call, ``event: error`` if
    the stream failed, ``event: result`` with the :class:`Result`, then ``data: [DONE]``
    (the payloads are in :mod:`pk_notebook.web`'s docstring)."""

    def chunk(self, chunk: Chunk) -> bytes:
        if chunk.tool is None and not chunk.reasoning:  # the hot path: text only
            return sse_event(dumps({"index": chunk.index, "content": chunk.content}), "chunk")
        if chunk.tool is not None:
            return sse_event(dumps(tool_payload(chunk.tool)), "tool")
        out = sse_event(dumps({"index": chunk.index, "text": chunk.reasoning}), "reasoning")
        if chunk.content:
            out += sse_event(dumps({"index": chunk.index, "content": chunk.content}), "chunk")
        return out

    def end(self, result: Result) -> bytes:
        data = result_dict(result)
        out = b""
        if result.error is not None:
            out += sse_event(dumps({"error": data["error"]}), "error")
        return out + sse_event(dumps(data), "result") + DONE

    def error_body(self, exc: BaseException) -> Any:
        return {"error": error_dict(exc)}


def tool_payload(event: ToolEvent) -> dict[str, Any]:
    """A :class:`ToolEvent` as the ``tool`` event (SSE) or message (WebSocket) carries it.

    Always ``kind``, ``call_id``, ``name``, ``index``, ``round``; then only the fields
    the event sets: ``arguments`` (the arguments' JSON text so far; whole from
    ``"call"`` on), ``delta`` (its new piece, on ``"arguments"``), ``output`` (the
    full text the model was sent: the server's own tools, so not capped; the
    pipeline has already redacted a failed call's error text) and ``duration``
    (seconds the function ran).
    """
    data: dict[str, Any] = {
        "kind": event.kind,
        "call_id": event.call_id,
        "name": event.name,
        "index": event.index,
        "round": event.round,
    }
    if event.arguments:
        data["arguments"] = event.arguments
    if event.delta:
        data["delta"] = event.delta
    if event.output is not None:
        data["output"] = event.output
    if event.duration is not None:
        data["duration"] = event.duration
    return data


def result_dict(result: Result) -> dict[str, Any]:
    """``Result.to_dict()`` as a client may see it: the error through
    :func:`~pk_notebook.web.security.error_dict` (no traceback, key, path or host),
    the warnings without their detail (:func:`~pk_notebook.web.security.client_warnings`)."""
    data = result.to_dict()
    data["error"] = error_dict(result.error) if result.error is not None else None
    data["warnings"] = client_warnings(result.warnings)
    return data
