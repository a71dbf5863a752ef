"""``POST /v1/chat/completions``: any OpenAI client can consume a pipeline.

    client = AsyncOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="<token or anything>")
    stream = await client.chat.completions.create(model="m", messages=[...], stream=True)

The last message must be the user's, or the result of a tool the client ran
(``role: "tool"``); the earlier ones are sent as history
(``Pipeline.stream(history=...)``), assistant ``tool_calls`` and ``tool`` messages
included. ``model`` is echoed, not obeyed: the server's pipeline decides which
model runs (and so what a call costs). Fields this server does not use
(``presence_penalty``, ``user``, ``seed``, ``parallel_tool_calls``, ...) are
ignored; ``n`` other than 1, the legacy ``functions`` and a forced
``tool_choice`` are refused.

Reasoning streams as ``delta.reasoning_content`` (``message.reasoning_content``
without streaming), as DeepSeek and vLLM send it.

Tools, with standard OpenAI semantics (:mod:`pk_notebook.web.tools`):

* the request's ``tools`` are the *client's*: offered to the model, never run
  here. When the model calls one, the stream carries ``delta.tool_calls``
  fragments (``index``, ``id``, ``type: "function"``, ``function.name``, then
  ``function.arguments`` pieces) and ends with ``finish_reason: "tool_calls"``
  (without streaming: ``message.tool_calls``). The client runs the tool and sends
  the assistant message with its ``tool_calls`` and a ``tool`` message per result
  in its next request, which continues from them;
* the *server's* tools (``create_app(tools=...)``) run inside the turn and are
  not shown: the client sees the answer written from their results. A client
  tool may not take a server tool's name (422 ``ToolsNotAllowed``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from secrets import token_hex
from typing import Any

from ..runtime.errors import (
    AuthenticationError,
    PkNotebookError,
    RateLimitError,
    StreamTimeout,
)
from ..runtime.pipeline import Pipeline
from ..runtime.stream import Stream
from ..runtime.tools import ToolSpec
from ..runtime.types import (
    Chunk,
    Message,
    ProviderConfig,
    Result,
    ToolCall,
    ToolEvent,
    Usage,
)
from .security import (
    Slots,
    WebError,
    check_origin,
    check_prompt,
    check_token,
    error_dict,
    error_headers,
    log_unexpected,
    parse_json_body,
    read_body,
    status_for,
)
from .settings import WebSettings
from .sse import check_client_system, parse_options
from .streaming import DONE, dumps, run_sse, send_json, sse_event, watch_disconnect
from .tools import ServerTools, parse_client_tools

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def openai_error(exc: BaseException) -> dict[str, Any]:
    """An OpenAI-shaped error body; ``pk_notebook`` holds our typed payload."""
    detail = error_dict(exc)
    status = status_for(exc)
    if isinstance(exc, WebError) and status == 401:
        kind = "authentication_error"
    elif isinstance(exc, (RateLimitError,)) or status == 503:
        kind = "rate_limit_error" if isinstance(exc, RateLimitError) else "server_error"
    elif status in (400, 413, 415, 422):
        kind = "invalid_request_error"
    elif isinstance(exc, AuthenticationError):
        kind = "upstream_authentication_error"
    elif isinstance(exc, StreamTimeout):
        kind = "timeout"
    else:
        kind = "server_error"
    return {
        "error": {
            "message": detail.get("message", ""),
            "type": kind,
            "param": None,
            "code": detail.get("type"),
            "pk_notebook": detail,
        }
    }


def usage_dict(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise WebError(
                    422, "InvalidRequest", f"{where}: only text content parts are supported"
                )
            parts.append(part["text"])
        return "".join(parts)
    raise WebError(
        422, "InvalidRequest", f"{where}: content must be a string or a list of text parts"
    )


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``/v1/chat/completions`` request.

    ``message`` is the last message (the user's, or the result of a tool the
    client ran), ``history`` the ones before it; ``tools`` the client's tools, as
    specs without a function.
    """

    model: str
    message: Message
    history: list[Message]
    config: ProviderConfig | None
    stream: bool
    include_usage: bool
    tools: tuple[ToolSpec, ...] = ()


