"""``POST /api/chat``: the Vercel AI SDK's UI message stream protocol (v1).

A ``useChat`` front end (``@ai-sdk/react``, ``@ai-sdk/vue``, ...; its default
``DefaultChatTransport`` posts to ``/api/chat``), marimo's chat, or anything that
reads the protocol with the ``ai`` package (``readUIMessageStream``) can drive a
pipeline::

    const { messages, sendMessage } = useChat({
      transport: new DefaultChatTransport({ api: "http://127.0.0.1:8080/api/chat",
                                            headers: { Authorization: "Bearer ..." } }),
    });

The request is what ``useChat`` sends: ``{"id": chat_id, "messages": [UIMessage,
...]}``, each message ``{"id", "role", "parts": [{"type": "text", "text": ...},
...]}``. The last message must be the user's (its text parts are the prompt,
its ``file`` parts the attachments; files alone are a question too); the earlier
ones are the history. Nothing is kept in the session store: the client holds
the conversation, and its history is taken as it is sent, as on ``/v1`` (a
client can write any earlier answer, tool call or result; the server runs its
tools only for calls the model makes in this turn). From the history:

* text parts, and ``file`` parts of user messages (below);
* an assistant message step by step, as the runtime keeps a turn with tools:
  its text and reasoning up to a step's tool parts (``tool-NAME`` or
  ``dynamic-tool``, as :class:`UIMessageEncoder` sends them and
  ``readUIMessageStream`` assembles them) become one assistant
  :class:`~pk_notebook.runtime.types.Message` with those ``tool_calls``, followed
  by one ``role="tool"`` message per call in the parts' order: the ``output``
  (JSON text unless a string) for ``output-available``, the ``errorText`` as an
  error for ``output-error``, and an error saying the user declined for
  ``output-denied``. A call without a result (``input-streaming``,
  ``input-available``, ``approval-*``: the turn ended before it came) is kept
  and paired with an error result, :data:`NOT_ANSWERED`: providers refuse a call
  without its result, and the model should know it asked and got nothing.
  Reasoning is kept as the message's reasoning (each provider sends it back only
  where its API takes unsigned thinking); ``step-start``, sources, ``data-*``
  parts and an assistant's files are left out.

``file`` parts (``{"type": "file", "mediaType", "url", "filename"?}``) must carry
their bytes as a ``data:`` URL (what ``useChat``'s ``sendMessage({files})``
makes of a ``FileList``): the server never fetches a URL a client names (that
would let any client make it reach internal addresses), so an ``http(s)`` URL
is refused. Types and sizes are the runtime's
(:mod:`pk_notebook.runtime.attachments`: PNG, JPEG, GIF, WebP, PDF); the whole
request is capped by ``max_body_bytes`` first, and the provider's own caps and
kinds apply when the turn opens (422 with what to do).

A malformed message or part is refused with 422 ``InvalidRequest`` naming it and
the field (``messages[1].parts[3].toolCallId must be a non-empty string``),
before anything reaches the provider: the project's status for a request that
parsed but is not valid, as elsewhere on this endpoint and on ``/v1``.

The response (header ``x-vercel-ai-ui-message-stream: v1``) is SSE, one JSON part
per ``data:`` line, then ``data: [DONE]``::

    {"type": "start", "messageId": "msg-<answer_id>", "messageMetadata": {"answerId": ...}}
    {"type": "start-step"}
    {"type": "reasoning-start", "id": "reasoning-1"} / reasoning-delta / reasoning-end
    {"type": "text-start", "id": "text-1"} / {"type": "text-delta", "id": ..., "delta": ...}
    {"type": "tool-input-start", "toolCallId", "toolName", "dynamic": true}
    {"type": "tool-input-delta", "toolCallId", "inputTextDelta"}
    {"type": "tool-input-available", "toolCallId", "toolName", "input", "dynamic": true}
    {"type": "tool-output-available", "toolCallId", "output", "dynamic": true}
      (or tool-output-error with errorText, or tool-output-denied)
    {"type": "finish-step"}            (a new step starts after tool results)
    {"type": "error", "errorText": ...}   (the answer failed midway)
    {"type": "finish", "finishReason": "stop", "messageMetadata": {"usage": {...},
     "status": "finished", "answerId": ...}}

Tools are the server's own (dynamic tool parts: the client did not declare
them). The answer runs detached like a ``/stream`` answer: a dropped connection
does not end it for ``resume_grace`` seconds, and ``GET /api/chat/{chat_id}/stream``
(what ``useChat({resume: true})`` calls) replays the chat's latest answer from
its start and follows it (204 when there is none); ``POST /stream/{answer_id}/stop``
stops it.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response

from ..runtime.attachments import Attachment
from ..runtime.errors import ConfigurationError, PkNotebookError
from ..runtime.pipeline import Pipeline
from ..runtime.toolrun import DENIED
from ..runtime.tools import check_tool_name
from ..runtime.types import Chunk, Message, Result, ToolCall
from .answers import Answers
from .security import (
    Slots,
    WebError,
    check_origin,
    check_prompt,
    check_token,
    error_dict,
    error_headers,
    parse_json_body,
    read_body,
    status_for,
)
from .settings import WebSettings
from .sse import StreamEndpoint, check_client_system
from .streaming import dumps, send_json
from .tools import ServerTools, refuse_client_tools

#: the response header that marks the protocol
UI_STREAM_HEADER = (b"x-vercel-ai-ui-message-stream", b"v1")

_CHAT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_chat_id(value: Any) -> str | None:
    """A ``useChat`` chat id usable as a key (``generateId``'s ids are), else None."""
    return value if isinstance(value, str) and _CHAT_ID.fullmatch(value) else None


_FINISH = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool-calls",
    "tool_use": "tool-calls",
    "content_filter": "content-filter",
}


