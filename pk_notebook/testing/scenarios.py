"""What the fake server answers: a :class:`Script`, rendered in each provider's dialect.

A script is the answer (text pieces, reasoning, tool calls, finish reason,
usage), its pace, and optionally one *fault*:

========================  ==================================================================
``"drop"``                close the connection after ``after`` pieces, mid-body
``"eof"``                 end the body cleanly after ``after`` pieces: no end marker
``"malformed"``           send a chunk of broken JSON after ``after`` pieces
``"stream_error"``        send the dialect's in-stream error after ``after`` pieces
``"json_error"``          answer ``status`` (default 500) with a JSON error body, no stream
``"html"``                answer ``status`` (default 200) with an HTML page
``"stall"``               after ``after`` pieces send nothing, never close
``"keepalive_stall"``     after ``after`` pieces send only ``: keep-alive`` comments
``"no_close"``            send the whole answer and end marker, then never end the body
``"rate_limit"``          answer 429 with ``Retry-After: retry_after`` (and a JSON error)
``"endless_line"``        after ``after`` pieces start a ``data:`` line and never end it
                          (64 KiB writes until the client leaves: tests the line cap)
========================  ==================================================================

**Reasoning and tools.** ``reasoning`` streams before the text in each dialect's
form (OpenAI-compatible ``reasoning_content`` deltas as DeepSeek sends them,
an Anthropic ``thinking`` block ending in a ``signature_delta``, Gemini
``"thought": true`` parts); ``redacted_thinking`` adds Anthropic
``redacted_thinking`` blocks. ``tool_calls`` (each ``{"name": ..., "arguments":
{...}}``, optionally with ``"id"``, or an ``(id, name, arguments_json)`` tuple)
come after the text, as the real APIs stream them: OpenAI ``delta.tool_calls``
fragments (index, id and name first, then the arguments in pieces), Anthropic
``tool_use`` blocks with ``input_json_delta`` pieces, Gemini ``functionCall``
parts (the first with a ``thoughtSignature``). With calls, the finish reason is
the dialect's own (``"tool_calls"``, ``"tool_use"``, ``"STOP"``). A tool loop is
two scripts enqueued for two requests: the calls, then the answer.

**Structured answers.** A structured answer is JSON text in the OpenAI and
Gemini dialects (the script's ``text``); Anthropic sends it as the input of the
forced tool. ``structured=True`` renders the text that way in the Anthropic
dialect: one ``tool_use`` block named after the tool the request forced (its
``tool_choice`` name, else its last tool; or ``structured="Name"``), the text
pieces as its ``input_json_delta`` pieces, ``stop_reason`` ``"tool_use"``.
:meth:`Script.json` builds such a script from a value, cut in small pieces so
a client sees the object fill in.

**The Responses API** (``.../v1/responses``) is the ``responses`` dialect, in
:mod:`.responses_dialect`: the same script as typed ``response.*`` events, and
``finish_reason`` ``"failed"`` or an incomplete reason (``"max_output_tokens"``)
for its other terminal events.

``body`` serves a recorded body byte for byte instead (conformance tests).
``echo_key=True`` replaces ``{key}`` in ``error_message`` and ``body`` with the API
key the request carried, as a careless upstream that echoes it would: a client
under test must never show it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..providers.faults import canonical_fault

DIALECTS = ("openai", "anthropic", "gemini", "responses")

_PIECE = re.compile(r"\s*\S+|\s+")

_DEFAULT_FINISH = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}
_TOOLS_FINISH = {"openai": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}
_CALL_ID = {"openai": "call_fake_{}", "anthropic": "toolu_fake_{}", "gemini": ""}
_SIGNATURE = "RmFrZVNpZ25hdHVyZUZvclRoZVRoaW5raW5nQmxvY2s="  # base64, like the real ones


def _call_tuple(call: Sequence[str] | Mapping[str, Any]) -> tuple[str, str, str]:
    """``(id, name, arguments JSON)`` from a tuple or a ``{"name", "arguments", "id"}`` mapping."""
    if isinstance(call, Mapping):
        unknown = set(call) - {"id", "name", "arguments"}
        if unknown or not isinstance(call.get("name"), str):
            raise ValueError(
                "a scripted tool call is {'name': ..., 'arguments': ..., 'id': ...}, "
                f"got {call!r}"
            )
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return (str(call.get("id") or ""), call["name"], arguments)
    call_id, name, arguments = call
    return (str(call_id or ""), str(name), str(arguments))


@dataclass
class Script:
    """One scripted response. ``text`` may be a string (cut at word starts) or pieces."""

    text: str | Sequence[str] = "Hello from the fake provider server."
    reasoning: str | Sequence[str] = ()
    #: ``{"name", "arguments" (mapping or JSON text), "id" (optional)}`` or ``(id, name,
    #: arguments JSON)``; a missing or empty id becomes ``call_fake_N`` / ``toolu_fake_N``
    tool_calls: Sequence[tuple[str, str, str] | Mapping[str, Any]] = ()
    #: the signature of the thinking (Anthropic ``signature_delta``, Gemini ``thoughtSignature``)
    signature: str = _SIGNATURE
    #: Anthropic ``redacted_thinking`` blocks' ``data``, sent before the thinking block
    redacted_thinking: Sequence[str] = ()
    finish_reason: str | None = None  # the dialect's usual "stop" value if None
    usage: tuple[int, int] | None = (12, -1)  # (input, output); -1: number of pieces
    model: str | None = None  # echo the requested model if None
    pace: float = 0.0  # seconds between events
    first_delay: float = 0.0  # seconds before the first byte of the body
    fault: str | None = None
    after: int = 0
    status: int | None = None
    retry_after: str | None = "1"
    error_message: str = "the fake server was told to fail"
    error_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    content_type: str = "text/event-stream"
    echo_key: bool = False
    #: the text is a structured answer: Anthropic sends it as a forced tool's input
    #: (True: the tool the request forced; a string: that tool's name)
    structured: bool | str = False
    _cache: dict[tuple[str, ...], tuple[list[bytes], list[bytes], list[bytes]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.tool_calls = [_call_tuple(c) for c in self.tool_calls]
        if isinstance(self.redacted_thinking, str):
            self.redacted_thinking = [self.redacted_thinking]
        if self.fault is not None:
            self.fault = canonical_fault(self.fault)
        if self.after < 0:
            raise ValueError("after must be >= 0")

    # --- constructors -------------------------------------------------------------------

    @classmethod
    def burst(cls, chunks: int, piece: str = "tok ", **options: Any) -> Script:
        """``chunks`` identical text pieces as fast as the socket takes them."""
        return cls(text=[piece] * chunks, **options)

    @classmethod
    def json(cls, value: Any, piece: int = 6, **options: Any) -> Script:
        """A structured answer: ``value`` as JSON text (or a JSON text as it is), in
        pieces of ``piece`` characters, sent as a forced tool's input to Anthropic."""
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        options.setdefault("structured", True)
        return cls(text=[text[i : i + piece] for i in range(0, len(text), piece)], **options)

    @classmethod
    def recorded(
        cls, body: bytes, content_type: str = "text/event-stream", **options: Any
    ) -> Script:
        return cls(body=body, content_type=content_type, **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Script:
        """From JSON (the control endpoint): the same field names; ``body`` as text."""
        values = dict(data)
        if "repeat" in values:  # a burst: {"repeat": 100000, "piece": "tok "}
            values["text"] = [values.pop("piece", "tok ")] * int(values.pop("repeat"))
        known = {f.name for f in fields(cls) if not f.name.startswith("_")}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown Script fields: {', '.join(sorted(unknown))}")
        if isinstance(values.get("body"), str):
            values["body"] = values["body"].encode("utf-8")
        if values.get("usage") is not None:
            values["usage"] = tuple(values["usage"])
        if values.get("tool_calls"):
            values["tool_calls"] = [
                t if isinstance(t, Mapping) else tuple(t) for t in values["tool_calls"]
            ]
        return cls(**values)

    def with_key(self, key: str) -> Script:
        """This script with ``{key}`` replaced by ``key`` (what ``echo_key`` does)."""
        return replace(
            self,
            error_message=self.error_message.replace("{key}", key),
            body=self.body.replace(b"{key}", key.encode()) if self.body is not None else None,
            echo_key=False,
            _cache={},
        )

    # --- rendering ----------------------------------------------------------------------

    @property
    def pieces(self) -> list[str]:
        return _PIECE.findall(self.text) if isinstance(self.text, str) else list(self.text)

    def render(
        self, dialect: str, model: str, answer_tool: str = ""
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """``(opening, pieces, closing)`` events, each complete with its blank line.

        ``answer_tool``: with ``structured``, the Anthropic tool the text is the input of
        (a ``structured`` string wins).
        """
        if isinstance(self.structured, str) and self.structured:
            answer_tool = self.structured
        elif not self.structured or dialect != "anthropic":
            answer_tool = ""
        else:
            answer_tool = answer_tool or "output"
        key = (dialect, model, answer_tool)
        cached = self._cache.get(key)
        if cached is None:
            if dialect == "anthropic":
                cached = _anthropic(self, self.model or model, answer_tool)
            elif dialect == "responses":
                from .responses_dialect import render as render_responses

                cached = render_responses(self, self.model or model)
            else:
                render = {"openai": _openai, "gemini": _gemini}[dialect]
                cached = render(self, self.model or model)
            self._cache[key] = cached
        return cached

    def output_tokens(self) -> int:
        if self.usage is None:
            return 0
        return len(self.pieces) if self.usage[1] < 0 else self.usage[1]

    def error_event(self, dialect: str) -> bytes:
        if dialect == "responses":
            from .responses_dialect import error_event

            return error_event(self)
        if dialect == "anthropic":
            payload = {
                "type": "error",
                "error": {
                    "type": self.error_type or "overloaded_error",
                    "message": self.error_message,
                },
            }
            return b"event: error\ndata: " + _dumps(payload) + b"\n\n"
        if dialect == "gemini":
            payload = {
                "error": {
                    "code": 500,
                    "message": self.error_message,
                    "status": self.error_type or "INTERNAL",
                }
            }
            return b"data: " + _dumps(payload) + b"\r\n\r\n"
        payload = {
            "error": {
                "message": self.error_message,
                "type": self.error_type or "server_error",
                "code": None,
            }
        }
        return b"data: " + _dumps(payload) + b"\n\n"

    def error_body(self, dialect: str) -> bytes:
        status = self.status or (429 if self.fault == "rate_limit" else 500)
        if dialect == "anthropic":
            kind = self.error_type or ("rate_limit_error" if status == 429 else "api_error")
            return _dumps({"type": "error", "error": {"type": kind, "message": self.error_message}})
        if dialect == "gemini":
            kind = self.error_type or ("RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL")
            return _dumps(
                {"error": {"code": status, "message": self.error_message, "status": kind}}
            )
        kind = self.error_type or ("rate_limit_exceeded" if status == 429 else "server_error")
        return _dumps({"error": {"message": self.error_message, "type": kind, "code": None}})


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _pieces(value: str | Sequence[str]) -> list[str]:
    return _PIECE.findall(value) if isinstance(value, str) else list(value)


def _calls(script: Script, dialect: str) -> list[tuple[str, str, str]]:
    """The script's calls with the dialect's ids filled in where none was given."""
    calls = []
    for number, call in enumerate(script.tool_calls, 1):
        call_id, name, arguments = _call_tuple(call)
        calls.append((call_id or _CALL_ID[dialect].format(number), name, arguments))
    return calls


def _finish_reason(script: Script, dialect: str) -> str:
    if script.finish_reason:
        return script.finish_reason
    if script.structured and dialect == "anthropic":
        return "tool_use"  # the forced tool's call ends the answer
    return (_TOOLS_FINISH if script.tool_calls else _DEFAULT_FINISH)[dialect]


def _argument_pieces(arguments: str) -> list[str]:
    """Arguments JSON in pieces of a few characters, as the APIs stream them."""
    return [arguments[i : i + 5] for i in range(0, len(arguments), 5)]


def _openai(script: Script, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    head = (
        '{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,'
        f'"model":{json.dumps(model)},"system_fingerprint":"fp_fake","choices":[{{"index":0,'
    )

    def chunk(delta: str, finish: str | None = None) -> bytes:
        reason = json.dumps(finish)
        text = f'{head}"delta":{delta},"logprobs":null,"finish_reason":{reason}}}]}}'
        return b"data: " + text.encode("utf-8") + b"\n\n"

    reasoning = _pieces(script.reasoning)
    pieces = script.pieces
    # as DeepSeek sends it: the role chunk opens reasoning_content, and while a model
    # reasons, content is null (and reasoning_content null once the answer starts)
    role = '{"role":"assistant","content":' + ('""' if pieces or not script.tool_calls else "null")
    opening = [chunk(role + (',"reasoning_content":""}' if reasoning else "}"))]
    opening += [
        chunk('{"content":null,"reasoning_content":' + json.dumps(r, ensure_ascii=False) + "}")
        for r in reasoning
    ]
    after = ',"reasoning_content":null}' if reasoning else "}"
    body = [chunk('{"content":' + json.dumps(p, ensure_ascii=False) + after) for p in pieces]
    closing = []
    for index, (call_id, name, arguments) in enumerate(_calls(script, "openai")):
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        closing.append(chunk(_dumps({"tool_calls": [first]}).decode("utf-8")))
        closing += [
            chunk(
                _dumps({"tool_calls": [{"index": index, "function": {"arguments": part}}]}).decode(
                    "utf-8"
                )
            )
            for part in _argument_pieces(arguments)
        ]
    closing.append(chunk("{}", _finish_reason(script, "openai")))
    if script.usage is not None:
        out = script.output_tokens()
        usage: dict[str, Any] = {
            "prompt_tokens": script.usage[0],
            "completion_tokens": out,
            "total_tokens": script.usage[0] + out,
        }
        closing.append(
            b"data: "
            + _dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
            + b"\n\n"
        )
    closing.append(b"data: [DONE]\n\n")
    return opening, body, closing


def _anthropic(
    script: Script, model: str, answer_tool: str = ""
) -> tuple[list[bytes], list[bytes], list[bytes]]:
    def event(name: str, payload: Any) -> bytes:
        return f"event: {name}\ndata: ".encode() + _dumps(payload) + b"\n\n"

    def start(index: int, block: dict[str, Any]) -> bytes:
        return event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )

    def delta(index: int, payload: dict[str, Any]) -> bytes:
        return event(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": payload},
        )

    def stop(index: int) -> bytes:
        return event("content_block_stop", {"type": "content_block_stop", "index": index})

    usage_in = script.usage[0] if script.usage else 0
    opening = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage_in, "output_tokens": 1},
                },
            },
        )
    ]
    index = 0
    for data in script.redacted_thinking:
        opening += [start(index, {"type": "redacted_thinking", "data": data}), stop(index)]
        index += 1
    reasoning = _pieces(script.reasoning)
    if reasoning:
        opening.append(start(index, {"type": "thinking", "thinking": "", "signature": ""}))
        opening += [delta(index, {"type": "thinking_delta", "thinking": r}) for r in reasoning]
        opening.append(delta(index, {"type": "signature_delta", "signature": script.signature}))
        opening.append(stop(index))
        index += 1
    pieces = script.pieces
    closing = []
    body = []
    if answer_tool:  # a structured answer: the forced tool's input, in pieces
        tool_id = "toolu_fake_answer"
        opening.append(
            start(index, {"type": "tool_use", "id": tool_id, "name": answer_tool, "input": {}})
        )
        opening.append(delta(index, {"type": "input_json_delta", "partial_json": ""}))
        body = [delta(index, {"type": "input_json_delta", "partial_json": p}) for p in pieces]
        closing.append(stop(index))
        index += 1
    elif pieces or not script.tool_calls:  # a tool-only answer has no text block
        opening.append(start(index, {"type": "text", "text": ""}))
        prefix = (
            'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + str(index)
            + ',"delta":{"type":"text_delta","text":'
        ).encode()
        body = [
            prefix + json.dumps(p, ensure_ascii=False).encode("utf-8") + b"}}\n\n" for p in pieces
        ]
        closing.append(stop(index))
        index += 1
    for call_id, name, arguments in _calls(script, "anthropic"):
        closing.append(start(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}}))
        closing += [
            delta(index, {"type": "input_json_delta", "partial_json": part})
            for part in ["", *_argument_pieces(arguments)]
        ]
        closing.append(stop(index))
        index += 1
    closing.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": _finish_reason(script, "anthropic"),
                    "stop_sequence": None,
                },
                "usage": {"output_tokens": script.output_tokens()},
            },
        )
    )
    closing.append(event("message_stop", {"type": "message_stop"}))
    return opening, body, closing


def _gemini(script: Script, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    def event(parts: list[dict[str, Any]], finish: str | None = None, usage: bool = False) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        payload: dict[str, Any] = {"candidates": [candidate]}
        if usage and script.usage is not None:
            out = script.output_tokens()
            payload["usageMetadata"] = {
                "promptTokenCount": script.usage[0],
                "candidatesTokenCount": out,
                "totalTokenCount": script.usage[0] + out,
            }
        payload["modelVersion"] = model
        return b"data: " + _dumps(payload) + b"\r\n\r\n"

    opening = [event([{"text": r, "thought": True}]) for r in _pieces(script.reasoning)]
    body = [event([{"text": p}]) for p in script.pieces]
    calls: list[dict[str, Any]] = []
    for _, name, arguments in _calls(script, "gemini"):
        part: dict[str, Any] = {
            "functionCall": {"name": name, "args": json.loads(arguments or "{}")}
        }
        if not calls and script.signature:  # as Gemini does: on the first call of the answer
            part["thoughtSignature"] = script.signature
        calls.append(part)
    closing = [event(calls or [{"text": ""}], _finish_reason(script, "gemini"), usage=True)]
    return opening, body, closing
