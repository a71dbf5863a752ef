"""Anthropic Messages streaming.

The stream is a sequence of named events: ``message_start`` (model, input usage),
``content_block_start`` / ``content_block_delta`` / ``content_block_stop`` per
block (text, thinking, tool_use), ``message_delta`` (stop reason, output usage),
``message_stop`` (the end marker), ``ping`` at any time, and ``error`` (e.g.
``overloaded_error``, which becomes a retryable :class:`ServerError`).
``stop_reason: "pause_turn"`` ends the stream with a ``ProviderError`` (code
``"pause_turn"``), not a finish: see :class:`AnthropicParser`.

Thinking streams as reasoning; each thinking block (with the signature that
arrives in its ``signature_delta``) and each ``redacted_thinking`` block is kept
in :attr:`Finish.reasoning_blocks`, because a follow-up request in a tool loop
must send them back unchanged, before the ``tool_use`` blocks they led to.

**Structured output** (``schema=``) uses forced tool use (``result.schema_mode``
``"tool"``): the request declares one more tool, named after the schema, whose
``input_schema`` is the schema, and ``tool_choice`` ``{"type": "tool", "name":
...}`` forces it. With real tools too, they are kept and ``tool_choice`` becomes
``{"type": "any"}`` (call a tool, or answer through the schema tool); after the
last tool round (``tool_choice="none"``) the schema tool is forced again. The
parser turns that tool's ``input_json_delta`` pieces into answer *text*, so the
stream shows, parses and validates the JSON like any answer; it is never a tool
call. A finished structured answer ends with ``stop_reason`` ``"tool_use"`` on
the wire; it is reported as ``"end_turn"``, the finish reason of any complete
Anthropic answer (``"max_tokens"`` stays what it is: the cut-off case). A schema
whose root is not an object (tool input must be one) is asked for with
instructions in the system prompt instead (``schema_mode`` ``"prompt"``).

**Attachments** become blocks after the text block: images as ``image`` blocks
(base64 source; JPEG, PNG, GIF, WebP; at most 5 MB each), PDFs as ``document``
blocks (base64, at most 32 MB). Both are taken by default (``accepts=``).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..runtime.errors import ProtocolError, ProviderError
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

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(HTTPProvider):
    """Claude models over the Messages API (``POST {base_url}/v1/messages``).

    ``max_tokens`` is required by the API, so it defaults to 4096.

    Tools go out as ``tools`` with an ``input_schema``; ``tool_choice`` ``"auto"``,
    ``"none"``, ``"required"`` as ``{"type": "auto" | "none" | "any"}``. An assistant
    message with tool calls becomes content blocks: its Anthropic thinking blocks
    (unchanged), its text, one ``tool_use`` per call; tool results become
    ``tool_result`` blocks of a user message. Consecutive messages of one role are
    merged into one, as the API requires the roles to alternate. A history with
    tool rounds sent without ``tools`` (the API refuses that) declares the tools it
    used, with ``tool_choice`` ``"none"``.
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
        self.check_attachments(
            request.messages, image_cap=ANTHROPIC_IMAGE_BYTES, pdf_cap=ANTHROPIC_PDF_BYTES
        )
        system = [config.system] if config.system else []
        messages = anthropic_messages(request.messages, system)
        payload: dict[str, Any] = {
            "model": config.model,
            "max_tokens": config.max_tokens or 4096,
            "messages": messages,
            "stream": True,
        }
        answer_tool = _answer_tool(request)
        if request.schema is not None and answer_tool is None:
            system.append(request.schema.instructions())
            request.call.schema_mode = "prompt"
        if request.tools:
            payload["tools"] = [anthropic_tool(spec) for spec in request.tools]
            choice = _TOOL_CHOICE.get(request.tool_choice or "")
            if choice is not None:
                payload["tool_choice"] = {"type": choice}
        else:
            # The API refuses tool_use/tool_result blocks in a request without tools
            # (a session with an earlier tool round, continued without tools=): name
            # the tools the history used, and forbid calling them.
            used = _used_tools(request.messages)
            if used:
                payload["tools"] = [
                    {
                        "name": name,
                        "description": "Used earlier in this conversation; not available now.",
                        "input_schema": {"type": "object", "properties": {}},
                    }
                    for name in used
                ]
                payload["tool_choice"] = {"type": "none"}
        if answer_tool is not None:
            schema: OutputSchema = request.schema
            payload.setdefault("tools", []).append(
                {
                    "name": answer_tool,
                    "description": (
                        f"Give your answer ({schema.name}) through this tool: its input is "
                        "the answer."
                    ),
                    "input_schema": _input_schema(schema.json_schema),
                }
            )
            if request.tools and request.tool_choice != "none":
                payload["tool_choice"] = {"type": "any"}
            else:
                payload["tool_choice"] = {"type": "tool", "name": answer_tool}
            request.call.schema_mode = "tool"
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

    def parser_for(self, request: Request, config: ProviderConfig) -> AnthropicParser:
        return AnthropicParser(self, answer_tool=_answer_tool(request))


