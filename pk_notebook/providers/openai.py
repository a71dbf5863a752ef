"""OpenAI Chat Completions streaming, and every server that speaks it.

``base_url`` selects the server: OpenAI (the default), Azure OpenAI
(``base_url="https://RESOURCE.openai.azure.com/openai/v1", api_key_header="api-key"``),
vLLM, Ollama's ``/v1``, LM Studio, OpenRouter, Groq, DeepSeek, Mistral...

What the recorded streams taught (``tests/conformance``): ``choices`` may be
empty (Azure's prompt-filter chunk, usage-only chunks); ``usage`` may be ``null``
on every chunk, on the finish chunk, or in a chunk after it; a chunk after the
finish chunk may carry ``finish_reason: null`` again (OpenRouter), so the last
non-null reason is kept; reasoning arrives as ``reasoning_content`` (DeepSeek) or
``reasoning`` (Groq, OpenRouter); errors arrive as ``event: error`` (Groq) or as a
chunk with a top-level ``error`` (OpenRouter); tool-call fragments are joined by
their ``index``.
"""

from __future__ import annotations

from json import loads
from typing import Any, ClassVar

from ..runtime.errors import StreamError
from ..runtime.types import Delta, Finish, ProviderConfig, ProviderEvent, Request, ToolCall, Usage
from . import _http
from .base import HTTPProvider, protocol_error, scan_json
from .sse import SSEDecoder

OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider(HTTPProvider):
    """Chat Completions with ``stream: true`` over any OpenAI-compatible ``base_url``.

    Extra options:
        api_key_header: ``"authorization"`` (``Bearer KEY``, the default) or the name
            of a header that takes the bare key (Azure: ``"api-key"``).
        include_usage: ask for the usage chunk (``stream_options.include_usage``);
            turn off for old servers that reject ``stream_options``.
        max_tokens_field: the request field for ``max_tokens``; the official API
            wants ``max_completion_tokens``, most compatible servers ``max_tokens``.
        query: query parameters added to the URL (Azure's ``api-version``).
    """

    name = "openai"
    default_base_url = OPENAI_BASE_URL
    official_hosts: ClassVar[frozenset[str]] = frozenset({"api.openai.com"})
    key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    defaults: ClassVar[ProviderConfig] = ProviderConfig(model="gpt-4o-mini")

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key_header: str = "authorization",
        include_usage: bool = True,
        max_tokens_field: str | None = None,
        query: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        self.api_key_header = api_key_header.lower()
        self.include_usage = include_usage
        official = self.base_url.startswith(OPENAI_BASE_URL)
        self.max_tokens_field = max_tokens_field or (
            "max_completion_tokens" if official else "max_tokens"
        )
        self.url = self.base_url + "/chat/completions"
        if query:
            from urllib.parse import urlencode

            self.url += "?" + urlencode(query)

    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        messages: list[dict[str, str]] = []
        if config.system:
            messages.append({"role": "system", "content": config.system})
        messages.extend({"role": m.role, "content": m.content} for m in request.messages)
        payload: dict[str, Any] = {"model": config.model, "messages": messages, "stream": True}
        if self.include_usage:
            payload["stream_options"] = {"include_usage": True}
        if config.temperature is not None:
            payload["temperature"] = config.temperature
        if config.top_p is not None:
            payload["top_p"] = config.top_p
        if config.max_tokens is not None:
            payload[self.max_tokens_field] = config.max_tokens
        if config.stop:
            payload["stop"] = list(config.stop)
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self._api_key:
            if self.api_key_header == "authorization":
                headers["authorization"] = f"Bearer {self._api_key}"
            else:
                headers[self.api_key_header] = self._api_key
        headers.update(self.extra_headers)
        return self.url, headers, _http.json_bytes(payload)

    def parser(self, config: ProviderConfig) -> OpenAIParser:
        return OpenAIParser(self, config)


class OpenAIParser:
    """Turns a Chat Completions event stream into Delta/Finish, one read at a time."""

    __slots__ = (
        "_decoder",
        "_provider",
        "_tools",
        "done",
        "error",
        "finish_reason",
        "model",
        "started",
        "usage",
    )

    def __init__(self, provider: HTTPProvider, config: ProviderConfig) -> None:
        self._provider = provider
        self._decoder = SSEDecoder()
        self._tools: dict[int, list[Any]] | None = None
        self.done = False
        self.error: StreamError | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.started = False

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        for data, name in self._decoder.feed_raw(chunk):
            if data == b"[DONE]":
                out.append(self._finish())
                self.done = True
                break
            # base.parse_object, inlined: this is the hot path of the most used provider,
            # and one call less per chunk is measurable against the httpx-sse bar.
            text = data.decode("utf-8", "replace")
            try:
                try:
                    obj, end = scan_json(text, 0)
                except StopIteration:  # leading whitespace, or not JSON at all
                    obj, end = loads(text), len(text)
                if end != len(text) and text[end:].strip():
                    raise ValueError(f"extra data after the JSON value (at {end})")
            except ValueError as exc:
                self.error = protocol_error(self._provider.name, text, exc)
                break
            if type(obj) is not dict:
                self.error = protocol_error(self._provider.name, data, TypeError("not an object"))
                break
            if name == b"error" or "error" in obj:
                self.error = _http.error_in_stream(
                    self._provider.name, obj, self._provider._api_key
                )
                break
            self.started = True
            choices = obj.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content and len(delta) == 1:
                        out.append(Delta(content))  # the common chunk: just text
                    else:
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                        if content or reasoning:
                            out.append(Delta(content or "", reasoning or ""))
                        tool_calls = delta.get("tool_calls")
                        if tool_calls:
                            self._tool_fragments(tool_calls)
                            out.append(Delta(activity=True))
                reason = choice.get("finish_reason")
                if reason:
                    self.finish_reason = reason
            if obj.get("usage"):
                self.usage = obj["usage"]
            if self.model is None and obj.get("model"):
                self.model = obj["model"]
        return out

    def end(self) -> Finish | None:
        # No [DONE]: complete only if the model said why it stopped.
        if self.finish_reason is None:
            return None
        return self._finish()

    def _tool_fragments(self, fragments: list[dict[str, Any]]) -> None:
        tools = self._tools
        if tools is None:
            tools = self._tools = {}
        for fragment in fragments:
            index = fragment.get("index", len(tools))
            slot = tools.get(index)
            if slot is None:
                slot = tools[index] = ["", "", []]
            if fragment.get("id"):
                slot[0] = fragment["id"]
            function = fragment.get("function") or {}
            if function.get("name"):
                slot[1] += function["name"]
            if function.get("arguments"):
                slot[2].append(function["arguments"])

    def _finish(self) -> Finish:
        tools: tuple[ToolCall, ...] = ()
        if self._tools:
            tools = tuple(
                ToolCall(slot[0], slot[1], "".join(slot[2]))
                for _, slot in sorted(self._tools.items())
            )
        return self._provider.finish(
            self.finish_reason, usage_from_openai(self.usage), tools, self.model
        )


def usage_from_openai(usage: dict[str, Any] | None) -> Usage | None:
    """Map ``prompt_tokens``/``completion_tokens`` (+ details) onto :class:`Usage`."""
    if not usage:
        return None
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        cached_tokens=int(prompt_details.get("cached_tokens") or 0),
    )
