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
their ``index`` and reported as :class:`ToolCallDelta` as they arrive.

``<think>...</think>`` in the text (local reasoning models) becomes reasoning:
see :mod:`pk_notebook.providers._think` and the ``think_tags`` option.

**Structured output** (``schema=``): ``response_format`` ``{"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}`` with the schema closed for strict
mode (``strict`` is false when an optional property would have to change
meaning; see :meth:`OutputSchema.strict_schema`); ``result.schema_mode`` is
``"json_schema"``. For a server without ``json_schema`` support, pass
``structured_output="prompt"``: the schema goes into the system message as an
instruction, no ``response_format`` is sent (``schema_mode`` ``"prompt"``), and the
answer is validated the same way.

**Attachments** are content parts after the text part: images as ``image_url``
parts with a ``data:`` URL (at most 20 MB each), PDFs as ``file`` parts
(``filename``, ``file_data`` as a ``data:`` URL). Which servers take what (the
decision): the official host (``api.openai.com``) takes images and PDFs; other
OpenAI-compatible servers (Ollama, vLLM, LM Studio, Groq...) take images only,
because few of them read ``file`` parts, and a PDF they drop silently would be a
wrong answer instead of an error. Override with ``accepts=("image", "pdf")``
(OpenRouter, Azure with a model that reads PDFs) or ``accepts=()`` (a text-only
model).
"""

from __future__ import annotations

from json import loads
from typing import Any, ClassVar

from ..runtime.errors import ConfigurationError, ProtocolError
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
from ._parse import TOOL_CALL_OVERHEAD, Bad, StreamParser, count, mapping, scan_json, string
from ._think import THINK_TAGS, ThinkSplitter
from .base import HTTPProvider

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
        think_tags: what ``<think>...</think>`` in the answer text is (local
            reasoning models on Ollama, vLLM, LM Studio): ``"auto"`` (the default)
            turns a ``<think>`` at the start of the answer into reasoning, and
            starts models whose template opens the tag itself (names matching
            ``deepseek-r1``, ``r1-distill``, ``qwq``) inside the reasoning until
            ``</think>``; ``"open"`` starts every model inside it; ``"off"`` leaves
            the text alone. A server that sends reasoning in its own field turns
            it off. Details in :mod:`pk_notebook.providers._think`.
        structured_output: how ``schema=`` is asked for: ``"native"`` (the default:
            ``response_format`` with a JSON schema) or ``"prompt"`` (instructions in
            the system message, for servers without ``json_schema`` support, which
            reject or ignore ``response_format``); validated at the end either way.
        accepts: attachment kinds, ``("image", "pdf")`` on api.openai.com and
            ``("image",)`` elsewhere by default (see the module docstring).

    Tools go out as ``tools`` of ``{"type": "function", ...}``, ``tool_choice`` as
    the string it is; an assistant message's tool calls as its ``tool_calls``, a
    tool result as a ``"tool"`` message. Reasoning is never sent back: compatible
    servers reject or ignore it, and DeepSeek asks that ``reasoning_content`` not
    be sent again.
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
        think_tags: str = "auto",
        structured_output: str = "native",
        **options: Any,
    ) -> None:
        if think_tags not in THINK_TAGS:
            raise ConfigurationError(
                f"think_tags must be one of {', '.join(THINK_TAGS)}, got {think_tags!r}"
            )
        if structured_output not in STRUCTURED_OUTPUT:
            raise ConfigurationError(
                f"structured_output must be {' or '.join(map(repr, STRUCTURED_OUTPUT))}, "
                f"got {structured_output!r}"
            )
        super().__init__(model, **options)
        self.structured_output = structured_output
        self.think_tags = think_tags
        self.api_key_header = api_key_header.lower()
        self.include_usage = include_usage
        official = self.base_url.startswith(OPENAI_BASE_URL)
        if self.accepts is None:
            self.accepts = ("image", "pdf") if official else ("image",)
        self.max_tokens_field = max_tokens_field or (
            "max_completion_tokens" if official else "max_tokens"
        )
        self.url = self.base_url + "/chat/completions"
        if query:
            from urllib.parse import urlencode

            self.url += "?" + urlencode(query)

    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        self.check_attachments(
            request.messages,
            image_cap=OPENAI_IMAGE_BYTES,
            pdf_cap=OPENAI_PDF_BYTES,
            hint=(
                ""
                if self.base_url.startswith(OPENAI_BASE_URL)
                else " (OpenAI-compatible servers other than api.openai.com, such as Ollama, "
                "vLLM or LM Studio, take images but not PDF file parts)"
            ),
        )
        schema: OutputSchema | None = request.schema
        system = config.system
        if schema is not None and self.structured_output == "prompt":
            system = f"{system}\n\n{schema.instructions()}" if system else schema.instructions()
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": system})
        for m in request.messages:
            if m.tool_calls or m.role == "tool":
                messages.append(openai_message(m))
            elif m.attachments and m.role == "user":
                messages.append({"role": "user", "content": openai_parts(m)})
            elif m.role != "assistant" or m.content:
                messages.append({"role": m.role, "content": m.content})
            # an assistant message with neither text nor calls: nothing to send
        payload: dict[str, Any] = {"model": config.model, "messages": messages, "stream": True}
        if schema is not None:
            if self.structured_output == "prompt":
                request.call.schema_mode = "prompt"
            else:
                strict_schema, strict = schema.strict_schema()
                payload["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": schema.name, "schema": strict_schema, "strict": strict},
                }
                request.call.schema_mode = "json_schema"
        if request.tools:
            payload["tools"] = [openai_tool(spec) for spec in request.tools]
            if request.tool_choice is not None:
                payload["tool_choice"] = request.tool_choice
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


#: ``structured_output`` values
STRUCTURED_OUTPUT = ("native", "prompt")
#: OpenAI's caps: 20 MB per image, 32 MB of PDF content per request
OPENAI_IMAGE_BYTES = 20 * 1024 * 1024
OPENAI_PDF_BYTES = 32 * 1024 * 1024


def openai_parts(message: Message) -> list[dict[str, Any]]:
    """A user message with attachments as content parts: the text first, then the files."""
    parts: list[dict[str, Any]] = []
    if message.content:
        parts.append({"type": "text", "text": message.content})
    for item in message.attachments:
        if item.is_image:
            parts.append({"type": "image_url", "image_url": {"url": item.data_url}})
        else:
            parts.append(
                {
                    "type": "file",
                    "file": {"filename": item.name or "document.pdf", "file_data": item.data_url},
                }
            )
    return parts


def openai_tool(spec: Any) -> dict[str, Any]:
    """A :class:`~pk_notebook.runtime.tools.ToolSpec` as a Chat Completions tool."""
    function: dict[str, Any] = {"name": spec.name}
    if spec.description:
        function["description"] = spec.description
    function["parameters"] = dict(spec.parameters)
    return {"type": "function", "function": function}


def openai_message(message: Message) -> dict[str, Any]:
    """An assistant message with tool calls, or a tool result, in Chat Completions form."""
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content,
        }
    return {
        "role": message.role,
        "content": message.content or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in message.tool_calls
        ],
    }


class OpenAIParser(StreamParser):
    """Turns a Chat Completions event stream into Delta/Finish, one read at a time.

    Shapes, and what becomes of them (``tests/providers/test_shapes.py``):

    - With ``n > 1`` each chunk carries choices identified by their ``index``, not
      by position: the answer is choice 0's; the other choices are ignored.
    - ``delta.refusal`` (a model declining) is answer text: it is shown and saved
      like any text, and the finish reason becomes ``"refusal"`` (the value
      Anthropic uses) instead of the ``"stop"`` the server sends with it.
    - ``delta.content`` may be a list of typed parts (Mistral's reasoning models):
      ``text`` parts are text, ``thinking`` parts (a string or a list of text
      parts) are reasoning, parts of other types carry no text and are skipped.
    - A ``finish_reason`` that is not a string (or null), and any other value of
      the wrong type where text, objects or token counts belong, is a
      :class:`ProtocolError` with the raw line: such a server does not speak the
      protocol, and guessing would report something it did not say.
    """

    __slots__ = ("_refused", "_think", "_tools", "finish_reason", "model", "usage")

    def __init__(self, provider: HTTPProvider, config: ProviderConfig | None = None) -> None:
        super().__init__(provider)
        self._tools: dict[int, list[Any]] | None = None
        self._refused = False
        model = config.model if config is not None else None
        #: the <think> splitter while a tag may still come; None = plain text (the fast path)
        self._think: ThinkSplitter | None = ThinkSplitter.for_model(
            getattr(provider, "think_tags", "auto"), model or getattr(provider, "model", None)
        )
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
        keep = self._parts.append  # looked up once per read, not once per chunk
        max_answer = self._max_answer
        think = self._think
        for data, name in events:
            if data == b"[DONE]":
                if self._think is not None:
                    self._flush_think(out)
                out.append(self._finish())
                self.done = True
                break
            # _parse.load_json, inlined: this is the hot path of the most used provider,
            # and one call less per chunk is measurable against the httpx-sse bar.
            try:
                text = data.decode()
            except UnicodeDecodeError:  # shown as U+FFFD, like any client would
                text = data.decode("utf-8", "replace")
            try:
                try:
                    obj, end = scan_json(text, 0)
                except StopIteration:  # leading whitespace, or not JSON at all
                    obj, end = loads(text), len(text)
                if end != len(text) and text[end:].strip():
                    raise ValueError(f"extra data after the JSON value (at {end})")
            except ValueError as exc:
                self.fail_json(text, str(exc))
                break
            except RecursionError:
                self.fail_json(text, "nested too deeply")
                break
            if type(obj) is not dict:
                self.fail_shape(text, "not an object")
                break
            if name == b"error" or "error" in obj:
                self.fail(_http.error_in_stream(self._name, obj, self._secret))
                break
            self.started = True
            try:
                choices = obj.get("choices")
                if choices:
                    if type(choices) is not list:
                        raise Bad("'choices' is not a list")
                    for choice in choices if len(choices) > 1 else (choices[0],):
                        if type(choice) is not dict:
                            raise Bad("a choice is not an object")
                        index = choice.get("index")
                        if index:  # another of n choices: the answer is choice 0
                            if type(index) is not int:
                                raise Bad("a choice's 'index' is not an integer")
                            continue
                        delta = choice.get("delta")
                        if delta:
                            content = delta.get("content") if type(delta) is dict else None
                            if type(content) is str and len(delta) == 1 and think is None:
                                if content:  # the common chunk: just text
                                    size = self._size + len(content)
                                    if size > max_answer:
                                        self.too_long()
                                    self._size = size
                                    keep(content)
                                    out.append(Delta(content))
                            elif type(delta) is not dict:
                                raise Bad("'delta' is not an object")
                            else:
                                self._delta(delta, out)
                                think = self._think
                        reason = choice.get("finish_reason")
                        if reason is not None:
                            if type(reason) is not str:
                                raise Bad("'finish_reason' is not a string")
                            if reason:
                                self.finish_reason = reason
                                if think is not None:  # the text is complete
                                    self._flush_think(out)
                                    think = None
                usage = obj.get("usage")
                if usage:
                    self.usage = usage_from_openai(usage)
                if self.model is None:
                    model = obj.get("model")
                    if model:
                        self.model = string(model, "'model'")
            except Bad as exc:
                self.fail_shape(text, str(exc))
                break
        return out

    def end(self) -> Finish | None:
        # No [DONE]: complete only if the model said why it stopped.
        if self.finish_reason is None:
            return None
        return self._finish()

    def _delta(self, delta: dict[str, Any], out: list[ProviderEvent]) -> None:
        """Every delta but the plain-text one: reasoning, refusals, parts, tool calls."""
        content = delta.get("content")
        reasoning = ""
        if content is None or type(content) is str:
            text = content or ""
        elif type(content) is list:
            text, reasoning = content_parts(content)
        else:
            raise Bad("'content' is neither a string nor a list of parts")
        refusal = delta.get("refusal")
        if refusal is not None:
            refusal = string(refusal, "'refusal'")
            if refusal:
                self._refused = True
        if not reasoning:
            reasoning = string(delta.get("reasoning_content"), "'reasoning_content'") or string(
                delta.get("reasoning"), "'reasoning'"
            )
        think = self._think
        if think is not None:
            if reasoning and not think.seen_text:
                # The server splits the reasoning out itself: no tags in the text.
                self._think = think = None
            elif text:
                text, thought = think.feed(text)
                if think.off:
                    self._think = None
                if thought:
                    reasoning += thought
                if not (text or reasoning):
                    out.append(Delta(activity=True))  # held back: still a sign of life
        if refusal:
            text += refusal
        if text or reasoning:
            self.emit(out, text, reasoning)
        tool_calls = delta.get("tool_calls")
        if tool_calls:
            if type(tool_calls) is not list:
                raise Bad("'tool_calls' is not a list")
            self._tool_fragments(tool_calls, out)

    def _flush_think(self, out: list[ProviderEvent]) -> None:
        """The end of the answer: send what the splitter holds back, and bypass it."""
        think = self._think
        self._think = None
        if think is not None:
            text, reasoning = think.flush()
            if text or reasoning:
                self.emit(out, text, reasoning)

    def _tool_fragments(self, fragments: list[Any], out: list[ProviderEvent]) -> None:
        tools = self._tools
        if tools is None:
            tools = self._tools = {}
        for fragment in fragments:
            if type(fragment) is not dict:
                raise Bad("a tool call is not an object")
            index = fragment.get("index")
            if index is None:
                index = len(tools)
            elif type(index) is not int:
                raise Bad("a tool call's 'index' is not an integer")
            slot = tools.get(index)
            if slot is None:
                self.charge_tools(TOOL_CALL_OVERHEAD)
                slot = tools[index] = ["", "", []]
            call_id = string(fragment.get("id"), "a tool call's 'id'")
            if call_id:
                self.charge_tools(len(call_id))
                slot[0] = call_id
            function = mapping(fragment.get("function"), "a tool call's 'function'")
            name = string(function.get("name"), "a tool call's name")
            if name:
                self.charge_tools(len(name))
                slot[1] += name
            arguments = string(function.get("arguments"), "a tool call's 'arguments'")
            if arguments:
                self.charge_tools(len(arguments))
                slot[2].append(arguments)
            out.append(ToolCallDelta(index, call_id, name, arguments))

    def _finish(self) -> Finish:
        tools: tuple[ToolCall, ...] = ()
        if self._tools:
            tools = tuple(
                ToolCall(slot[0], slot[1], "".join(slot[2]))
                for _, slot in sorted(self._tools.items())
            )
        reason = self.finish_reason
        if self._refused and reason in (None, "stop"):
            reason = "refusal"
        return self._provider.finish(reason, self.usage, tools, self.model)


def content_parts(parts: list[Any]) -> tuple[str, str]:
    """``(text, reasoning)`` of a list-valued ``content`` (Mistral's reasoning models).

    ``[{"type": "thinking", "thinking": [{"type": "text", "text": "..."}]},
    {"type": "text", "text": "..."}]``; a ``thinking`` value may also be a string.
    """
    text: list[str] = []
    reasoning: list[str] = []
    for part in parts:
        if type(part) is not dict:
            raise Bad("a part of 'content' is not an object")
        kind = part.get("type")
        if kind == "text":
            text.append(string(part.get("text"), "a text part's 'text'"))
        elif kind == "thinking":
            thinking = part.get("thinking")
            if type(thinking) is list:
                for inner in thinking:
                    if type(inner) is not dict:
                        raise Bad("a part of 'thinking' is not an object")
                    if inner.get("type") == "text":
                        reasoning.append(string(inner.get("text"), "a thinking part's 'text'"))
            else:
                reasoning.append(string(thinking, "'thinking'"))
        # other part types (images, references) carry no text
    return "".join(text), "".join(reasoning)


def usage_from_openai(usage: dict[str, Any] | None) -> Usage | None:
    """Map ``prompt_tokens``/``completion_tokens`` (+ details) onto :class:`Usage`.

    Raises ``ValueError`` (:class:`~pk_notebook.providers._parse.Bad`) for a usage
    object of the wrong shape, such as a count of ``"many"``.
    """
    if not usage:
        return None
    usage = mapping(usage, "'usage'")
    prompt_details = mapping(usage.get("prompt_tokens_details"), "'prompt_tokens_details'")
    completion_details = mapping(
        usage.get("completion_tokens_details"), "'completion_tokens_details'"
    )
    return Usage(
        input_tokens=count(usage, "prompt_tokens"),
        output_tokens=count(usage, "completion_tokens"),
        reasoning_tokens=count(completion_details, "reasoning_tokens"),
        cached_tokens=count(prompt_details, "cached_tokens"),
    )