def _tool_calls_of(value: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's ``tool_calls`` (OpenAI format) as :class:`ToolCall`s."""
    if not isinstance(value, list):
        raise WebError(422, "InvalidRequest", f"{where}.tool_calls must be a list")
    calls: list[ToolCall] = []
    for j, item in enumerate(value):
        function = item.get("function") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or item.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(item.get("id"), str)
        ):
            raise WebError(
                422,
                "InvalidRequest",
                f'{where}.tool_calls[{j}] must be {{"id": ..., "type": "function", '
                '"function": {"name": ..., "arguments": "..."}}',
            )
        arguments = function.get("arguments")
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = dumps(arguments)  # lenient: an object instead of its JSON text
        calls.append(ToolCall(item["id"], function["name"], arguments))
    return tuple(calls)


def _message_of(item: Any, i: int, settings: WebSettings, names: dict[str, str]) -> Message:
    """One OpenAI message as a :class:`Message` (``names``: call id -> tool name so far)."""
    where = f"messages[{i}]"
    if not isinstance(item, dict):
        raise WebError(422, "InvalidRequest", f"{where} must be an object")
    role = item.get("role")
    role = "system" if role == "developer" else role
    if role not in ("system", "user", "assistant", "tool"):
        raise WebError(422, "InvalidRequest", f"{where}: unsupported role {role!r}")
    if role == "system":
        check_client_system(settings)  # the same rule as /stream's options.system
    text = _text_of(item.get("content"), where)
    if len(text) > settings.max_prompt_chars:
        check_prompt(text, settings, f"{where}.content")
    if role == "tool":
        call_id = item.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise WebError(422, "InvalidRequest", f"{where}: a tool message needs 'tool_call_id'")
        name = item.get("name")
        name = name if isinstance(name, str) and name else names.get(call_id)
        return Message("tool", text, tool_call_id=call_id, name=name)
    if role == "assistant":
        calls = _tool_calls_of(item["tool_calls"], where) if item.get("tool_calls") else ()
        names.update((call.id, call.name) for call in calls)
        reasoning = item.get("reasoning_content")
        return Message(
            "assistant",
            text,
            tool_calls=calls,
            reasoning=reasoning if isinstance(reasoning, str) else "",
        )
    return Message(role, text)  # type: ignore[arg-type]


def parse_chat_request(
    data: dict[str, Any], settings: WebSettings, server: ServerTools | None = None
) -> ChatRequest:
    model = data.get("model") or "pk-notebook"
    if not isinstance(model, str) or len(model) > 200:
        raise WebError(422, "InvalidRequest", "'model' must be a short string")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WebError(422, "InvalidRequest", "'messages' must be a non-empty list")
    if len(messages) > settings.max_messages:
        raise WebError(
            422, "InvalidRequest", f"at most {settings.max_messages} messages are accepted"
        )
    if data.get("n") not in (None, 1):
        raise WebError(422, "InvalidRequest", "only n=1 is supported")
    if data.get("functions") or data.get("function_call"):
        raise WebError(
            422, "InvalidRequest", "the legacy 'functions' are not supported: send 'tools'"
        )
    tools = parse_client_tools(data.get("tools"), data.get("tool_choice"), server or ServerTools())
    names: dict[str, str] = {}
    history = [_message_of(item, i, settings, names) for i, item in enumerate(messages)]
    last = history.pop()
    if last.role == "user":
        check_prompt(last.content, settings, "the last message's content")
    elif last.role != "tool":
        raise WebError(
            422, "InvalidRequest", "the last message must be the user's or a tool result"
        )
    options: dict[str, Any] = {}
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", data.get("temperature")),
        ("top_p", data.get("top_p")),
        ("stop", data.get("stop")),
    ):
        if value is not None and name in settings.client_options:
            options[name] = value
    config = parse_options(options, settings) if options else None
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise WebError(422, "InvalidRequest", "'stream' must be true or false")
    stream_options = data.get("stream_options") or {}
    include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))
    return ChatRequest(model, last, history, config, stream, include_usage, tools)


