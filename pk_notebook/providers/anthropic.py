"""Anthropic Messages streaming.

The stream is a sequence of named events: ``message_start`` (model, input usage),
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` per
block (text, thinking, tool_use), ``message_delta`` (stop reason, output usage),
``message_stop`` (the end marker), ``ping`` at any time, and ``error`` (e.g.
``overloaded_error``, which becomes a retryable :class:`ServerError`).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..runtime.errors import ProtocolError, StreamError
from ..runtime.types import Delta, Finish, ProviderConfig, ProviderEvent, Request, ToolCall, Usage
from . import _http
from .base import HTTPProvider, parse_object
from .sse import SSEDecoder

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HTTPProvider):
    """Claude models over the Messages API (``POST {base_url}/v1/messages``).

    ``max_tokens`` is required by the API, so it defaults to 4096.
    """

    name = "anthropic"
    default_base_url = ANTHROPIC_BASE_URL
    official_hosts: ClassVar[frozenset[str]] = frozenset({"api.anthropic.com"})
    key_env: ClassVar[tuple[str, ...]] = ("ANTHROPIC_API_KEY",)
    defaults: ClassVar[ProviderConfig] = ProviderConfig(model="claude-sonnet-4-5", max_tokens=4096)

    def __init__(self, model: str | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        base = self.base_url
        self.url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")

    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        system = [config.system] if config.system else []
        messages: list[dict[str, str]] = []
        for message in request.messages:
            if message.role == "system":
                system.append(message.content)
            else:
                role = "assistant" if message.role == "assistant" else "user"
                messages.append({"role": role, "content": message.content})
        payload: dict[str, Any] = {
            "model": config.model,
            "max_tokens": config.max_tokens or 4096,
            "messages": messages,
            "stream": True,
        }
        if system:
            payload["system"] = "\n\n".join(system)
        if config.temperature is not None:
            payload["temperature"] = min(1.0, config.temperature)  # the API's range is 0..1
        if config.top_p is not None:
            payload["top_p"] = config.top_p
        if config.stop:
            payload["stop_sequences"] = list(config.stop)
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if self._api_key:
            headers["x-api-key"] = self._api_key
        headers.update(self.extra_headers)
        return self.url, headers, _http.json_bytes(payload)

    def parser(self, config: ProviderConfig) -> AnthropicParser:
        return AnthropicParser(self)


class AnthropicParser:
    __slots__ = (
        "_blocks",
        "_decoder",
        "_provider",
        "done",
        "error",
        "model",
        "started",
        "stop_reason",
        "usage",
    )

    def __init__(self, provider: HTTPProvider) -> None:
        self._provider = provider
        self._decoder = SSEDecoder()
        self._blocks: dict[int, list[Any]] = {}  # index -> [id, name, [json pieces], input]
        self.done = False
        self.error: StreamError | None = None
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.started = False

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        for data, name in self._decoder.feed_raw(chunk):
            kind = name.decode("utf-8", "replace") if name else "message"
            if kind == "ping":
                continue
            try:
                obj = parse_object(self._provider.name, data)
            except ProtocolError as exc:
                self.error = exc
                break
            if kind == "message":  # unnamed event: the payload's type says what it is
                kind = obj.get("type", "")
            if kind == "content_block_delta":
                delta = obj["delta"]
                dtype = delta.get("type")
                if dtype == "text_delta":
                    if delta["text"]:
                        out.append(Delta(delta["text"]))
                elif dtype == "thinking_delta":
                    if delta.get("thinking"):
                        out.append(Delta("", delta["thinking"]))
                elif dtype == "input_json_delta":
                    block = self._blocks.get(obj.get("index", -1))
                    if block is not None:
                        block[2].append(delta.get("partial_json") or "")
                    out.append(Delta(activity=True))
                continue
            if kind == "message_start":
                self.started = True
                message = obj.get("message") or {}
                self.model = message.get("model") or None
                self.usage.update(message.get("usage") or {})
            elif kind == "content_block_start":
                opened = obj.get("content_block") or {}
                if opened.get("type") == "tool_use":
                    self._blocks[obj.get("index", len(self._blocks))] = [
                        opened.get("id", ""),
                        opened.get("name", ""),
                        [],
                        opened.get("input"),
                    ]
            elif kind == "message_delta":
                reason = (obj.get("delta") or {}).get("stop_reason")
                if reason:
                    self.stop_reason = reason
                self.usage.update(obj.get("usage") or {})
            elif kind == "message_stop":
                out.append(self._finish())
                self.done = True
                break
            elif kind == "error":
                self.error = _http.error_in_stream(
                    self._provider.name, obj, self._provider._api_key
                )
                break
            # content_block_stop and unknown future events need nothing
        return out

    def end(self) -> Finish | None:
        return self._finish() if self.stop_reason is not None else None

    def _finish(self) -> Finish:
        tools = []
        for _, (tool_id, name, pieces, initial) in sorted(self._blocks.items()):
            arguments = "".join(pieces)
            if not arguments:
                arguments = json.dumps(initial or {})
            tools.append(ToolCall(tool_id, name, arguments))
        return self._provider.finish(
            self.stop_reason, usage_from_anthropic(self.usage), tuple(tools), self.model
        )


def usage_from_anthropic(usage: dict[str, Any] | None) -> Usage | None:
    """``input_tokens`` counts only uncached input, so cache reads and writes are added."""
    if not usage:
        return None
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(
        input_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=cache_read,
    )