#: Anthropic's caps: 5 MB per image, 32 MB per request (so per PDF)
ANTHROPIC_IMAGE_BYTES = 5 * 1024 * 1024
ANTHROPIC_PDF_BYTES = 32 * 1024 * 1024


def _answer_tool(request: Request) -> str | None:
    """The name of the tool that carries a structured answer, or None without one.

    The schema's name, made unique among the request's tools; None when there is no
    schema, or when its root is not an object (a tool's input must be one).
    """
    schema: OutputSchema | None = request.schema
    if schema is None:
        return None
    root = schema.json_schema
    if not _object_root(root):
        return None
    taken = {str(getattr(spec, "name", "")) for spec in request.tools}
    name = schema.name
    if name in taken:
        name = name[:57] + "_answer"
    return None if name in taken else name


def _object_root(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "object" or (kind is None and "properties" in schema)


def _input_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return schema if "type" in schema else {"type": "object", **schema}


_TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any"}


def anthropic_tool(spec: Any) -> dict[str, Any]:
    """A :class:`~pk_notebook.runtime.tools.ToolSpec` as a Messages API tool."""
    tool: dict[str, Any] = {"name": spec.name}
    if spec.description:
        tool["description"] = spec.description
    tool["input_schema"] = dict(spec.parameters)
    return tool


def anthropic_messages(
    history: tuple[Message, ...] | list[Message], system: list[str]
) -> list[dict[str, Any]]:
    """The ``messages`` of a request; system messages are appended to ``system``.

    A text-only message keeps plain string content; one with tool calls, tool
    results has a list of blocks. Anthropic thinking blocks go back with the
    tool calls they led to (the API requires them there, and ignores those of a
    finished turn, so a text-only answer stays a string). Messages of the same
    role in a row are merged (tool results and the user text after them make one
    user message, results first).
    """
    out: list[dict[str, Any]] = []
    for message in history:
        if message.role == "system":
            system.append(message.content)
            continue
        content: str | list[dict[str, Any]]
        if message.role == "tool":
            role = "user"
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
            }
            if message.content:
                result["content"] = message.content
            if message.is_error:
                result["is_error"] = True
            content = [result]
        elif message.role == "assistant":
            role = "assistant"
            if message.tool_calls:
                content = _assistant_blocks(message)
            elif message.content:
                content = message.content
            else:
                continue  # neither text nor calls: nothing to send
        elif message.attachments:
            role = "user"
            content = _user_blocks(message)
        else:
            role = "user"
            content = message.content
        if out and out[-1]["role"] == role:
            previous = out[-1]
            previous["content"] = _blocks(previous["content"]) + _blocks(content)
        else:
            out.append({"role": role, "content": content})
    return out