def _usage(result: Result) -> dict[str, Any] | None:
    usage = result.usage
    if usage is None:
        return None
    return {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.total_tokens,
        "reasoningTokens": usage.reasoning_tokens,
        "cachedInputTokens": usage.cached_tokens,
        "estimated": usage.estimated,
    }


class UIMessageEncoder:
    """A turn's chunks as UI message stream parts (JSON texts, one per ``data:`` line)."""

    def __init__(self) -> None:
        self.answer_id = ""
        self._open: str | None = None  # the id of the open text or reasoning part
        self._count = 0
        self._calls: dict[tuple[int, int], str] = {}
        self._after_tools = False

    def _close(self) -> list[str]:
        if self._open is None:
            return []
        part_id, self._open = self._open, None
        kind = "text-end" if part_id.startswith("text") else "reasoning-end"
        return [dumps({"type": kind, "id": part_id})]

    def _next_step(self) -> list[str]:
        """After a round's tool results, the next model call is a new step."""
        if not self._after_tools:
            return []
        self._after_tools = False
        return [*self._close(), '{"type":"finish-step"}', '{"type":"start-step"}']

    def _delta(self, kind: str, delta: str) -> list[str]:
        out = self._next_step()
        if self._open is None or not self._open.startswith(kind):
            out += self._close()
            self._count += 1
            self._open = f"{kind}-{self._count}"
            out.append(dumps({"type": f"{kind}-start", "id": self._open}))
        out.append(dumps({"type": f"{kind}-delta", "id": self._open, "delta": delta}))
        return out

    def start(self, answer_id: str) -> list[str]:
        self.answer_id = answer_id
        return [
            dumps(
                {
                    "type": "start",
                    "messageId": f"msg-{answer_id}",
                    "messageMetadata": {"answerId": answer_id},
                }
            ),
            '{"type":"start-step"}',
        ]

    def chunk(self, chunk: Chunk) -> list[str]:
        event = chunk.tool
        if event is None:
            out: list[str] = []
            if chunk.reasoning:
                out += self._delta("reasoning", chunk.reasoning)
            if chunk.content:
                out += self._delta("text", chunk.content)
            return out
        key = (event.round, event.index)
        call_id = self._calls.get(key)
        if call_id is None:
            call_id = self._calls[key] = event.call_id or f"call-{event.round}-{event.index}"
        common = {"toolCallId": call_id, "dynamic": True}
        kind = event.kind
        if kind == "start":
            return [
                *self._next_step(),
                *self._close(),
                dumps({"type": "tool-input-start", "toolName": event.name, **common}),
            ]
        if kind == "arguments":
            if not event.delta:
                return []
            return [
                dumps(
                    {
                        "type": "tool-input-delta",
                        "toolCallId": call_id,
                        "inputTextDelta": event.delta,
                    }
                )
            ]
        if kind == "call":
            try:
                arguments = json.loads(event.arguments) if event.arguments else {}
            except ValueError:
                arguments = event.arguments
            return [
                *self._close(),
                dumps(
                    {
                        "type": "tool-input-available",
                        "toolName": event.name,
                        "input": arguments,
                        **common,
                    }
                ),
            ]
        self._after_tools = kind != "running"
        if kind == "result":
            return [dumps({"type": "tool-output-available", "output": event.output, **common})]
        if kind == "denied":
            return [dumps({"type": "tool-output-denied", "toolCallId": call_id})]
        if kind in ("error", "stopped"):
            text = event.output or ("stopped" if kind == "stopped" else "the tool failed")
            return [dumps({"type": "tool-output-error", "errorText": text, **common})]
        return []

    def end(self, result: Result, data: dict[str, Any]) -> list[str]:
        out = self._close()
        if data["error"] is not None:
            error = data["error"]
            out.append(
                dumps({"type": "error", "errorText": f"{error['type']}: {error['message']}"})
            )
        if result.complete:
            reason = _FINISH.get(result.finish_reason or "stop", "other")
        else:
            reason = "error" if data["error"] is not None else "other"
        metadata = {
            "answerId": self.answer_id,
            "status": result.status.value,
            "usage": _usage(result),
            "model": data.get("model"),
        }
        if data.get("stop_reason"):
            metadata["stopReason"] = data["stop_reason"]
        out.append('{"type":"finish-step"}')
        out.append(dumps({"type": "finish", "finishReason": reason, "messageMetadata": metadata}))
        return out

    def failed(self, exc: BaseException) -> list[str]:
        error = error_dict(exc)
        return [
            dumps({"type": "error", "errorText": f"{error['type']}: {error['message']}"}),
            dumps({"type": "finish", "finishReason": "error"}),
        ]


