"""Anthropic Messages streaming.

The stream is a sequence of named events: ``message_start`` (model, input usage),
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` per
block (text, thinking, tool_use), ``message_delta`` (stop reason, output usage),
``message_stop`` (the end marker), ``ping`` at any time, and ``error`` (e.g.
``overloaded_error``, which becomes a retryable :class:`ServerError`).
``stop_reason: "pause_turn"`` ends the stream with a ``ProviderError`` (code
``"pause_turn"``), not a finish: see :class:`AnthropicParser`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..runtime.errors import ProtocolError, ProviderError
from ..runtime.types import Delta, Finish, ProviderConfig, ProviderEvent, Request, ToolCall, Usage
from . import _http
from ._parse import (
    TOOL_CALL_OVERHEAD,
    Bad,
    StreamParser,
    count,
    dump_json,
    load_json,
    mapping,
    string,
)
from .base import HTTPProvider

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


class AnthropicParser(StreamParser):
    """Turns a Messages event stream into Delta/Finish.

    ``stop_reason: "pause_turn"`` (the API paused a long server-side tool run and
    expects the conversation to be sent again to continue) is not a finished
    answer: the stream ends with a :class:`ProviderError` whose ``code`` is
    ``"pause_turn"``, keeping the partial text, so it is never saved or shown as a
    complete answer. ``"refusal"`` stays the finish reason it is. Values of the
    wrong type are a :class:`ProtocolError` with the raw line.
    """

    __slots__ = ("_blocks", "_usage", "model", "stop_reason")

    def __init__(self, provider: HTTPProvider) -> None:
        super().__init__(provider)
        self._blocks: dict[int, list[Any]] = {}  # index -> [id, name, [json pieces], input JSON]
        self._usage: dict[str, int] = {}
        self.model: str | None = None
        self.stop_reason: str | None = None

    @property
    def usage(self) -> dict[str, int]:
        return self._usage

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        try:
            events = self._decoder.feed_raw(chunk)
        except ProtocolError as exc:
            self.fail(exc)
            return out
        for data, name in events:
            kind = name.decode("utf-8", "replace") if name else "message"
            if kind == "ping":
                continue
            text = data.decode("utf-8", "replace")
            try:
                obj = load_json(text)
            except ValueError as exc:
                self.fail_json(text, str(exc))
                break
            if type(obj) is not dict:
                self.fail_shape(text, "not an object")
                break
            try:
                if kind == "message":  # unnamed event: the payload's type says what it is
                    kind = string(obj.get("type"), "'type'")
                if kind == "content_block_delta":
                    self._block_delta(obj, out)
                    continue
                if kind == "message_start":
                    self.started = True
                    message = mapping(obj.get("message"), "'message'")
                    self.model = string(message.get("model"), "'model'") or None
                    self._add_usage(message.get("usage"))
                elif kind == "content_block_start":
                    self._block_start(obj)
                elif kind == "message_delta":
                    delta = mapping(obj.get("delta"), "'delta'")
                    reason = string(delta.get("stop_reason"), "'stop_reason'")
                    if reason:
                        self.stop_reason = reason
                    self._add_usage(obj.get("usage"))
                elif kind == "message_stop":
                    if self.stop_reason == "pause_turn":
                        self.fail(
                            ProviderError(
                                f"{self._name} paused the turn (stop_reason 'pause_turn': a "
                                "long server-side tool run): the answer so far is incomplete. "
                                "Send the conversation again to let the model continue.",
                                provider=self._name,
                                code="pause_turn",
                            )
                        )
                        break
                    out.append(self._finish())
                    self.done = True
                    break
                elif kind == "error":
                    self.fail(_http.error_in_stream(self._name, obj, self._secret))
                    break
                # content_block_stop and unknown future events need nothing
            except Bad as exc:
                self.fail_shape(text, str(exc))
                break
        return out

    def end(self) -> Finish | None:
        if self.stop_reason is None or self.stop_reason == "pause_turn":
            return None
        return self._finish()

    def _block_delta(self, obj: dict[str, Any], out: list[ProviderEvent]) -> None:
        delta = obj.get("delta")
        if type(delta) is not dict:
            raise Bad("'delta' is not an object")
        dtype = delta.get("type")
        if dtype == "text_delta":
            text = string(delta.get("text"), "'text'")
            if text:
                self.emit(out, text)
        elif dtype == "thinking_delta":
            thinking = string(delta.get("thinking"), "'thinking'")
            if thinking:
                self.emit(out, "", thinking)
        elif dtype == "input_json_delta":
            piece = string(delta.get("partial_json"), "'partial_json'")
            block = self._blocks.get(_index(obj, -1))
            if block is not None and piece:
                self.charge_tools(len(piece))
                block[2].append(piece)
            out.append(Delta(activity=True))
        # signature_delta, citations_delta and future kinds carry no answer text

    def _block_start(self, obj: dict[str, Any]) -> None:
        opened = mapping(obj.get("content_block"), "'content_block'")
        if opened.get("type") == "tool_use":
            tool_id = string(opened.get("id"), "a tool_use block's 'id'")
            name = string(opened.get("name"), "a tool_use block's 'name'")
            initial = opened.get("input")
            arguments = dump_json(initial) if initial else "{}"  # used if no deltas follow
            self.charge_tools(TOOL_CALL_OVERHEAD + len(tool_id) + len(name) + len(arguments))
            self._blocks[_index(obj, len(self._blocks))] = [tool_id, name, [], arguments]

    def _add_usage(self, usage: Any) -> None:
        """Keep the four counts the API reports; a later null does not erase a count."""
        usage = mapping(usage, "'usage'")
        for key in _USAGE_KEYS:
            if usage.get(key) is not None:
                self._usage[key] = count(usage, key)

    def _finish(self) -> Finish:
        tools = []
        for _, (tool_id, name, pieces, initial) in sorted(self._blocks.items()):
            tools.append(ToolCall(tool_id, name, "".join(pieces) or initial))
        return self._provider.finish(
            self.stop_reason, usage_from_anthropic(self._usage), tuple(tools), self.model
        )


_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
)


def _index(obj: dict[str, Any], default: int) -> int:
    index = obj.get("index")
    if index is None:
        return default
    if type(index) is not int:
        raise Bad("'index' is not an integer")
    return index


def usage_from_anthropic(usage: dict[str, Any] | None) -> Usage | None:
    """``input_tokens`` counts only uncached input, so cache reads and writes are added.

    Raises ``ValueError`` for counts that are not numbers.
    """
    if not usage:
        return None
    usage = mapping(usage, "'usage'")
    cache_read = count(usage, "cache_read_input_tokens")
    cache_write = count(usage, "cache_creation_input_tokens")
    return Usage(
        input_tokens=count(usage, "input_tokens") + cache_read + cache_write,
        output_tokens=count(usage, "output_tokens"),
        cached_tokens=cache_read,
    )
