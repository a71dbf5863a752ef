"""Google Gemini ``streamGenerateContent?alt=sse``.

Each event is a whole ``GenerateContentResponse``: text parts (``"thought":
true`` parts are reasoning), ``functionCall`` parts with complete arguments,
``finishReason`` on the last candidate, ``usageMetadata`` (cumulative, so the
last one counts). There is no end marker: the answer is complete when the body
ends after a ``finishReason``. The key goes in the ``x-goog-api-key`` header,
never in the URL, so it cannot leak through a logged URL.

**Thought signatures.** Any part may carry a ``thoughtSignature`` (Gemini's
encrypted record of the thinking behind it), and it must go back *in the part it
came with* (https://ai.google.dev/gemini-api/docs/thought-signatures). On a
``functionCall`` part it is kept in :attr:`ToolCall.signature` and sent back with
the call (Gemini 3 refuses the current turn's calls without it). On any other part
(answer text, a ``"thought": true`` part, or the empty text part that ends a
streamed answer and holds only the signature) it is kept in the message's
:attr:`~pk_notebook.runtime.types.Message.reasoning_blocks` as
``{"provider": "gemini", "type": "thought_signature", "signature", "at", "text"}``
(``"thought": true`` for a thought part): ``at`` is where the part's text starts in
the answer, ``text`` is the part's own text. The next request cuts the answer
into parts at those places and puts each signature back on its own part; text
without a signature is never merged into a signed part. An answer text that no
longer matches the recorded part (the history was edited) goes back without that
signature: the docs make text signatures recommended, not required.

A call without a signature of its own (one made by another provider before the
session switched to Gemini) gets the documented dummy
``"skip_thought_signature_validator"`` where Gemini 3 validates: on the first
``functionCall`` of each model step of the *current* turn (the contents after the
last user content that is not only ``functionResponse`` parts). Calls of earlier
turns, and the later calls of a parallel step, go as they are.

**Structured output** (``schema=``): ``generationConfig.responseMimeType``
``"application/json"`` and ``generationConfig.responseJsonSchema`` (the full JSON
schema, ``$defs`` and ``$ref`` included); the JSON arrives as text parts
(``result.schema_mode`` ``"response_schema"``). A turn that also offers tools
gets the schema as instructions in the system instruction instead (``schema_mode``
``"prompt"``): Gemini 2.x models refuse function calling together with a JSON
response type. The answer is validated the same way.

**Attachments** are ``inlineData`` parts (``mimeType``, base64 ``data``) after the
text part: images (PNG, JPEG, WebP; a GIF is refused with a hint to convert it)
and PDFs, both taken by default (``accepts=``). Inline data is capped at 20 MB per
request in total, counted as sent (base64, so about 15 MB of files); larger files
need Gemini's Files API, which this provider does not use.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from urllib.parse import quote

from ..runtime.errors import ConfigurationError, ProtocolError, ProviderError
from ..runtime.types import (
    Finish,
    Message,
    ProviderConfig,
    ProviderEvent,
    Request,
    ToolCall,
    ToolCallDelta,
    Usage,
)
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
from .base import HTTPProvider, size_text

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"


class GeminiProvider(HTTPProvider):
    """Gemini models over the Generative Language API.

    Tools go out as one ``functionDeclarations`` tool (each with
    ``parametersJsonSchema``: a full JSON schema, ``$defs`` included), ``tool_choice``
    as ``toolConfig.functionCallingConfig.mode`` ``AUTO``/``NONE``/``ANY``. An
    assistant message becomes a ``"model"`` content: its text, then a
    ``functionCall`` part per call (with its ``thoughtSignature``); tool results
    become ``functionResponse`` parts of a ``"user"`` content. Consecutive contents
    of one role are merged. Thought parts are sent back only when one carried a
    signature (see the module docstring), with it, where it came.
    """

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
        self.check_attachments(request.messages, image_types=GEMINI_IMAGE_TYPES)
        inline = sum(_base64_size(a.size) for m in request.messages for a in m.attachments)
        if inline > GEMINI_INLINE_BYTES:
            raise ConfigurationError(
                f"the attachments of this request are {size_text(inline)} as sent (base64); "
                f"{self.name} takes at most {size_text(GEMINI_INLINE_BYTES)} of inline data per "
                "request: send fewer or smaller files (downscale images, split the PDF)"
            )
        system = [config.system] if config.system else []
        contents = gemini_contents(request.messages, system)
        payload: dict[str, Any] = {"contents": contents}
        if request.tools:
            payload["tools"] = [
                {"functionDeclarations": [gemini_function(spec) for spec in request.tools]}
            ]
            mode = _MODES.get(request.tool_choice or "")
            if mode is not None:
                payload["toolConfig"] = {"functionCallingConfig": {"mode": mode}}
        if request.schema is not None and request.tools:
            # Gemini 2.x refuses function calling with a JSON response type ("Function
            # calling with a response mime type: 'application/json' is unsupported")
            system.append(request.schema.instructions())
            request.call.schema_mode = "prompt"
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
        if request.schema is not None and not request.tools:
            generation["responseMimeType"] = "application/json"
            generation["responseJsonSchema"] = request.schema.json_schema
            request.call.schema_mode = "response_schema"
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


_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
#: the image types Gemini reads (no GIF), and its cap on inline data per request
GEMINI_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
GEMINI_INLINE_BYTES = 20 * 1024 * 1024


def _base64_size(n: int) -> int:
    return 4 * ((n + 2) // 3)


def gemini_function(spec: Any) -> dict[str, Any]:
    """A :class:`~pk_notebook.runtime.tools.ToolSpec` as a function declaration."""
    declaration: dict[str, Any] = {"name": spec.name}
    if spec.description:
        declaration["description"] = spec.description
    declaration["parametersJsonSchema"] = dict(spec.parameters)
    return declaration


def gemini_contents(
    history: tuple[Message, ...] | list[Message], system: list[str]
) -> list[dict[str, Any]]:
    """The ``contents`` of a request; system messages are appended to ``system``."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # call id -> tool name, for a result that lacks the name
    for message in history:
        if message.role == "system":
            system.append(message.content)
            continue
        parts: list[dict[str, Any]]
        if message.role == "tool":
            role = "user"
            key = "error" if message.is_error else "result"
            parts = [
                {
                    "functionResponse": {
                        "name": message.name or names.get(message.tool_call_id or "", ""),
                        "response": {key: message.content},
                    }
                }
            ]
        elif message.role == "assistant":
            role = "model"
            parts = _answer_parts(message)
            for call in message.tool_calls:
                names[call.id] = call.name
                part: dict[str, Any] = {"functionCall": {"name": call.name, "args": _args(call)}}
                if call.signature:
                    part["thoughtSignature"] = call.signature
                parts.append(part)
            if not parts:
                continue  # neither text nor calls: nothing to send
        else:
            role = "user"
            keep_text = message.content or not message.attachments
            parts = [{"text": message.content}] if keep_text else []
            parts += [
                {"inlineData": {"mimeType": item.mime_type, "data": item.base64}}
                for item in message.attachments
            ]
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    _sign_current_turn(out)
    return out