def start_turn(pipe: Pipeline, request: ChatRequest, server: ServerTools) -> Stream:
    """The turn for a request: the server's tools and the client's, with its history.

    A request that ends with a tool result continues the client's turn from it
    (the whole message is the turn's last).
    """
    options = server.stream_options(request.tools)
    return pipe.stream(request.message, config=request.config, history=request.history, **options)


def client_calls(result: Result, names: frozenset[str]) -> list[ToolCall]:
    """The calls of ``result`` the client is to run (its own tools), each with an id.

    The server's tools never appear: their calls ran inside the turn. (In the rare
    round where the model called both kinds, the turn hands every call back: the
    server's are dropped here, and the model may ask for them again.)
    """
    if not names:
        return []
    return [
        call if call.id else ToolCall("call_" + token_hex(12), call.name, call.arguments)
        for call in result.tool_calls
        if call.name in names
    ]


def _finish_reason(result: Result, calls: list[ToolCall]) -> str:
    if calls:
        return "tool_calls"
    reason = _FINISH_REASONS.get(result.finish_reason or "stop", "stop")
    # Calls the server ran (or dropped after max_tool_rounds) are not the client's to run.
    return "stop" if reason == "tool_calls" else reason


def _call_fragment(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


class _StreamedCall:
    __slots__ = ("arguments", "id", "index", "sent")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id = ""
        self.arguments = ""
        self.sent = False


class ChunkEncoder:
    """``chat.completion.chunk`` events: content (and ``reasoning_content``) chunks, the
    client's tool calls as ``tool_calls`` fragments, a finish chunk, an optional usage
    chunk, then ``[DONE]``. The first delta carries ``role``.

    A call to one of the client's tools (``client_tools``, names) streams as OpenAI
    streams it: a first fragment with ``index``, ``id``, ``type`` and
    ``function.name``, then ``function.arguments`` pieces; the finish reason is then
    ``"tool_calls"``. Calls to the server's own tools are not shown.
    """

    def __init__(
        self, model: str, include_usage: bool, client_tools: frozenset[str] = frozenset()
    ) -> None:
        self.id = "chatcmpl-" + token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self.client_tools = client_tools
        self._role_sent = False
        self._calls: dict[tuple[int, int], _StreamedCall] = {}
        self._head = (
            f'{{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{dumps(model)},"system_fingerprint":null,"choices":'
        )

    def _event(self, choices: str, usage: str = "") -> bytes:
        return f"data: {self._head}{choices}{usage}}}\n\n".encode()

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not self._role_sent:
            self._role_sent = True
            delta = {"role": "assistant", **delta}
        reason = "null" if finish is None else f'"{finish}"'
        return self._event(
            f'[{{"index":0,"delta":{dumps(delta)},"logprobs":null,"finish_reason":{reason}}}]'
        )

    def chunk(self, chunk: Chunk) -> bytes:
        if chunk.tool is not None:
            return self._tool(chunk.tool)
        delta: dict[str, Any] = {"content": chunk.content}
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        return self._delta(delta)

    def _tool(self, event: ToolEvent) -> bytes:
        if event.name not in self.client_tools or event.kind not in ("start", "arguments"):
            return b""  # the server's tools run inside the turn, unseen by the client
        key = (event.round, event.index)
        call = self._calls.get(key)
        if call is None:
            call = self._calls[key] = _StreamedCall(len(self._calls))
        if call.sent:
            if not event.delta:
                return b""
            call.arguments += event.delta
            return self._delta(
                {"tool_calls": [{"index": call.index, "function": {"arguments": event.delta}}]}
            )
        if not event.call_id:
            return b""  # no id yet: the call is sent whole at the end
        call.sent = True
        call.id = event.call_id
        call.arguments = event.arguments
        fragment = _call_fragment(call.index, call.id, event.name, event.arguments)
        return self._delta({"tool_calls": [fragment]})

    def _rest_of_calls(self, calls: list[ToolCall]) -> bytes:
        """What the client has not seen of its calls: calls never streamed (no id, or
        no fragments from the provider), and arguments past what was streamed."""
        out = b""
        streamed = {c.id: c for c in self._calls.values() if c.sent}
        index = len(self._calls)
        for call in calls:
            seen = streamed.get(call.id)
            if seen is None:
                fragment = _call_fragment(index, call.id, call.name, call.arguments)
                index += 1
                out += self._delta({"tool_calls": [fragment]})
            elif len(call.arguments) > len(seen.arguments) and call.arguments.startswith(
                seen.arguments
            ):
                rest = call.arguments[len(seen.arguments) :]
                out += self._delta(
                    {"tool_calls": [{"index": seen.index, "function": {"arguments": rest}}]}
                )
        return out

    def end(self, result: Result) -> bytes:
        if result.error is not None or not result.complete:
            error = result.error
            if error is None:
                error = PkNotebookError(f"the stream ended early ({result.status.value})")
            return sse_event(dumps(self.error_body(error))) + DONE
        calls = client_calls(result, self.client_tools)
        out = self._rest_of_calls(calls) if calls else b""
        out += self._delta({}, _finish_reason(result, calls))
        if self.include_usage:
            out += self._event("[]", f',"usage":{dumps(usage_dict(result.usage))}')
        return out + DONE

    def error_body(self, exc: BaseException) -> Any:
        body = openai_error(exc)
        partial = getattr(exc, "partial_text", None)
        if partial:
            body["error"]["partial_text"] = partial
        return body


def completion_dict(
    model: str, result: Result, client_tools: frozenset[str] = frozenset()
) -> dict[str, Any]:
    calls = client_calls(result, client_tools)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ]
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    return {
        "id": "chatcmpl-" + token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(result, calls),
            }
        ],
        "usage": usage_dict(result.usage),
    }


