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
...]}``. The last message must be the user's (its text parts are the prompt);
the earlier ones are the history (their text, and an assistant's reasoning;
tool parts are left out: tools are the server's, run inside a turn). Nothing is
kept in the session store: the client holds the conversation.

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

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..runtime.errors import PkNotebookError
from ..runtime.pipeline import Pipeline
from ..runtime.types import Chunk, Message, Result
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


def _text_parts(parts: Any, where: str, *, reasoning: bool = False) -> str:
    if not isinstance(parts, list):
        raise WebError(422, "InvalidRequest", f"{where}.parts must be a list")
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise WebError(422, "InvalidRequest", f"{where}: each part is an object with a 'type'")
        wanted = "reasoning" if reasoning else "text"
        if part["type"] == wanted:
            if not isinstance(part.get("text"), str):
                raise WebError(422, "InvalidRequest", f"{where}: a {wanted} part needs 'text'")
            texts.append(part["text"])
    return "".join(texts)


def parse_ui_messages(data: dict[str, Any], settings: WebSettings) -> tuple[str, list[Message]]:
    """A ``useChat`` request's prompt (the last message's text) and history."""
    refuse_client_tools(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WebError(422, "InvalidRequest", "'messages' must be a non-empty list")
    if len(messages) > settings.max_messages:
        raise WebError(
            422, "InvalidRequest", f"at most {settings.max_messages} messages are accepted"
        )
    history: list[Message] = []
    for i, item in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise WebError(422, "InvalidRequest", f"{where} must be an object")
        role = item.get("role")
        if role not in ("system", "user", "assistant"):
            raise WebError(422, "InvalidRequest", f"{where}: unsupported role {role!r}")
        if role == "system":
            check_client_system(settings)
        text = _text_parts(item.get("parts"), where)
        if len(text) > settings.max_prompt_chars:
            check_prompt(text, settings, f"{where}'s text")
        reasoning = (
            _text_parts(item.get("parts"), where, reasoning=True) if role == "assistant" else ""
        )
        history.append(Message(role, text, reasoning=reasoning))
    last = history.pop()
    if last.role != "user":
        raise WebError(422, "InvalidRequest", "the last message must be the user's")
    return check_prompt(last.content, settings, "the last message's text"), history


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
            prompt, history = parse_ui_messages(data, settings)
            chat_id = check_chat_id(data.get("id"))
            stream = self.pipe.stream(prompt, history=history, **self.tools.stream_options())
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
