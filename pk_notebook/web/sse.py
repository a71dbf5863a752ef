"""``GET /stream?prompt=...`` and ``POST /stream``: a pipeline answer as Server-Sent Events.

POST takes JSON ``{"prompt": "...", "session": "id", "options": {"max_tokens": 200}}``;
GET takes ``prompt`` and ``session`` query parameters (for ``EventSource``). With a
session, the session's history is sent along and the turn is saved (a turn cut
short by the client is saved marked as interrupted).

The events (the table in :mod:`pk_notebook.web`), each with an ``id:`` line
``{answer_id}:{n}``::

    event: start     data: {"answer_id": "3f2c..."}
    event: reasoning data: {"index": 0, "text": "The user wants..."}
    event: tool      data: {"kind": "start", "call_id": "c1", "name": "get_weather", ...}
    event: chunk     data: {"index": 0, "content": "Hello"}
    event: error     data: {"error": {"type": "ProviderError", "message": ..., "partial_text": ...}}
    event: result    data: {"text": ..., "status": "finished", "finish_reason": "stop", ...}
    data: [DONE]

Resume: the answer runs detached (:mod:`pk_notebook.web.answers`); a request with
``Last-Event-ID: {answer_id}:{n}`` (``EventSource`` sends it when it reconnects to
the same URL; the prompt is then ignored) or ``?answer_id=...&after=n`` gets the
events after ``n``. ``POST /stream/{answer_id}/stop`` stops an answer (200
``{"answer_id", "stopped", "state"}``; 404 ``UnknownAnswer``).

Tools are the server's (``create_app(tools=...)``); a request naming ``tools``
is refused (:func:`~pk_notebook.web.tools.refuse_client_tools`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..runtime.errors import ConfigurationError, PkNotebookError
from ..runtime.pipeline import Pipeline
from ..runtime.store import check_session_id
from ..runtime.types import ProviderConfig
from . import logs
from .answers import Answer, Answers, check_answer_id, parse_event_id
from .security import (
    Slots,
    WebError,
    check_origin,
    check_prompt,
    check_token,
    error_headers,
    header,
    parse_json_body,
    query_params,
    read_body,
    status_for,
)
from .settings import WebSettings
from .streaming import NativeEncoder, _Writer, send_json, watch_disconnect
from .tools import ServerTools, refuse_client_tools


def check_client_system(settings: WebSettings) -> None:
    """Refuse a client's system prompt unless the operator allowed it.

    The one rule for every endpoint (``/stream`` and ``/ws`` ``options.system``,
    ``/v1`` ``system``/``developer`` messages): a client that could send its own
    system prompt could replace the operator's.
    """
    if settings.client_system != "allow":
        raise WebError(
            422,
            "SystemPromptNotAllowed",
            "this server does not accept a system prompt from clients (the operator's "
            "applies); remove it, or start the server with --client-system allow "
            "(WebSettings(client_system='allow'))",
        )


def parse_options(options: Any, settings: WebSettings) -> ProviderConfig | None:
    """Per-request sampling options, limited to ``settings.client_options``."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise WebError(422, "InvalidRequest", "'options' must be a JSON object")
    if "system" in options:
        check_client_system(settings)
    allowed = settings.client_options | {"system"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise WebError(
            422,
            "InvalidRequest",
            f"unsupported option(s) {unknown}; allowed: {sorted(settings.client_options)}",
        )
    values = {k: v for k, v in options.items() if v is not None}
    stop = values.get("stop")
    if isinstance(stop, str):
        values["stop"] = (stop,)
    elif stop is not None and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise WebError(422, "InvalidRequest", "'stop' must be a string or a list of strings")
    for name in ("temperature", "top_p"):
        if name in values and (
            isinstance(values[name], bool) or not isinstance(values[name], (int, float))
        ):
            raise WebError(422, "InvalidRequest", f"'{name}' must be a number")
    if "model" in values and not isinstance(values["model"], str):
        raise WebError(422, "InvalidRequest", "'model' must be a string")
    if "system" in values and not isinstance(values["system"], str):
        raise WebError(422, "InvalidRequest", "'system' must be a string")
    if "system" in values and len(values["system"]) > settings.max_prompt_chars:
        raise WebError(422, "PromptTooLong", "the system prompt is longer than the prompt limit")
    try:
        return ProviderConfig(**values)
    except (ConfigurationError, TypeError, ValueError) as exc:
        raise WebError(422, "InvalidRequest", str(exc)) from None


def parse_session(session: Any) -> str | None:
    if session is None or session == "":
        return None
    if not isinstance(session, str):
        raise WebError(422, "InvalidRequest", "'session' must be a string")
    try:
        return check_session_id(session)
    except ConfigurationError as exc:
        raise WebError(422, "InvalidRequest", str(exc)) from None


class StreamEndpoint:
    """The ASGI app behind ``/stream`` (raw ASGI: it needs ``receive`` for disconnects).

    A new answer runs detached (:class:`~pk_notebook.web.answers.Answer`); this
    connection, like any resuming one, only reads its frames.
    """

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
        self.encoder = NativeEncoder()
        self.answers = answers or Answers(settings, slots)
        self.extra_headers: tuple[tuple[bytes, bytes], ...] = ()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.settings
        if scope["method"] not in ("GET", "POST"):
            # Starlette adds HEAD to GET routes; a HEAD must not start a paid call.
            await send_json(
                send,
                405,
                {"error": {"type": "MethodNotAllowed", "message": "use GET or POST"}},
                {"Allow": "GET, POST"},
            )
            return
        try:
            check_origin(scope, settings)
            get = scope["method"] == "GET"
            check_token(scope, settings, query_ok=get)
            query = query_params(scope)
            resume = resume_target(scope, query)
            if resume is not None:
                await self.serve(send, receive, self.answers.follow(*resume), None)
                return
            if get:
                refuse_client_tools(query)
                data: dict[str, Any] = {
                    name: values[0] for name in ("prompt", "session") if (values := query.get(name))
                }
            else:
                body = await read_body(
                    scope, receive, settings.max_body_bytes, settings.read_timeout
                )
                data = parse_json_body(scope, body)
            refuse_client_tools(data)
            prompt = check_prompt(data.get("prompt"), settings)
            session = parse_session(data.get("session", data.get("session_id")))
            config = parse_options(data.get("options"), settings)
            stream = self.pipe.stream(
                prompt, session=session, config=config, **self.tools.stream_options()
            )
            holder = await self.slots.enter()
        except WebError as exc:
            if exc.status != 499:
                await send_json(send, exc.status, {"error": exc.to_dict()}, exc.headers)
            return
        except PkNotebookError as exc:  # the pipeline is shutting down
            await send_json(send, status_for(exc), self.encoder.error_body(exc), error_headers(exc))
            return
        await self.run_answer(send, receive, stream, holder)

    async def run_answer(
        self,
        send: Any,
        receive: Any,
        stream: Any,
        holder: Any,
        encoder: Any = None,
        chat_id: str | None = None,
    ) -> None:
        """Start ``stream`` as a detached answer and serve it to this client."""
        try:
            answer = await self.answers.start(stream, holder, encoder=encoder, chat_id=chat_id)
        except BaseException:
            await stream.aclose()
            await self.slots.leave(holder)
            raise
        answer.attach()
        try:
            await self.serve(
                send, receive, self.answers.follow(answer.id, 0, attached=True), answer
            )
        finally:
            answer.detach()

    async def serve(
        self, send: Any, receive: Any, frames: AsyncGenerator[bytes, None], answer: Answer | None
    ) -> None:
        """Write ``frames`` as the SSE response until they end or the client leaves.

        For a new ``answer``, the response starts once its stream opened, or after one
        heartbeat interval: a failure to open before then is answered as JSON with a
        real HTTP status, like before answers were resumable.
        """
        settings = self.settings
        writer = _Writer(send, settings.write_timeout)
        gone: asyncio.Task[None] = asyncio.ensure_future(watch_disconnect(receive))
        beat: asyncio.Task[None] | None = None
        pump: asyncio.Task[None] | None = None
        try:
            if answer is not None:
                waits: set[asyncio.Future[Any]] = {answer.opened, gone}
                await asyncio.wait(
                    waits,
                    timeout=settings.heartbeat,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if gone.done():
                    return
                failed = answer.opened.result() if answer.opened.done() else None
                if failed is not None:
                    await send_json(
                        send,
                        status_for(failed),
                        self.encoder.error_body(failed),
                        error_headers(failed),
                    )
                    return
            await writer.start(self.extra_headers)
            if settings.heartbeat is not None:
                beat = asyncio.ensure_future(writer.heartbeat(settings.heartbeat))
            pump = asyncio.ensure_future(_pump(frames, writer))
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            writer.broken = True
        finally:
            if writer.timed_out:
                logs.quiet(
                    "a client read nothing for %g s; it was detached from its answer and "
                    "the connection closed",
                    settings.write_timeout,
                )
            tasks = [t for t in (pump, beat, gone) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await frames.aclose()  # detaches the reader (a new answer: its first reader)


async def _pump(frames: AsyncGenerator[bytes, None], writer: _Writer) -> None:
    try:
        async for data in frames:
            await writer.write(data)
            if writer.broken:
                return
        await writer.finish()
    except OSError:
        writer.broken = True


def resume_target(scope: Any, query: Mapping[str, list[str]]) -> tuple[str, int] | None:
    """The answer and event a request resumes after, or None for a new answer.

    ``Last-Event-ID: {answer_id}:{n}`` (what ``EventSource`` sends when it reconnects),
    or ``?answer_id=...&after=n`` (``after`` 0 or absent: from the start; a plain
    ``Last-Event-ID: n`` with ``?answer_id=`` works too).
    """
    answer_id, after = parse_event_id(header(scope, b"last-event-id"))
    if answer_id is None:
        values = query.get("answer_id")
        if not values:
            return None
        answer_id = check_answer_id(values[0])
        if answer_id is None:
            raise WebError(422, "InvalidRequest", "'answer_id' is not an answer id")
        if after is None:
            raw = (query.get("after") or ["0"])[0]
            if not raw.isdigit() or len(raw) > 12:
                raise WebError(422, "InvalidRequest", "'after' must be an event number")
            after = int(raw)
    return answer_id, after or 0


class StopEndpoint:
    """``POST /stream/{answer_id}/stop``: stop an answer, in whichever process runs it."""

    def __init__(self, settings: WebSettings, answers: Answers) -> None:
        self.settings = settings
        self.answers = answers

    async def handle(self, request: Request) -> Response:
        check_origin(request.scope, self.settings)
        check_token(request.scope, self.settings, query_ok=False)
        answer_id = check_answer_id(request.path_params.get("answer_id"))
        state = await self.answers.stop(answer_id) if answer_id is not None else None
        if state is None:
            raise WebError(
                404, "UnknownAnswer", "no such answer (or it ended and its buffer expired)"
            )
        return JSONResponse(
            {"answer_id": answer_id, "stopped": state == "running", "state": state},
            headers={"Cache-Control": "no-store"},
        )