#: the value Google documents for a function call that has no signature of its own
#: (a trace from another model, a call the client made up). The FAQ of
#: https://ai.google.dev/gemini-api/docs/thought-signatures#faqs names two,
#: "context_engineering_is_the_way_to_go" and "skip_thought_signature_validator";
#: Vertex AI's page documents only the second
#: (https://docs.cloud.google.com/vertex-ai/generative-ai/docs/thought-signatures), so it
#: is the one that works on both.
DUMMY_SIGNATURE = "skip_thought_signature_validator"
#: the ``type`` of the reasoning blocks that hold a signature of a part other than a call
SIGNATURE_BLOCK = "thought_signature"


def _sign_current_turn(contents: list[dict[str, Any]]) -> None:
    """Give the first call of each step of the current turn the dummy if it has no signature.

    What Gemini 3 validates (https://ai.google.dev/gemini-api/docs/thought-signatures,
    "Validation"): the current turn starts at the newest ``user`` content with
    standard content (not only ``functionResponse`` parts); in every ``model``
    content after it the *first* ``functionCall`` part must carry a signature.
    Earlier turns are not validated, and the later calls of a parallel step never
    had one, so nothing is added there.
    """
    start = 0
    for index in range(len(contents) - 1, -1, -1):
        content = contents[index]
        if content["role"] == "user" and any(
            "functionResponse" not in part for part in content["parts"]
        ):
            start = index + 1
            break
    for content in contents[start:]:
        if content["role"] != "model":
            continue
        first = next((p for p in content["parts"] if "functionCall" in p), None)
        if first is not None and not first.get("thoughtSignature"):
            first["thoughtSignature"] = DUMMY_SIGNATURE