def _user_blocks(message: Message) -> list[dict[str, Any]]:
    """A user message with attachments: its text block, then an image or document each."""
    blocks = _blocks(message.content)
    for item in message.attachments:
        source = {"type": "base64", "media_type": item.mime_type, "data": item.base64}
        blocks.append({"type": "image" if item.is_image else "document", "source": source})
    return blocks


def _used_tools(history: tuple[Message, ...] | list[Message]) -> list[str]:
    """The names of the tools the calls in ``history`` used, once each, in order."""
    names: dict[str, None] = {}
    for message in history:
        for call in message.tool_calls:
            names.setdefault(call.name or "tool", None)
        if message.role == "tool" and not names:
            names.setdefault(message.name or "tool", None)
    return list(names)


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _assistant_blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {key: value for key, value in block.items() if key != "provider"}
        for block in message.reasoning_blocks
        if block.get("provider") == "anthropic"
    ]
    if message.content.strip():  # the API refuses a text block of only whitespace
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)})
    return blocks


def _input(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the object ``tool_use`` wants; ``{}`` if they are not one."""
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class AnthropicParser(StreamParser):
    """Turns a Messages event stream into Delta/Finish.

    ``stop_reason: "pause_turn"`` (the API paused a long server-side tool run and
    expects the conversation to be sent again to continue) is not a finished
    answer: the stream ends with a :class:`ProviderError` whose ``code`` is
    ``"pause_turn"``, keeping the partial text, so it is never saved or shown as a
    complete answer. ``"refusal"`` stays the finish reason it is. Values of the
    wrong type are a :class:`ProtocolError` with the raw line.
    """

    __slots__ = (
        "_answer_block",
        "_answer_tool",
        "_blocks",
        "_thinking",
        "_usage",
        "model",
        "stop_reason",
    )

    def __init__(self, provider: HTTPProvider, answer_tool: str | None = None) -> None:
        super().__init__(provider)
        #: the structured answer's tool (its input is answer text), and its block's
        #: index: [index, whether pieces came, the input of its start event]
        self._answer_tool = answer_tool
        self._answer_block: list[Any] | None = None
        # index -> [id, name, [json pieces], input JSON, ordinal among the calls]
        self._blocks: dict[int, list[Any]] = {}
        # index -> the thinking block's record ("thinking" and "signature" kept as lists
        # of pieces until the end), or a redacted_thinking block's record
        self._thinking: dict[int, dict[str, Any]] = {}
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
                    self._block_start(obj, out)
                elif kind == "content_block_stop":
                    self._block_stop(obj, out)
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
                # unknown future events need nothing
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
                record = self._thinking.get(_index(obj, -1))
                if record is not None and record["type"] == "thinking":
                    record["thinking"].append(thinking)
        elif dtype == "input_json_delta":
            piece = string(delta.get("partial_json"), "'partial_json'")
            answer = self._answer_block
            if answer is not None and answer[0] == _index(obj, -1):
                if piece:
                    answer[1] = True
                    self.emit(out, piece)
                else:
                    out.append(Delta(activity=True))
                return
            block = self._blocks.get(_index(obj, -1))
            if block is None:
                out.append(Delta(activity=True))
                return
            if piece:
                self.charge_tools(len(piece))
                block[2].append(piece)
            out.append(ToolCallDelta(block[4], arguments=piece))
        elif dtype == "signature_delta":
            signature = string(delta.get("signature"), "'signature'")
            record = self._thinking.get(_index(obj, -1))
            if record is not None and record["type"] == "thinking" and signature:
                self.charge_answer(len(signature))
                record["signature"].append(signature)
        # citations_delta and future kinds carry no answer text

    def _block_start(self, obj: dict[str, Any], out: list[ProviderEvent]) -> None:
        opened = mapping(obj.get("content_block"), "'content_block'")
        kind = opened.get("type")
        if kind == "tool_use":
            tool_id = string(opened.get("id"), "a tool_use block's 'id'")
            name = string(opened.get("name"), "a tool_use block's 'name'")
            if self._answer_tool is not None and name == self._answer_tool:
                if self._answer_block is None:  # the answer: its input is text
                    initial = opened.get("input")
                    whole = dump_json(initial) if initial else ""
                    self._answer_block = [_index(obj, -1), False, whole]
                out.append(Delta(activity=True))
                return
            initial = opened.get("input")
            arguments = dump_json(initial) if initial else "{}"  # used if no deltas follow
            self.charge_tools(TOOL_CALL_OVERHEAD + len(tool_id) + len(name) + len(arguments))
            ordinal = len(self._blocks)
            self._blocks[_index(obj, ordinal)] = [tool_id, name, [], arguments, ordinal]
            out.append(ToolCallDelta(ordinal, tool_id, name))
        elif kind == "thinking":
            thinking = string(opened.get("thinking"), "a thinking block's 'thinking'")
            signature = string(opened.get("signature"), "a thinking block's 'signature'")
            if thinking:
                self.emit(out, "", thinking)
            self.charge_answer(len(signature))
            self._thinking[_index(obj, -1 - len(self._thinking))] = {
                "type": "thinking",
                "thinking": [thinking] if thinking else [],
                "signature": [signature] if signature else [],
            }
        elif kind == "redacted_thinking":
            data = string(opened.get("data"), "a redacted_thinking block's 'data'")
            self.charge_answer(len(data))
            self._thinking[_index(obj, -1 - len(self._thinking))] = {
                "type": "redacted_thinking",
                "data": data,
            }
            out.append(Delta(activity=True))

    def _block_stop(self, obj: dict[str, Any], out: list[ProviderEvent]) -> None:
        answer = self._answer_block
        if answer is not None and answer[0] == _index(obj, -1) and not answer[1] and answer[2]:
            answer[1] = True  # an answer whose input came whole in its start event
            self.emit(out, answer[2])
            return
        block = self._blocks.get(_index(obj, -1))
        if block is not None and not block[2] and block[3] != "{}":
            # A tool_use whose input came whole in its start event: report it too, so
            # the fragments add up to the call.
            out.append(ToolCallDelta(block[4], arguments=block[3]))

    def _add_usage(self, usage: Any) -> None:
        """Keep the four counts the API reports; a later null does not erase a count."""
        usage = mapping(usage, "'usage'")
        for key in _USAGE_KEYS:
            if usage.get(key) is not None:
                self._usage[key] = count(usage, key)

    def _finish(self) -> Finish:
        tools = []
        for _, (tool_id, name, pieces, initial, _ordinal) in sorted(self._blocks.items()):
            tools.append(ToolCall(tool_id, name, "".join(pieces) or initial))
        usage = usage_from_anthropic(self._usage)
        reason = self.stop_reason
        if reason == "tool_use" and not tools and self._answer_block is not None:
            reason = "end_turn"  # the structured answer is complete: not a tool call
        blocks = self.reasoning_blocks()
        if not blocks:
            return self._provider.finish(reason, usage, tuple(tools), self.model)
        return self._provider.finish(
            reason, usage, tuple(tools), self.model, reasoning_blocks=blocks
        )

    def reasoning_blocks(self) -> tuple[dict[str, Any], ...]:
        """The thinking and redacted thinking blocks so far, in order, ready to send back."""
        blocks: list[dict[str, Any]] = []
        for _, record in sorted(self._thinking.items()):
            if record["type"] == "thinking":
                blocks.append(
                    {
                        "provider": "anthropic",
                        "type": "thinking",
                        "thinking": "".join(record["thinking"]),
                        "signature": "".join(record["signature"]),
                    }
                )
            else:
                blocks.append({"provider": "anthropic", **record})
        return tuple(blocks)


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
