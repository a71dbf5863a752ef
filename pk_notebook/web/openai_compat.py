"""``POST /v1/chat/completions``: any OpenAI client can consume a pipeline.

    client = AsyncOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="<token or anything>")
    stream = await client.chat.completions.create(model="m", messages=[...], stream=True)

The last message must be the user's; the earlier ones are sent as history
(``Pipeline.stream(history=...)``). ``model`` is echoed, not obeyed: the
server's pipeline decides which model runs (and so what a call costs). Fields
this server does not use (``presence_penalty``, ``user``, ``seed``, ...) are
ignored, ``n`` other than 1 and tools are refused.
"""

from __future__ import annotations

import asyncio
import time
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
from ..runtime.types import Chunk, Message, ProviderConfig, Result, Usage
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


def parse_chat_request(
    data: dict[str, Any], settings: WebSettings
) -> tuple[str, str, list[Message], ProviderConfig | None, bool, bool]:
    """-> (model, prompt, history, config, stream, include_usage)."""
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
    if data.get("tools") or data.get("functions"):
        raise WebError(422, "InvalidRequest", "tools are not supported by this server")
    history: list[Message] = []
    for i, item in enumerate(messages):
        if not isinstance(item, dict):
            raise WebError(422, "InvalidRequest", f"messages[{i}] must be an object")
        role = item.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise WebError(422, "InvalidRequest", f"messages[{i}]: unsupported role {role!r}")
        if role == "system":
            check_client_system(settings)  # the same rule as /stream's options.system
        text = _text_of(item.get("content"), f"messages[{i}]")
        if len(text) > settings.max_prompt_chars:
            check_prompt(text, settings, f"messages[{i}].content")
        history.append(Message(role, text))  # type: ignore[arg-type]
    last = history.pop()
    if last.role != "user":
        raise WebError(422, "InvalidRequest", "the last message must be the user's")
    prompt = check_prompt(last.content, settings, "the last message's content")
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
    return model, prompt, history, config, stream, include_usage


class ChunkEncoder:
    """``chat.completion.chunk`` events: a role chunk, content chunks, a finish chunk,
    an optional usage chunk, then ``[DONE]``."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = "chatcmpl-" + token_hex(12)
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._head = (
            f'{{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{dumps(model)},"system_fingerprint":null,"choices":'
        )

    def _event(self, choices: str, usage: str = "") -> bytes:
        return f"data: {self._head}{choices}{usage}}}\n\n".encode()

    def chunk(self, chunk: Chunk) -> bytes:
        delta: dict[str, Any] = {"content": chunk.content}
        if chunk.index == 0:
            delta["role"] = "assistant"
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        return self._event(
            f'[{{"index":0,"delta":{dumps(delta)},"logprobs":null,"finish_reason":null}}]'
        )

    def end(self, result: Result) -> bytes:
        if result.error is not None or not result.complete:
            error = result.error
            if error is None:
                error = PkNotebookError(f"the stream ended early ({result.status.value})")
            return sse_event(dumps(self.error_body(error))) + DONE
        reason = _FINISH_REASONS.get(result.finish_reason or "stop", "stop")
        out = self._event(
            f'[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{reason}"}}]'
        )
        if self.include_usage:
            out += self._event("[]", f',"usage":{dumps(usage_dict(result.usage))}')
        return out + DONE

    def error_body(self, exc: BaseException) -> Any:
        body = openai_error(exc)
        partial = getattr(exc, "partial_text", None)
        if partial:
            body["error"]["partial_text"] = partial
        return body


def completion_dict(model: str, result: Result) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text, "refusal": None}
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
                "finish_reason": _FINISH_REASONS.get(result.finish_reason or "stop", "stop"),
            }
        ],
        "usage": usage_dict(result.usage),
    }


class ChatCompletionsEndpoint:
    """The ASGI app behind ``POST /v1/chat/completions``."""

    def __init__(self, pipe: Pipeline, settings: WebSettings, slots: Slots) -> None:
        self.pipe = pipe
        self.settings = settings
        self.slots = slots

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        settings = self.settings
        try:
            check_origin(scope, settings)
            check_token(scope, settings, query_ok=False)
            body = await read_body(scope, receive, settings.max_body_bytes, settings.read_timeout)
            data = parse_json_body(scope, body)
            model, prompt, history, config, streaming, include_usage = parse_chat_request(
                data, settings
            )
            stream = self.pipe.stream(prompt, config=config, history=history)
            self.slots.acquire()
        except WebError as exc:
            if exc.status != 499:
                await send_json(send, exc.status, openai_error(exc), exc.headers)
            return
        except PkNotebookError as exc:  # the pipeline is shutting down
            await send_json(
                send, status_for(exc), openai_error(exc), error_headers(exc)
            )
            return
        try:
            if streaming:
                await run_sse(
                    send,
                    receive,
                    stream,
                    ChunkEncoder(model, include_usage),
                    heartbeat=settings.heartbeat,
                    write_timeout=settings.write_timeout,
                )
            else:
                await self._complete(send, receive, stream, model)
        finally:
            self.slots.release()

    async def _complete(self, send: Any, receive: Any, stream: Stream, model: str) -> None:
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
                await send_json(
                    send, status_for(exc), openai_error(exc), error_headers(exc)
                )
                return
            if not result.complete:
                error = result.error or WebError(
                    503, "Stopped", "the server stopped the answer (it is shutting down)"
                )
                body = openai_error(error)
                body["error"]["partial_text"] = result.text
                await send_json(send, status_for(error), body, error_headers(error))
                return
            await send_json(send, 200, completion_dict(model, result))
        finally:
            stream.stop()  # the client left (or we are done): a no-op once ended
            gone.cancel()
            await asyncio.gather(task, gone, return_exceptions=True)
            await stream.aclose()
