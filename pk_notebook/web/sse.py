"""``GET /stream?prompt=...`` and ``POST /stream``: a pipeline answer as Server-Sent Events.

POST takes JSON ``{"prompt": "...", "session": "id", "options": {"max_tokens": 200}}``;
GET takes ``prompt`` and ``session`` query parameters (for ``EventSource``). With a
session, the session's history is sent along and the turn is saved (a turn cut
short by the client is saved marked as interrupted).

The events (see :class:`~pk_notebook.web.streaming.NativeEncoder`, and the table
in :mod:`pk_notebook.web`)::

    event: reasoning data: {"index": 0, "text": "The user wants..."}
    event: tool      data: {"kind": "start", "call_id": "c1", "name": "get_weather", ...}
    event: chunk     data: {"index": 0, "content": "Hello"}
    event: error     data: {"error": {"type": "ProviderError", "message": ..., "partial_text": ...}}
    event: result    data: {"text": ..., "status": "finished", "finish_reason": "stop", ...}
    data: [DONE]

Tools are the server's (``create_app(tools=...)``); a request naming ``tools``
is refused (:func:`~pk_notebook.web.tools.refuse_client_tools`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..runtime.errors import ConfigurationError, PkNotebookError
from ..runtime.pipeline import Pipeline
from ..runtime.store import check_session_id
from ..runtime.types import ProviderConfig
from .security import (
    Slots,
    WebError,
    check_origin,
    check_prompt,
    check_token,
    error_headers,
    parse_json_body,
    query_params,
    read_body,
    status_for,
)
from .settings import WebSettings
from .streaming import NativeEncoder, run_sse, send_json
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
    """The ASGI app behind ``/stream`` (raw ASGI: it needs ``receive`` for disconnects)."""

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
        self.encoder = NativeEncoder()

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
            if get:
                query = query_params(scope)
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
            self.slots.acquire()
        except WebError as exc:
            if exc.status != 499:
                await send_json(send, exc.status, {"error": exc.to_dict()}, exc.headers)
            return
        except PkNotebookError as exc:  # the pipeline is shutting down
            await send_json(send, status_for(exc), self.encoder.error_body(exc), error_headers(exc))
            return
        try:
            await run_sse(
                send,
                receive,
                stream,
                self.encoder,
                heartbeat=settings.heartbeat,
                write_timeout=settings.write_timeout,
            )
        finally:
            self.slots.release()