def _answer_parts(message: Message) -> list[dict[str, Any]]:
    """An assistant message's text as parts, each kept signature back on its own part.

    Without Gemini signature blocks the text is one part. With them, the text is
    cut at the signed parts: each becomes ``{"text": ..., "thoughtSignature": ...}``
    again (an empty one too: a streamed answer's signature often comes on an empty
    last part), a signed thought part goes back as the thought part it was, and the
    text between them goes as plain parts. A signed text part that does not match
    the message's text at its place is left out (its signature is optional).
    """
    content = message.content
    blocks = [
        b
        for b in message.reasoning_blocks
        if b.get("provider") == "gemini" and b.get("type") == SIGNATURE_BLOCK
    ]
    if not blocks:
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    done = 0  # characters of the content already in parts
    for block in blocks:  # in the order the parts came
        signature, at, text = block.get("signature"), block.get("at"), block.get("text", "")
        if not (isinstance(signature, str) and signature and isinstance(text, str)):
            continue
        if type(at) is not int or not done <= at <= len(content):
            continue
        if block.get("thought"):
            part = {"text": text, "thought": True, "thoughtSignature": signature}
            end = at
        elif content.startswith(text, at):
            part = {"text": text, "thoughtSignature": signature}
            end = at + len(text)
        else:
            continue
        if at > done:
            parts.append({"text": content[done:at]})
        parts.append(part)
        done = end
    if done < len(content):
        parts.append({"text": content[done:]})
    return parts


