"""OpenAI's Responses API (``POST /v1/responses`` with ``stream: true``).

Chosen with ``api="responses"`` on the ``openai`` provider
(``create_provider("openai:gpt-5-mini", api="responses")``; ``api="chat"``, Chat
Completions, stays the default) or by its own registry name, ``"openai-responses"``.
Several current OpenAI models and features (reasoning summaries) are offered only
here; servers that copy the API (DeepSeek, OpenRouter, Ollama) take the same
``base_url`` option as the Chat Completions provider.

**The request.** The conversation becomes ``input`` items: user and assistant text
as ``{"role", "content"}`` messages (a user message with attachments as
``input_text``, ``input_image`` with a ``data:`` URL, and ``input_file`` with
``file_data`` and ``filename`` parts), an assistant's tool calls as
``{"type": "function_call", "call_id", "name", "arguments"}`` items after its
text, and tool results as ``{"type": "function_call_output", "call_id",
"output"}``. The system prompt and any system messages go to ``instructions``.
Tools are flat ``{"type": "function", "name", "description", "parameters",
"strict": false}``: the API makes functions strict by default, and strict mode
refuses a schema with optional parameters, so strict is asked for only where it
is safe, in the structured answer (``text.format`` ``{"type": "json_schema",
"name", "schema", "strict"}`` with the schema closed as for Chat Completions;
``result.schema_mode`` ``"json_schema"``). ``max_tokens`` is sent as
``max_output_tokens``. Stop sequences do not exist in this API: a config with
``stop`` is refused rather than silently ignored.

**Decisions.** ``store`` is false by default: the API would otherwise keep every
response on OpenAI's servers for later retrieval, which nothing here uses (the
conversation is sent whole each time). Reasoning summaries are asked for only
when ``reasoning_summary=`` says so (``"auto"``, ``"concise"`` or
``"detailed"``; some organisations must be verified first). Encrypted reasoning
is not requested: with ``store`` false the model reasons afresh after a tool
round, which costs some tokens but keeps opaque blobs out of the saved history.
``encrypted_reasoning=True`` asks for ``include: ["reasoning.encrypted_content"]``;
the reasoning items then travel in :attr:`Finish.reasoning_blocks` (provider
``"openai-responses"``) and go back, unchanged, before the calls they led to.

**The stream** (:class:`ResponsesParser`): ``response.output_text.delta`` is
text; ``response.reasoning_summary_text.delta`` and ``response.reasoning_text.delta``
(raw reasoning, from DeepSeek and OpenRouter) are reasoning, successive summary
parts separated by a blank line; ``response.refusal.delta`` is text and makes
the finish reason ``"refusal"``. A ``function_call`` output item streams as
:class:`ToolCallDelta` (its ``call_id`` and name when it is added, then each
``response.function_call_arguments.delta``); the complete calls come from
``response.output_item.done`` and the final response's ``output``.
``response.completed`` ends the answer: finish reason ``"stop"``, or
``"tool_calls"`` with calls, with usage and the model. ``response.incomplete``
ends it with ``incomplete_details.reason`` as the finish reason (e.g.
``"max_output_tokens"``; only calls that were complete are kept).
``response.failed`` and an ``error`` event are the typed errors of
:func:`~pk_notebook.providers._http.error_in_stream` (rate limits and server
errors retryable), carrying the partial text. A body that ends without one of
those three events has no :class:`Finish`, so the pipeline reports it
truncated. Other events (``response.created``, content parts, hosted tools'
progress) are signs of life and nothing else.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..runtime.errors import ConfigurationError, ProtocolError, redact
from ..runtime.schema import OutputSchema
from ..runtime.types import (
    Delta,
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
from .base import HTTPProvider

OPENAI_BASE_URL = "https://api.openai.com/v1"
#: OpenAI's caps, as for Chat Completions: 20 MB per image, 32 MB of PDF per request
OPENAI_IMAGE_BYTES = 20 * 1024 * 1024
OPENAI_PDF_BYTES = 32 * 1024 * 1024

#: the ``reasoning_summary`` values the API takes
REASONING_SUMMARIES = ("auto", "concise", "detailed")
#: ``structured_output`` values
STRUCTURED_OUTPUT = ("native", "prompt")
#: the ``provider`` key of the reasoning items kept in Finish.reasoning_blocks
BLOCK_PROVIDER = "openai-responses"


class OpenAIResponsesProvider(HTTPProvider):
    """The Responses API with ``stream: true`` (see the module docstring).

    Extra options:
        store: let OpenAI keep the response (``store: true``); default False.
        reasoning_summary: ``"auto"``, ``"concise"`` or ``"detailed"`` to stream the
            model's reasoning summary as reasoning; default None (not asked for).
        reasoning_effort: ``reasoning.effort`` (``"minimal"``, ``"low"``,
            ``"medium"``, ``"high"``...), passed through; default None.
        encrypted_reasoning: request the encrypted reasoning items and send them back
            in tool rounds; default False.
        structured_output: ``"native"`` (``text.format`` with the JSON schema, the
            default) or ``"prompt"`` (the schema as instructions).
        api_key_header, query: as for :class:`~pk_notebook.providers.OpenAIProvider`
            (Azure: ``api_key_header="api-key"``).
        accepts: attachment kinds, ``("image", "pdf")`` on api.openai.com and
            ``("image",)`` elsewhere by default.
    """

    name = "openai"
    default_base_url = OPENAI_BASE_URL
    official_hosts: ClassVar[frozenset[str]] = frozenset({"api.openai.com"})
    key_env: ClassVar[tuple[str, ...]] = ("OPENAI_API_KEY",)
    defaults: ClassVar[ProviderConfig] = ProviderConfig(model="gpt-5-mini")
    #: which OpenAI API this provider speaks (``api=`` on the ``openai`` factory)
    api = "responses"

    def __init__(
        self,
        model: str | None = None,
        *,
        store: bool = False,
        reasoning_summary: str | None = None,
        reasoning_effort: str | None = None,
        encrypted_reasoning: bool = False,
        structured_output: str = "native",
        api_key_header: str = "authorization",
        query: dict[str, str] | None = None,
        **options: Any,
    ) -> None:
        if reasoning_summary is not None and reasoning_summary not in REASONING_SUMMARIES:
            raise ConfigurationError(
                f"reasoning_summary must be one of {', '.join(REASONING_SUMMARIES)} "
                f"(or None), got {reasoning_summary!r}"
            )
        if reasoning_effort is not None and not isinstance(reasoning_effort, str):
            raise ConfigurationError(
                f"reasoning_effort must be a string such as 'low', got {reasoning_effort!r}"
            )
        if structured_output not in STRUCTURED_OUTPUT:
            raise ConfigurationError(
                f"structured_output must be {' or '.join(map(repr, STRUCTURED_OUTPUT))}, "
                f"got {structured_output!r}"
            )
        super().__init__(model, **options)
        self.store = bool(store)
        self.reasoning_summary = reasoning_summary
        self.reasoning_effort = reasoning_effort
        self.encrypted_reasoning = bool(encrypted_reasoning)
        self.structured_output = structured_output
        self.api_key_header = api_key_header.lower()
        official = self.base_url.startswith(OPENAI_BASE_URL)
        if self.accepts is None:
            self.accepts = ("image", "pdf") if official else ("image",)
        self.url = self.base_url + "/responses"
        if query:
            from urllib.parse import urlencode

            self.url += "?" + urlencode(query)

    # --- the request ----------------------------------------------------------------

    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        if config.stop:
            raise ConfigurationError(
                "the Responses API has no stop sequences: drop stop=... or use the Chat "
                "Completions API (api='chat')"
            )
        self.check_attachments(
            request.messages,
            image_cap=OPENAI_IMAGE_BYTES,
            pdf_cap=OPENAI_PDF_BYTES,
            hint=(
                ""
                if self.base_url.startswith(OPENAI_BASE_URL)
                else " (servers other than api.openai.com are assumed to take images only)"
            ),
        )
        instructions = [config.system] if config.system else []
        items: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role == "system":
                if message.content:
                    instructions.append(message.content)
            else:
                items.extend(self.input_items(message))
        schema: OutputSchema | None = request.schema
        if schema is not None and self.structured_output == "prompt":
            instructions.append(schema.instructions())
            request.call.schema_mode = "prompt"
        payload: dict[str, Any] = {"model": config.model, "input": items, "stream": True}
        if instructions:
            payload["instructions"] = "\n\n".join(instructions)
        payload["store"] = self.store
        if request.tools:
            payload["tools"] = [responses_tool(spec) for spec in request.tools]
            if request.tool_choice is not None:
                payload["tool_choice"] = request.tool_choice
        if schema is not None and self.structured_output == "native":
            strict_schema, strict = schema.strict_schema()
            payload["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": schema.name,
                    "schema": strict_schema,
                    "strict": strict,
                }
            }
            request.call.schema_mode = "json_schema"
        reasoning: dict[str, Any] = {}
        if self.reasoning_effort is not None:
            reasoning["effort"] = self.reasoning_effort
        if self.reasoning_summary is not None:
            reasoning["summary"] = self.reasoning_summary
        if reasoning:
            payload["reasoning"] = reasoning
        if self.encrypted_reasoning:
            payload["include"] = ["reasoning.encrypted_content"]
        if config.max_tokens is not None:
            payload["max_output_tokens"] = config.max_tokens
        if config.temperature is not None:
            payload["temperature"] = config.temperature
        if config.top_p is not None:
            payload["top_p"] = config.top_p
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self._api_key:
            if self.api_key_header == "authorization":
                headers["authorization"] = f"Bearer {self._api_key}"
            else:
                headers[self.api_key_header] = self._api_key
        headers.update(self.extra_headers)
        return self.url, headers, _http.json_bytes(payload)

    def input_items(self, message: Message) -> list[dict[str, Any]]:
        """One message as ``input`` items (a message with tool calls becomes several)."""
        if message.role == "tool":
            return [
                {
                    "type": "function_call_output",
                    "call_id": message.tool_call_id or "",
                    "output": message.content,
                }
            ]
        if message.role == "assistant":
            items: list[dict[str, Any]] = []
            if self.encrypted_reasoning:
                items += [
                    {key: value for key, value in block.items() if key != "provider"}
                    for block in message.reasoning_blocks
                    if block.get("provider") == BLOCK_PROVIDER
                ]
            if message.content:
                items.append({"role": "assistant", "content": message.content})
            items += [
                {
                    "type": "function_call",
                    "call_id": call.id,
                    "name": call.name,
                    "arguments": call.arguments or "{}",
                }
                for call in message.tool_calls
            ]
            return items  # neither text nor calls: nothing to send
        if message.attachments:
            return [{"role": message.role, "content": responses_parts(message)}]
        return [{"role": message.role, "content": message.content}]

    def parser(self, config: ProviderConfig) -> ResponsesParser:
        return ResponsesParser(self, keep_reasoning=self.encrypted_reasoning)


def responses_parts(message: Message) -> list[dict[str, Any]]:
    """A user message with attachments: its ``input_text`` part, then one part per file."""
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "input_text", "text": message.content})
    for item in message.attachments:
        if item.is_image:
            parts.append({"type": "input_image", "image_url": item.data_url, "detail": "auto"})
        else:
            parts.append(
                {
                    "type": "input_file",
                    "filename": item.name or "document.pdf",
                    "file_data": item.data_url,
                }
            )
    return parts


def responses_tool(spec: Any) -> dict[str, Any]:
    """A :class:`~pk_notebook.runtime.tools.ToolSpec` as a (flat) Responses function tool."""
    tool: dict[str, Any] = {"type": "function", "name": spec.name}
    if spec.description:
        tool["description"] = spec.description
    tool["parameters"] = dict(spec.parameters)
    tool["strict"] = False
    return tool


# --- the stream ----------------------------------------------------------------------

_TEXT = "response.output_text.delta"
_REASONING_DELTAS = frozenset(
    {"response.reasoning_summary_text.delta", "response.reasoning_text.delta"}
)
#: events that start a new piece of reasoning (separated from the previous by a blank line)
_REASONING_STARTS = frozenset(
    {"response.reasoning_summary_part.added", "response.output_item.added"}
)


class ResponsesParser(StreamParser):
    """Turns a Responses API event stream into Delta/ToolCallDelta/Finish.

    Events are told apart by their payload's ``type`` (the SSE event name when a
    payload has none). Values of the wrong type (a ``delta`` that is not a string,
    an ``output_index`` that is not an integer, a ``response`` that is not an
    object, a usage count of ``"many"``) are a :class:`ProtocolError` with the raw
    line; unknown event types are ignored.
    """

    __slots__ = (
        "_calls",
        "_keep_reasoning",
        "_reasoned",
        "_reasoning_items",
        "_refused",
        "_separate",
        "finish_reason",
        "model",
        "usage",
    )

    def __init__(self, provider: Any, *, keep_reasoning: bool = False) -> None:
        super().__init__(provider)
        # output_index -> [call_id, name, [argument pieces], ordinal, complete arguments or None]
        self._calls: dict[int, list[Any]] = {}
        self._keep_reasoning = keep_reasoning
        self._reasoning_items: dict[int, dict[str, Any]] = {}
        self._reasoned = False  # some reasoning was emitted
        self._separate = False  # the next reasoning starts a new part
        self._refused = False
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
            if data == b"[DONE]":  # some compatible servers end with it; it proves nothing
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
            self.started = True
            try:
                kind = obj.get("type")
                if kind is None and name:
                    kind = name.decode("utf-8", "replace")
                elif type(kind) is not str:
                    raise Bad("'type' is not a string")
                if kind == _TEXT:
                    delta = string(obj.get("delta"), "'delta'")
                    if delta:
                        self.emit(out, delta)
                    continue
                if kind in _REASONING_DELTAS:
                    self._reasoning(string(obj.get("delta"), "'delta'"), out)
                    continue
                if kind == "response.function_call_arguments.delta":
                    self._arguments(obj, out)
                    continue
                if kind == "response.refusal.delta":
                    delta = string(obj.get("delta"), "'delta'")
                    if delta:
                        self._refused = True
                        self.emit(out, delta)
                    continue
                if kind in _REASONING_STARTS and self._reasoned:
                    self._separate = True
                if kind == "response.output_item.added":
                    self._item_added(obj, out)
                elif kind == "response.output_item.done":
                    self._item_done(obj)
                    out.append(Delta(activity=True))
                elif kind in ("response.completed", "response.incomplete"):
                    out.append(self._end(obj, kind))
                    self.done = True
                    break
                elif kind == "response.failed":
                    response = mapping(obj.get("response"), "'response'")
                    self._response_facts(response)
                    error = mapping(response.get("error"), "the response's 'error'")
                    self._error(text, error or {"message": "the response failed"})
                    break
                elif kind == "error":
                    inner = obj.get("error")
                    if inner is None:  # {"type": "error", "code", "message", "param"}
                        self._error(text, {"code": obj.get("code"), "message": obj.get("message")})
                    else:
                        self._error(text, mapping(inner, "'error'"))
                    break
                else:
                    # response.created / in_progress, content parts, *.done events and
                    # hosted tools' progress: the server is working
                    if kind in ("response.created", "response.in_progress"):
                        self._response_facts(mapping(obj.get("response"), "'response'"))
                    out.append(Delta(activity=True))
            except Bad as exc:
                self.fail_shape(text, str(exc))
                break
        return out

    def end(self) -> Finish | None:
        # No response.completed / incomplete / failed: the answer was cut off.
        return None

    # --- pieces -------------------------------------------------------------------

    def _reasoning(self, delta: str, out: list[ProviderEvent]) -> None:
        if not delta:
            return
        if self._separate:
            self._separate = False
            delta = "\n\n" + delta
        self._reasoned = True
        self.emit(out, "", delta)

    def _item_added(self, obj: dict[str, Any], out: list[ProviderEvent]) -> None:
        item = mapping(obj.get("item"), "'item'")
        if item.get("type") != "function_call":
            out.append(Delta(activity=True))
            return
        index = _output_index(obj)
        if index in self._calls:
            out.append(Delta(activity=True))
            return
        call_id = string(item.get("call_id"), "a function call's 'call_id'")
        name = string(item.get("name"), "a function call's 'name'")
        arguments = string(item.get("arguments"), "a function call's 'arguments'")
        self.charge_tools(TOOL_CALL_OVERHEAD + len(call_id) + len(name) + len(arguments))
        ordinal = len(self._calls)
        self._calls[index] = [call_id, name, [arguments] if arguments else [], ordinal, None]
        out.append(ToolCallDelta(ordinal, call_id, name, arguments))

    def _arguments(self, obj: dict[str, Any], out: list[ProviderEvent]) -> None:
        delta = string(obj.get("delta"), "'delta'")
        slot = self._calls.get(_output_index(obj))
        if slot is None or not delta:
            out.append(Delta(activity=True))
            return
        self.charge_tools(len(delta))
        slot[2].append(delta)
        out.append(ToolCallDelta(slot[3], arguments=delta))

    def _item_done(self, obj: dict[str, Any]) -> None:
        item = mapping(obj.get("item"), "'item'")
        kind = item.get("type")
        if kind == "function_call":
            self._call_item(_output_index(obj), item)
        elif kind == "reasoning" and self._keep_reasoning:
            self._keep(_output_index(obj), item)

    def _call_item(self, index: int, item: dict[str, Any]) -> None:
        """A complete ``function_call`` item: its arguments are the call's, whatever streamed."""
        call_id = string(item.get("call_id"), "a function call's 'call_id'")
        name = string(item.get("name"), "a function call's 'name'")
        arguments = string(item.get("arguments"), "a function call's 'arguments'")
        slot = self._calls.get(index)
        if slot is None:
            self.charge_tools(TOOL_CALL_OVERHEAD + len(call_id) + len(name) + len(arguments))
            slot = self._calls[index] = [call_id, name, [], len(self._calls), None]
        elif slot[4] is None:
            self.charge_tools(len(arguments))
        slot[0] = call_id or slot[0]
        slot[1] = name or slot[1]
        slot[4] = arguments

    def _keep(self, index: int, item: dict[str, Any]) -> None:
        """A reasoning item to send back (with its encrypted content), charged as answer."""
        if index in self._reasoning_items or not item.get("encrypted_content"):
            return
        record = {"provider": BLOCK_PROVIDER, **item}
        record.pop("status", None)
        self.charge_answer(len(dump_json(record)))
        self._reasoning_items[index] = record

    def _response_facts(self, response: dict[str, Any]) -> None:
        """The model and usage a ``response`` object reports."""
        model = response.get("model")
        if model:
            self.model = string(model, "the response's 'model'")
        usage = response.get("usage")
        if usage:
            self.usage = usage_from_responses(usage)

    def _end(self, obj: dict[str, Any], kind: str) -> Finish:
        response = mapping(obj.get("response"), "'response'")
        self._response_facts(response)
        output = response.get("output")
        if output is not None:
            if type(output) is not list:
                raise Bad("the response's 'output' is not a list")
            for index, item in enumerate(output):
                item = mapping(item, "an output item")
                kind_of = item.get("type")
                if kind_of == "function_call":
                    self._call_item(index, item)
                elif kind_of == "reasoning" and self._keep_reasoning:
                    self._keep(index, item)
        complete = kind == "response.completed"
        calls = [
            slot
            for _, slot in sorted(self._calls.items(), key=lambda pair: pair[1][3])
            if complete or slot[4] is not None
        ]
        tools = tuple(
            ToolCall(slot[0], slot[1], slot[4] if slot[4] is not None else "".join(slot[2]))
            for slot in calls
        )
        if complete:
            reason = "tool_calls" if tools else ("refusal" if self._refused else "stop")
        else:
            details = mapping(response.get("incomplete_details"), "'incomplete_details'")
            reason = string(details.get("reason"), "'incomplete_details.reason'") or "incomplete"
        self.finish_reason = reason
        blocks = tuple(record for _, record in sorted(self._reasoning_items.items()))
        if blocks:
            return self._provider.finish(
                reason, self.usage, tools, self.model, reasoning_blocks=blocks
            )
        return self._provider.finish(reason, self.usage, tools, self.model)

    def _error(self, raw: str, error: dict[str, Any]) -> None:
        """``response.failed``'s error or an ``error`` event: the typed error, partial text kept."""
        message = error.get("message")
        code = error.get("code") or error.get("type")
        normalised: dict[str, Any] = {"message": message if isinstance(message, str) else None}
        if isinstance(code, str):
            normalised["code"] = code
        elif isinstance(code, int):
            normalised["status_code"] = code
        failure = _http.error_in_stream(self._name, {"error": normalised}, self._secret)
        failure.body = redact(raw, self._secret)[:2000]
        if isinstance(code, str):
            failure.code = code
        self.fail(failure)


def _output_index(obj: dict[str, Any]) -> int:
    index = obj.get("output_index")
    if index is None:
        return -1
    if type(index) is not int:
        raise Bad("'output_index' is not an integer")
    return index


def usage_from_responses(usage: Any) -> Usage | None:
    """``input_tokens``/``output_tokens`` (+ reasoning and cached details) as :class:`Usage`.

    Raises :class:`~pk_notebook.providers._parse.Bad` for a usage of the wrong shape.
    """
    if not usage:
        return None
    usage = mapping(usage, "'usage'")
    input_details = mapping(usage.get("input_tokens_details"), "'input_tokens_details'")
    output_details = mapping(usage.get("output_tokens_details"), "'output_tokens_details'")
    return Usage(
        input_tokens=count(usage, "input_tokens"),
        output_tokens=count(usage, "output_tokens"),
        reasoning_tokens=count(output_details, "reasoning_tokens"),
        cached_tokens=count(input_details, "cached_tokens"),
    )
