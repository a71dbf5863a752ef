"""``/ws``: prompts in, chunks out, a stop message, and resume, over one WebSocket.

Client to server (text frames):

* a prompt: plain text, or ``{"prompt": "...", "session": "id", "options": {...}}``;
* ``{"type": "stop"}``: stop the running answer (the partial text is kept);
* ``{"type": "resume", "answer_id": "...", "after": n, "token": "..."}``: follow an
  answer started on an earlier connection (see *Resume* below).

Server to client (JSON), ``id`` numbering the prompts (and resumes) of the
connection, ``answer_id`` and ``seq`` identifying each event of the answer across
connections::

    {"type": "start",     "id": 1, "answer_id": "3f2c...", "seq": 1, "resume_token": "..."}
    {"type": "reasoning", "id": 1, "answer_id": ..., "seq": 2, "index": 0, "text": "The..."}
    {"type": "tool",      "id": 1, "answer_id": ..., "seq": 3, "kind": "start",
                          "call_id": "c1", "name": "get_weather", "index": 0, "round": 1}
    {"type": "chunk",     "id": 1, "answer_id": ..., "seq": 4, "index": 0, "content": "Hel"}
    {"type": "error",     "id": 1, "answer_id": ..., "seq": 5, "final": false, "error": {...}}
    {"type": "result",    "id": 1, "answer_id": ..., "seq": 6,
                          "result": {"status": "finished", "text": ..., "usage": ...}}

``answer_id``, ``seq`` and ``resume_token`` are additions: a client that ignores
them sees the messages it always did. ``reasoning`` and ``tool`` carry the same
payloads as the SSE events of the same names (the table in
:mod:`pk_notebook.web`). Tools are the server's (``create_app(tools=...)``); a
prompt message naming ``tools`` is refused (``"type": "ToolsNotAllowed"``).

A prompt ends with its ``result``, or with an ``error`` whose ``final`` is true
when it failed before its first chunk (or was refused: those errors carry no
``answer_id``). Prompts on a connection run one at a time; one sent while another
runs (or a resume is followed) is refused (``"type": "Busy"``).

Resume. An answer runs detached from its connection, as ``/stream`` answers do
(:mod:`pk_notebook.web.answers`): its events go to the replay buffer (this
process's memory, and with a Redis session store a Redis Stream every process
reads), and ``seq`` is the buffer's event number, the ``n`` of the SSE event id
``{answer_id}:{n}``. A connection that closes mid-answer only detaches from it:
the answer keeps generating for ``resume_grace`` seconds, then is stopped and
saved as interrupted (``resume_grace`` 0: stopped at once, as before). A client
that reconnects (to any process, with Redis) sends ``{"type": "resume",
"answer_id": ..., "after": n, "token": ...}``, ``n`` the last ``seq`` it saw (0: from
the start), and gets the events after ``n``, then the live rest, each exactly once,
as messages of the new connection's ``id``; ``{"type": "stop"}`` then stops that
answer, wherever it runs. ``token`` is the ``resume_token`` of the answer's
``start`` message: a secret given only to the connection that asked for the
answer (the answer id alone, which the server logs, is not enough; only the
token's SHA-256 is kept, in Redis as well). A resume that cannot be served is an
``error`` message (no ``seq``: not an event of the answer) whose
``error.type`` is ``"ResumeError"`` and ``error.code`` the same as on ``/stream``:
``resume_gap`` (events trimmed from the bounded buffer; ``final`` false, the rest
follows and its ``result`` holds the whole text), ``resume_expired`` (unknown
answer, or ended and its buffer expired), ``answer_lost`` (its process died),
plus ``resume_forbidden`` (a wrong token, or an answer that was not started on
``/ws``) and ``resume_ended`` (nothing after ``n``: the answer's ``result`` was
already read); all but ``resume_gap`` are ``final``. A resume message without an
answer id or token, or with a bad ``after``, is an ``InvalidRequest`` error.
``/stream`` cannot read a ``/ws`` answer (it has no token), and ``/ws`` resumes only
``/ws`` answers.

A JSON message nested too deeply to parse closes the connection with code 1007
(invalid payload data), after an error message saying why (other text that is
not JSON, ``{like this``, is a plain-text prompt). A client that stops reading is
treated as gone once a message has waited ``write_timeout`` seconds: it is
detached from its answer (which stops after ``resume_grace``), the connection
closed.

The handshake is checked before it is accepted: the page's ``Origin`` must be
allowed (cross-site WebSocket hijacking is the classic hole: an upgrader that
accepts every origin lets any page drive the server) and the token, if any,
must match.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from ..runtime.errors import PkNotebookError
from ..runtime.pipeline import Pipeline
from . import logs
from .answers import Answer, Answers, check_answer_id
from .security import (
    Slots,
    WebError,
    check_origin,
    check_prompt,
    check_token,
    error_dict,
)
from .settings import WebSettings
from .sse import parse_options, parse_session
from .streaming import bounded_send, dumps, json_response_messages
from .tools import ServerTools, refuse_client_tools

logger = logging.getLogger("pk_notebook")

#: the longest resume token accepted (the server's are 32 characters)
MAX_TOKEN_CHARS = 256


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
        #: the task relaying an answer to this connection (a new one, or a resumed one)
        self.task: asyncio.Task[None] | None = None
        #: the answer that task relays
        self.answer_id: str | None = None
        #: the id whose last message (a result or a final error) is on its way: a new
        #: prompt is no longer "busy", though the task has yet to return
        self.finished = 0
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
                "a WebSocket client read nothing for %g s; it was detached from its answer "
                "and the connection closed",
                self.settings.write_timeout,
            )
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
        """Leave: detach from the answer (it runs on for the grace period), stop reading."""
        self.broken = True
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.debug("a WebSocket relay task failed", exc_info=True)
        if self._receiving is not None:
            self._receiving.cancel()
            await asyncio.gather(self._receiving, return_exceptions=True)
            self._receiving = None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done() and self.finished != self.count

    async def stop(self) -> None:
        """Stop the answer this connection follows, in whichever process runs it."""
        if self.answer_id is not None and self.busy:
            await self.endpoint.answers.stop(self.answer_id)

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
            await self.stop()
            return
        if kind not in ("prompt", "resume"):
            await self.refuse(WebError(422, "InvalidRequest", f"unknown message type {kind!r}"))
            return
        if self.busy:
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
        if kind == "resume":
            await self.resume(data)
        else:
            await self.prompt(data)

    async def prompt(self, data: dict[str, Any]) -> None:
        settings = self.settings
        answers = self.endpoint.answers
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
        token = secrets.token_urlsafe(24)
        try:
            answer = await answers.start(stream, holder, token=token)
        except BaseException:
            await stream.aclose()
            await self.endpoint.slots.leave(holder)
            raise
        answer.attach()  # before its task runs: a drop from now on starts the grace period
        self.answer_id = answer.id
        self.start_task(self.run(self.count, answer, token))

    async def resume(self, data: dict[str, Any]) -> None:
        answer_id = check_answer_id(data.get("answer_id"))
        after = data.get("after", 0)
        token = data.get("token")
        problem = None
        if answer_id is None:
            problem = "'answer_id' must be the answer_id of an answer's messages"
        elif isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 10**12:
            problem = "'after' must be the last seq received (0: from the start)"
        elif not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            problem = "'token' must be the resume_token of the answer's start message"
        if problem is not None or answer_id is None:
            await self.refuse(WebError(422, "InvalidRequest", str(problem)), id=self.count)
            return
        self.answer_id = answer_id
        frames = self.endpoint.answers.follow(answer_id, after, token=token)
        self.start_task(self.relay(self.count, answer_id, frames))

    def start_task(self, coro: Any) -> None:
        self.task = asyncio.ensure_future(coro)
        # Held by the endpoint too, until it ends: if the connection's handler is
        # cancelled while awaiting it (a server shutting down), it is still referenced.
        self.endpoint.tasks.add(self.task)
        self.task.add_done_callback(self.endpoint.tasks.discard)

    async def refuse(self, exc: WebError, *, id: int | None = None, final: bool = True) -> None:
        await self.send({"type": "error", "id": id, "final": final, "error": exc.to_dict()})

    async def run(self, id: int, answer: Answer, token: str) -> None:
        """Relay a new answer from its start (attached by the caller; detached here)."""
        try:
            # Nothing is sent before the stream opened: a failure to open is one final
            # error, as it always was (asyncio.wait: cancelling this task leaves it be).
            await asyncio.wait({answer.opened})
            failed = answer.opened.result()
            if failed is not None:
                self.finished = id
                await self.send(
                    {"type": "error", "id": id, "final": True, "error": error_dict(failed)}
                )
                return
            frames = self.endpoint.answers.follow(answer.id, 0, attached=True, token=token)
            await self.relay(id, answer.id, frames, token)
        finally:
            answer.detach()

    async def relay(
        self,
        id: int,
        answer_id: str,
        frames: AsyncGenerator[bytes, None],
        token: str | None = None,
    ) -> None:
        """Send an answer's buffered events (SSE frames) as this connection's messages.

        An ``error`` is held until the next event: followed by the end (``[DONE]``),
        it ended the answer (``final`` true), else more follows (``final`` false).
        """
        held: dict[str, Any] | None = None
        ended = False  # a result (or a final error) was sent
        async with contextlib.aclosing(frames):
            async for batch in frames:
                for seq, event, payload in parse_frames(batch):
                    if payload == "[DONE]":
                        self.finished = id
                        if held is not None:
                            held["final"] = True
                            await self.send(held)
                        elif not ended:
                            await self.send(resume_ended(id, answer_id))
                        return
                    if event is None:
                        continue  # not a /ws answer's frame (cannot happen: its token)
                    data = json.loads(payload)
                    message: dict[str, Any] = {"type": event, "id": id, "answer_id": answer_id}
                    if seq is not None:
                        message["seq"] = seq
                    if held is not None:
                        await self.send(held)
                        held = None
                    if event == "error":
                        held = {**message, "final": False, "error": data.get("error")}
                        continue
                    if event == "start":
                        if token is not None:
                            message["resume_token"] = token
                    elif event == "result":
                        message["result"] = data
                        ended = True
                        self.finished = id
                    else:
                        message.update(data)
                    await self.send(message)
                if self.broken:
                    return
        self.finished = id
        if held is not None:  # (a buffer always ends with [DONE]; in case it did not)
            held["final"] = True
            await self.send(held)


def parse_frames(data: bytes) -> Iterator[tuple[int | None, str | None, str]]:
    """``(seq, event, data)`` for each SSE frame in ``data`` (the replay buffer's own
    frames: one ``data:`` line each, whose JSON holds no line break)."""
    for block in data.decode("utf-8").split("\n\n"):
        seq: int | None = None
        event: str | None = None
        payload = ""
        for line in block.split("\n"):
            if line.startswith("data: "):
                payload = line[6:]
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                number = line.rpartition(":")[2]
                seq = int(number) if number.isdigit() else None
        if payload:
            yield seq, event, payload


def resume_ended(id: int, answer_id: str) -> dict[str, Any]:
    error = {
        "type": "ResumeError",
        "code": "resume_ended",
        "message": "nothing follows the event given as 'after': the answer ended there",
        "answer_id": answer_id,
    }
    return {"type": "error", "id": id, "answer_id": answer_id, "final": True, "error": error}


class WebSocketEndpoint:
    """The ASGI app behind ``/ws``."""

    def __init__(
        self,
        pipe: Pipeline,
        settings: WebSettings,
        slots: Slots,
        tools: ServerTools | None = None,
        answers: Answers | None = None,
    ) -> None:
        self.pipe = pipe
        self.settings = settings
        self.slots = slots
        self.tools = tools or ServerTools()
        #: the app's answers, shared with ``/stream`` (its replay buffers, Redis included)
        self.answers = answers or Answers(settings, slots)
        self.connections = 0
        #: the tasks relaying answers to the endpoint's connections
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
            await connection.close()  # the answer runs on (resume_grace), detached