def _args(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object ``functionCall.args`` wants; ``{}`` if not one."""
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class GeminiParser(StreamParser):
    """Turns ``GenerateContentResponse`` events into Delta/Finish.

    With several candidates the answer is the one whose ``index`` is 0 (an
    absent index is 0). Values of the wrong type are a :class:`ProtocolError`
    with the raw line.
    """

    __slots__ = ("_answer_length", "_signed", "_tools", "finish_reason", "model", "usage")

    def __init__(self, provider: HTTPProvider) -> None:
        super().__init__(provider)
        self._tools: list[ToolCall] = []
        self._answer_length = 0  # characters of answer text so far: where a part starts
        self._signed: list[dict[str, Any]] = []  # signatures of parts other than calls
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> list[ProviderEvent]:
        out: list[ProviderEvent] = []
        try:
            events = self._decoder.feed_raw(chunk)
        except ProtocolError as exc:
            self.fail(exc)
            return out
        for data, name in events:
            text = data.decode("utf-8", "replace")
            try:
                obj = load_json(text)
            except ValueError as exc:
                self.fail_json(text, str(exc))
                break
            if type(obj) is not dict:
                self.fail_shape(text, "not an object")
                break
            if "error" in obj or name == b"error":
                self.fail(_http.error_in_stream(self._name, obj, self._secret))
                break
            self.started = True
            try:
                candidates = obj.get("candidates")
                if candidates is not None and type(candidates) is not list:
                    raise Bad("'candidates' is not a list")
                for candidate in candidates or ():
                    if type(candidate) is not dict:
                        raise Bad("a candidate is not an object")
                    index = candidate.get("index")
                    if index:
                        if type(index) is not int:
                            raise Bad("a candidate's 'index' is not an integer")
                        continue
                    self._candidate(candidate, out)
                feedback = mapping(obj.get("promptFeedback"), "'promptFeedback'")
                blocked = string(feedback.get("blockReason"), "'blockReason'")
                if blocked and not candidates:
                    self.fail(
                        ProviderError(
                            f"gemini blocked the prompt ({blocked}); rephrase it",
                            provider=self._name,
                            code=blocked,
                        )
                    )
                    break
                usage = obj.get("usageMetadata")
                if usage:
                    self.usage = usage_from_gemini(usage)
                model = obj.get("modelVersion")
                if model:
                    self.model = string(model, "'modelVersion'")
            except Bad as exc:
                self.fail_shape(text, str(exc))
                break
        return out

    def _candidate(self, candidate: dict[str, Any], out: list[ProviderEvent]) -> None:
        content = mapping(candidate.get("content"), "'content'")
        parts = content.get("parts")
        if parts is not None and type(parts) is not list:
            raise Bad("'parts' is not a list")
        for part in parts or ():
            if type(part) is not dict:
                raise Bad("a part is not an object")
            text = string(part.get("text"), "a part's 'text'")
            thought = bool(part.get("thought"))
            call = part.get("functionCall")
            if call is None:
                signature = string(part.get("thoughtSignature"), "a part's 'thoughtSignature'")
                if signature:  # kept where it came, even on a part without text
                    self.charge_answer(len(signature))
                    block: dict[str, Any] = {
                        "provider": "gemini",
                        "type": SIGNATURE_BLOCK,
                        "signature": signature,
                        "at": self._answer_length,
                        "text": text,
                    }
                    if thought:
                        block["thought"] = True
                    self._signed.append(block)
            if text:
                if thought:
                    self.emit(out, "", text)
                else:
                    self.emit(out, text)
                    self._answer_length += len(text)
            if call is not None:
                call = mapping(call, "'functionCall'")
                name = string(call.get("name"), "a functionCall's 'name'")
                call_id = string(call.get("id"), "a functionCall's 'id'")
                arguments = dump_json(mapping(call.get("args"), "a functionCall's 'args'"))
                signature = string(part.get("thoughtSignature"), "a part's 'thoughtSignature'")
                self.charge_tools(
                    TOOL_CALL_OVERHEAD + len(name) + len(call_id) + len(arguments) + len(signature)
                )
                ordinal = len(self._tools)
                call_id = call_id or f"call_{ordinal}"
                self._tools.append(ToolCall(call_id, name, arguments, signature))
                out.append(ToolCallDelta(ordinal, call_id, name, arguments))
        reason = candidate.get("finishReason")
        if reason is not None:
            reason = string(reason, "'finishReason'")
            if reason:
                self.finish_reason = reason

    def end(self) -> Finish | None:
        if self.finish_reason is None:
            return None
        if not self._signed:
            return self._provider.finish(
                self.finish_reason, self.usage, tuple(self._tools), self.model
            )
        return self._provider.finish(
            self.finish_reason,
            self.usage,
            tuple(self._tools),
            self.model,
            reasoning_blocks=tuple(self._signed),
        )


def usage_from_gemini(usage: dict[str, Any] | None) -> Usage | None:
    """Thinking tokens are billed as output, so ``output_tokens`` includes them.

    Raises ``ValueError`` for counts that are not numbers.
    """
    if not usage:
        return None
    usage = mapping(usage, "'usageMetadata'")
    thoughts = count(usage, "thoughtsTokenCount")
    return Usage(
        input_tokens=count(usage, "promptTokenCount"),
        output_tokens=count(usage, "candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
        cached_tokens=count(usage, "cachedContentTokenCount"),
    )
