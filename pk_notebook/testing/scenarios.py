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

DIALECTS = ("openai", "anthropic", "gemini")

_PIECE = re.compile(r"\s*\S+|\s+")

_DEFAULT_FINISH = {"openai": "stop", "anthropic": "end_turn", "gemini": "STOP"}


@dataclass
class Script:
    """One scripted response. ``text`` may be a string (cut at word starts) or pieces."""

    text: str | Sequence[str] = "Hello from the fake provider server."
    reasoning: str | Sequence[str] = ()
    tool_calls: Sequence[tuple[str, str, str]] = ()  # (id, name, arguments JSON)
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
    _cache: dict[tuple[str, str], tuple[list[bytes], list[bytes], list[bytes]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
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
        if "tool_calls" in values:
            values["tool_calls"] = [tuple(t) for t in values["tool_calls"]]
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

    def render(self, dialect: str, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """``(opening, pieces, closing)`` events, each complete with its blank line."""
        key = (dialect, model)
        cached = self._cache.get(key)
        if cached is None:
            render = {"openai": _openai, "anthropic": _anthropic, "gemini": _gemini}[dialect]
            cached = self._cache[key] = render(self, self.model or model)
        return cached

    def output_tokens(self) -> int:
        if self.usage is None:
            return 0
        return len(self.pieces) if self.usage[1] < 0 else self.usage[1]

    def error_event(self, dialect: str) -> bytes:
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


def _openai(script: Script, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    head = (
        '{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,'
        f'"model":{json.dumps(model)},"system_fingerprint":"fp_fake","choices":[{{"index":0,'
    )

    def chunk(delta: str, finish: str | None = None) -> bytes:
        reason = json.dumps(finish)
        text = f'{head}"delta":{delta},"logprobs":null,"finish_reason":{reason}}}]}}'
        return b"data: " + text.encode("utf-8") + b"\n\n"

    opening = [chunk('{"role":"assistant","content":""}')]
    opening += [
        chunk('{"reasoning_content":' + json.dumps(r) + "}") for r in _pieces(script.reasoning)
    ]
    body = [chunk('{"content":' + json.dumps(p, ensure_ascii=False) + "}") for p in script.pieces]
    closing = []
    for index, (call_id, name, arguments) in enumerate(script.tool_calls):
        closing.append(
            chunk(
                json.dumps(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
        )
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            closing.append(
                chunk(
                    json.dumps({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
                )
            )
    closing.append(chunk("{}", script.finish_reason or _DEFAULT_FINISH["openai"]))
    if script.usage is not None:
        out = script.output_tokens()
        usage = {
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


def _anthropic(script: Script, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    def event(name: str, payload: Any) -> bytes:
        return f"event: {name}\ndata: ".encode() + _dumps(payload) + b"\n\n"

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
                    "usage": {"input_tokens": usage_in, "output_tokens": 1},
                },
            },
        )
    ]
    index = 0
    reasoning = _pieces(script.reasoning)
    if reasoning:
        opening.append(
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": ""},
                },
            )
        )
        opening += [
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": r},
                },
            )
            for r in reasoning
        ]
        opening.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    opening.append(
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            },
        )
    )
    prefix = (
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
        + str(index)
        + ',"delta":{"type":"text_delta","text":'
    ).encode()
    body = [
        prefix + json.dumps(p, ensure_ascii=False).encode("utf-8") + b"}}\n\n"
        for p in script.pieces
    ]
    closing = [event("content_block_stop", {"type": "content_block_stop", "index": index})]
    for call_id, name, arguments in script.tool_calls:
        index += 1
        closing.append(
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
                },
            )
        )
        closing.append(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            )
        )
        closing.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    closing.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": script.finish_reason or _DEFAULT_FINISH["anthropic"],
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
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
        if usage and script.usage is not None:
            out = script.output_tokens()
            payload["usageMetadata"] = {
                "promptTokenCount": script.usage[0],
                "candidatesTokenCount": out,
                "totalTokenCount": script.usage[0] + out,
            }
        return b"data: " + _dumps(payload) + b"\r\n\r\n"

    opening = [event([{"text": r, "thought": True}]) for r in _pieces(script.reasoning)]
    body = [event([{"text": p}]) for p in script.pieces]
    calls: list[dict[str, Any]] = [
        {"functionCall": {"name": name, "args": json.loads(arguments or "{}")}}
        for _, name, arguments in script.tool_calls
    ]
    closing = [
        event(
            calls or [{"text": ""}], script.finish_reason or _DEFAULT_FINISH["gemini"], usage=True
        )
    ]
    return opening, body, closing