class ChatCompletionsEndpoint:
    """The ASGI app behind ``POST /v1/chat/completions``."""

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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.settings
        try:
            check_origin(scope, settings)
            check_token(scope, settings, query_ok=False)
            body = await read_body(scope, receive, settings.max_body_bytes, settings.read_timeout)
            data = parse_json_body(scope, body)
            request = parse_chat_request(data, settings, self.tools)
            stream = start_turn(self.pipe, request, self.tools)
            holder = await self.slots.enter()
        except WebError as exc:
            if exc.status != 499:
                await send_json(send, exc.status, openai_error(exc), exc.headers)
            return
        except PkNotebookError as exc:  # the pipeline is shutting down
            await send_json(send, status_for(exc), openai_error(exc), error_headers(exc))
            return
        client_tools = frozenset(spec.name for spec in request.tools)
        try:
            if request.stream:
                await run_sse(
                    send,
                    receive,
                    stream,
                    ChunkEncoder(request.model, request.include_usage, client_tools),
                    heartbeat=settings.heartbeat,
                    write_timeout=settings.write_timeout,
                )
            else:
                await self._complete(send, receive, stream, request.model, client_tools)
        finally:
            await self.slots.leave(holder)

    async def _complete(
        self,
        send: Any,
        receive: Any,
        stream: Stream,
        model: str,
        client_tools: frozenset[str],
    ) -> None:
        async def work() -> Result:
            async with stream:  # errors before the first chunk raise here: a real status
                try:
                    async for _ in stream:
                        pass
                except PkNotebookError:
                    pass  # a failure midway is on the result
            return await stream.wait_closed()

        task = asyncio.ensure_future(work())
        gone = asyncio.ensure_future(watch_disconnect(receive))
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task not in done:
                return  # the client left: the finally clause stops the stream
            try:
                result = task.result()
            except Exception as exc:
                log_unexpected(exc, "a chat completion")
                await send_json(send, status_for(exc), openai_error(exc), error_headers(exc))
                return
            if not result.complete:
                error = result.error or WebError(
                    503, "Stopped", "the server stopped the answer (it is shutting down)"
                )
                body = openai_error(error)
                body["error"]["partial_text"] = result.text
                await send_json(send, status_for(error), body, error_headers(error))
                return
            await send_json(send, 200, completion_dict(model, result, client_tools))
        finally:
            stream.stop()  # the client left (or we are done): a no-op once ended
            gone.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)
            await stream.aclose()
