"""Google Gemini ``streamGenerateContent?alt=sse``.

Each event is a whole ``GenerateContentResponse``: text parts (``"thought":
true`` parts are reasoning), ``functionCall`` parts with complete arguments,
``finishReason`` on the last candidate, ``usageMetadata`` (cumulative, so the
last one counts). There is no end marker: the answer is complete when the body
ends after a ``finishReason``. The key goes in the ``x-goog-api-key`` header,
never in the URL, so it cannot leak through a logged URL.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import quote

from ..runtime.errors import ProtocolError, ProviderError, StreamError
from ..runtime.types import Delta, Finish, ProviderConfig, ProviderEvent, Request, ToolCall, Usage
from . import _http
from .base import HTTPProvider, parse_object
from .sse import SSEDecoder

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"


class GeminiProvider(HTTPProvider):
    """Gemini models over the Generative Language API."""

    name = "gemini"
    default_base_url = GEMINI_BASE_URL
    official_hosts: ClassVar[frozenset[str]] = frozenset({"generativelanguage.googleapis.com"})
    key_env: ClassVar[tuple[str, ...]] = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    defaults: ClassVar[ProviderConfig] = ProviderConfig(model="gemini-2.5-flash")

    def __init__(self, model: str | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        base = self.base_url
        self._models_url = base + (
            "/models/" if base.endswith(("/v1", "/v1beta")) else "/v1beta/models/"
        )

    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        system = [config.system] if config.system else []
        contents: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role == "system":
                system.append(message.content)
                continue
            role = "model" if message.role == "assistant" else "user"
            contents.append({"role": role, "parts": [{"text": message.content}]})
        payload: dict[str, Any] = {"contents": contents}
        if system:
            payload["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        generation: dict[str, Any] = {}
        if config.temperature is not None:
            generation["temperature"] = config.temperature
        if config.top_p is not None:
            generation["topP"] = config.top_p
        if config.max_tokens is not None:
            generation["maxOutputTokens"] = config.max_tokens
        if config.stop:
            generation["stopSequences"] = list(config.stop)
        if generation:
            payload["generationConfig"] = generation
        model = str(config.model)
        if model.startswith("models/"):
            model = model[len("models/") :]
        url = f"{self._models_url}{quote(model, safe='.-_')}:streamGenerateContent?alt=sse"
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self._api_key:
            headers["x-goog-api-key"] = self._api_key
        headers.update(self.extra_headers)
        return url, headers, _http.json_bytes(payload)

    def parser(self, config: ProviderConfig) -> GeminiParser:
        return GeminiParser(self)


class GeminiParser:
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

    def __init__(self, provider: HTTPProvider) -> None:
        self._provider = provider
        self._decoder = SSEDecoder()
        self._tools: list[ToolCall] = []
        self.done = False
        self.error: StreamError | None = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.started = False

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        for data, name in self._decoder.feed_raw(chunk):
            try:
                obj = parse_object(self._provider.name, data)
            except ProtocolError as exc:
                self.error = exc
                break
            if "error" in obj or name == b"error":
                self.error = _http.error_in_stream(
                    self._provider.name, obj, self._provider._api_key
                )
                break
            self.started = True
            for candidate in obj.get("candidates") or ():
                if candidate.get("index", 0) != 0:
                    continue
                for part in (candidate.get("content") or {}).get("parts") or ():
                    text = part.get("text")
                    if text:
                        if part.get("thought"):
                            out.append(Delta("", text))
                        else:
                            out.append(Delta(text))
                    call = part.get("functionCall")
                    if call:
                        self._tools.append(
                            ToolCall(
                                call.get("id") or f"call_{len(self._tools)}",
                                call.get("name", ""),
                                json.dumps(call.get("args") or {}, ensure_ascii=False),
                            )
                        )
                        out.append(Delta(activity=True))
                reason = candidate.get("finishReason")
                if reason:
                    self.finish_reason = reason
            feedback = obj.get("promptFeedback")
            if feedback and feedback.get("blockReason") and not obj.get("candidates"):
                self.error = ProviderError(
                    f"gemini blocked the prompt ({feedback['blockReason']}); rephrase it",
                    provider=self._provider.name,
                    code=str(feedback["blockReason"]),
                )
                break
            usage = obj.get("usageMetadata")
            if usage:
                self.usage = usage
            if obj.get("modelVersion"):
                self.model = obj["modelVersion"]
        return out

    def end(self) -> Finish | None:
        if self.finish_reason is None:
            return None
        return self._provider.finish(
            self.finish_reason, usage_from_gemini(self.usage), tuple(self._tools), self.model
        )


def usage_from_gemini(usage: dict[str, Any] | None) -> Usage | None:
    """Thinking tokens are billed as output, so ``output_tokens`` includes them."""
    if not usage:
        return None
    thoughts = int(usage.get("thoughtsTokenCount") or 0)
    return Usage(
        input_tokens=int(usage.get("promptTokenCount") or 0),
        output_tokens=int(usage.get("candidatesTokenCount") or 0) + thoughts,
        reasoning_tokens=thoughts,
        cached_tokens=int(usage.get("cachedContentTokenCount") or 0),
    )