def _invalid(message: str) -> WebError:
    return WebError(422, "InvalidRequest", message)


def _check_length(text: str, settings: WebSettings, field: str) -> None:
    if len(text) > settings.max_prompt_chars:
        check_prompt(text, settings, field)  # raises PromptTooLong


def _part_kind(part: Any, where: str) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _invalid(f"{where} must be an object with a string 'type'")
    kind: str = part["type"]
    return kind


def _part_text(part: dict[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{where}.text must be a string (a {part['type']} part)")
    return text


def _is_tool_part(kind: str) -> bool:
    return kind == "dynamic-tool" or kind.startswith("tool-")


#: tool part states with a result, and those of a call never answered
_ANSWERED = ("output-available", "output-error", "output-denied")
_UNANSWERED = ("input-streaming", "input-available", "approval-requested", "approval-responded")
#: the result sent with an earlier call that has none (the turn ended before it came)
NOT_ANSWERED = "This tool call was not answered: the turn ended before its result arrived."


def _tool_part(
    part: dict[str, Any], where: str, settings: WebSettings, seen: set[str]
) -> tuple[ToolCall, Message]:
    """An earlier tool part as the call and its ``tool`` result message.

    A call without a result (``input-streaming``, ``input-available``,
    ``approval-*``) is paired with an error result, :data:`NOT_ANSWERED`:
    providers refuse a call without its result, and the model should know it
    asked and got nothing.
    """
    kind = part["type"]
    name: Any = part.get("toolName") if kind == "dynamic-tool" else kind[5:]
    field = f"{where}.toolName" if kind == "dynamic-tool" else f"{where}.type (tool-NAME)"
    try:
        name = check_tool_name(name)
    except ConfigurationError:
        raise _invalid(
            f"{field} must name the tool: 1-64 letters, digits, '_' or '-', got {name!r}"
        ) from None
    call_id = part.get("toolCallId")
    if not isinstance(call_id, str) or not call_id or len(call_id) > 256:
        raise _invalid(f"{where}.toolCallId must be a non-empty string (at most 256 characters)")
    if call_id in seen:
        raise _invalid(f"{where}.toolCallId {call_id!r} is already used by an earlier tool part")
    seen.add(call_id)
    state = part.get("state")
    if state not in _ANSWERED and state not in _UNANSWERED:
        raise _invalid(
            f"{where}.state must be one of {', '.join(_ANSWERED + _UNANSWERED)}, got {state!r}"
        )
    raw = part.get("input")
    # a string is the arguments' text as the model wrote it (what this server sends
    # when they are not JSON); anything else is the parsed arguments
    arguments = raw if isinstance(raw, str) else dumps({} if raw is None else raw)
    _check_length(arguments, settings, f"{where}.input")
    status: str | None = None
    content: Any
    if state == "output-available":
        if "output" not in part:
            raise _invalid(f"{where}: a tool part in state 'output-available' needs 'output'")
        output = part["output"]
        content = output if isinstance(output, str) else dumps(output)
    elif state == "output-error":
        content = part.get("errorText")
        if not isinstance(content, str):
            raise _invalid(f"{where}.errorText must be a string (state 'output-error')")
    elif state == "output-denied":
        content, status = DENIED, "denied"
    else:
        content, status = NOT_ANSWERED, "stopped"
    _check_length(content, settings, f"{where}.output")
    call = ToolCall(call_id, name, arguments)
    result = Message(
        "tool",
        content,
        status=status,
        tool_call_id=call_id,
        name=name,
        is_error=state != "output-available",
    )
    return call, result


def _assistant_messages(
    parts: list[Any], where: str, settings: WebSettings, seen: set[str]
) -> list[Message]:
    """An assistant UI message as the runtime's messages, step by step.

    Text and reasoning up to a step's tool calls are one assistant message with
    those calls, followed by one ``tool`` message per call in the parts' order;
    text after them starts the next step. Other parts (``step-start``, sources,
    files, ``data-*``) are left out.
    """
    out: list[Message] = []
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []

    def flush() -> None:
        text = "".join(texts)
        _check_length(text, settings, f"{where}'s text")
        out.append(Message("assistant", text, reasoning="".join(thoughts), tool_calls=tuple(calls)))
        out.extend(results)
        for done in (texts, thoughts, calls, results):
            done.clear()

    for j, part in enumerate(parts):
        here = f"{where}.parts[{j}]"
        kind = _part_kind(part, here)
        if kind in ("text", "reasoning"):
            if calls:
                flush()
            (texts if kind == "text" else thoughts).append(_part_text(part, here))
        elif _is_tool_part(kind):
            call, result = _tool_part(part, here, settings, seen)
            calls.append(call)
            results.append(result)
    if texts or thoughts or calls or not out:
        flush()
    return out


def _file_part(part: dict[str, Any], where: str) -> Attachment:
    """A user's ``file`` part (a ``data:`` URL) as an :class:`Attachment`.

    Other URLs are refused: fetching them would make the server reach any address
    a client names (SSRF).
    """
    url = part.get("url")
    if not isinstance(url, str) or not url:
        raise _invalid(f"{where}.url must be a data: URL with the file's bytes")
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme != "data":
        what = "an http(s) URL" if scheme in ("http", "https") else "not a data: URL"
        raise _invalid(
            f"{where}.url is {what}: this server accepts files only as data: URLs "
            "(data:<mediaType>;base64,<bytes>) and does not fetch URLs for a client; "
            "send the file itself (useChat's sendMessage({files: fileList}) does)"
        )
    head, comma, payload = url[5:].partition(",")
    if not comma:
        raise _invalid(f"{where}.url is not a valid data: URL (no ',' before the data)")
    params = [p.strip().lower() for p in head.split(";")]
    if "base64" in params[1:]:
        try:
            data = base64.b64decode(payload, validate=True)
        except ValueError:  # binascii.Error
            raise _invalid(f"{where}.url: the data after 'base64,' is not valid base64") from None
    else:
        data = unquote_to_bytes(payload)
    media = part.get("mediaType", params[0])
    if not isinstance(media, str) or not media:
        raise _invalid(f"{where}.mediaType must be the file's media type, e.g. 'image/png'")
    name = part.get("filename") or ""
    if not isinstance(name, str):
        raise _invalid(f"{where}.filename must be a string")
    try:
        return Attachment(data, media.strip().lower(), name[:200])
    except ConfigurationError as exc:  # a type or size the runtime does not take
        raise _invalid(f"{where}: {exc}") from None


def _user_message(role: Any, parts: list[Any], where: str, settings: WebSettings) -> Message:
    """A user (or system) UI message: its text parts, and a user's files."""
    texts: list[str] = []
    files: list[Attachment] = []
    for j, part in enumerate(parts):
        here = f"{where}.parts[{j}]"
        kind = _part_kind(part, here)
        if kind == "text":
            texts.append(_part_text(part, here))
        elif kind == "file":
            if role != "user":
                raise _invalid(f"{here}: file parts are accepted in user messages only")
            files.append(_file_part(part, here))
        elif _is_tool_part(kind):
            raise _invalid(f"{here}: tool parts belong to assistant messages, not {role} ones")
    text = "".join(texts)
    _check_length(text, settings, f"{where}'s text")
    return Message(role, text, attachments=tuple(files))


def parse_ui_messages(data: dict[str, Any], settings: WebSettings) -> tuple[Message, list[Message]]:
    """A ``useChat`` request's last message (the user's) and the history before it.

    Raises :class:`WebError` (422) naming the message, part and field that is wrong.
    """
    refuse_client_tools(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list")
    if len(messages) > settings.max_messages:
        raise _invalid(f"at most {settings.max_messages} messages are accepted")
    history: list[Message] = []
    seen: set[str] = set()  # tool call ids so far
    for i, item in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise _invalid(f"{where} must be an object")
        role = item.get("role")
        if role not in ("system", "user", "assistant"):
            raise _invalid(f"{where}: unsupported role {role!r}")
        if role == "system":
            check_client_system(settings)
        parts = item.get("parts")
        if not isinstance(parts, list):
            raise _invalid(f"{where}.parts must be a list")
        if role == "assistant":
            history += _assistant_messages(parts, where, settings, seen)
        else:
            history.append(_user_message(role, parts, where, settings))
    last = history.pop()
    if last.role != "user":
        raise _invalid("the last message must be the user's")
    if not last.attachments:
        check_prompt(last.content, settings, "the last message's text")
    return last, history


class ChatEndpoint(StreamEndpoint):
    """``POST /api/chat`` (and ``GET /api/chat/{chat_id}/stream`` to resume)."""

    def __init__(
        self,
        pipe: Pipeline,
        settings: WebSettings,
        slots: Slots,
        tools: ServerTools | None = None,
        answers: Answers | None = None,
    ) -> None:
        super().__init__(pipe, settings, slots, tools, answers)
        self.extra_headers = (UI_STREAM_HEADER,)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.settings
        if scope["method"] != "POST":
            await send_json(
                send,
                405,
                {"error": {"type": "MethodNotAllowed", "message": "use POST"}},
                {"Allow": "POST"},
            )
            return
        try:
            check_origin(scope, settings)
            check_token(scope, settings, query_ok=False)
            body = await read_body(scope, receive, settings.max_body_bytes, settings.read_timeout)
            data = parse_json_body(scope, body)
            message, history = parse_ui_messages(data, settings)
            chat_id = check_chat_id(data.get("id"))
            stream = self.pipe.stream(message, history=history, **self.tools.stream_options())
            holder = await self.slots.enter()
        except WebError as exc:
            if exc.status != 499:
                await send_json(send, exc.status, {"error": exc.to_dict()}, exc.headers)
            return
        except PkNotebookError as exc:  # the pipeline is shutting down
            await send_json(send, status_for(exc), {"error": error_dict(exc)}, error_headers(exc))
            return
        await self.run_answer(send, receive, stream, holder, UIMessageEncoder(), chat_id)

    async def resume(self, request: Request) -> Response:
        """``GET /api/chat/{chat_id}/stream``: the chat's latest answer, from its start."""
        check_origin(request.scope, self.settings)
        check_token(request.scope, self.settings, query_ok=False)
        chat_id = check_chat_id(request.path_params.get("chat_id"))
        answer_id = await self.answers.answer_of_chat(chat_id) if chat_id else None
        if answer_id is None:
            return Response(status_code=204)
        return _Raw(self, self.answers.follow(answer_id, 0))


class _Raw(Response):
    """A Starlette response that hands the ASGI call to the endpoint's SSE writer."""

    def __init__(self, endpoint: ChatEndpoint, frames: Any) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.frames = frames

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.endpoint.serve(send, receive, self.frames, None)
