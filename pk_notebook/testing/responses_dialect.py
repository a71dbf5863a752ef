"""The fake server's ``responses`` dialect: OpenAI's Responses API (``POST .../v1/responses``).

A :class:`~pk_notebook.testing.scenarios.Script` rendered the way the real API
streams (the shapes of the recordings in ``tests/conformance/openai_responses_*``):
every event named twice (``event: response.…`` and the payload's ``type``), with a
``sequence_number``; ``response.created`` and ``response.in_progress`` carrying
the whole response object; ``reasoning`` as a reasoning item with one summary
part of ``response.reasoning_summary_text.delta`` events; the text as a
``message`` item of ``response.output_text.delta`` events (with the ``logprobs``
and ``obfuscation`` padding fields the API adds); each tool call as a
``function_call`` item (``call_id`` and name when it is added, then the
arguments in ``response.function_call_arguments.delta`` pieces); and one terminal
event. No ``[DONE]``.

The script's ``finish_reason`` picks the terminal event: unset (or ``"stop"``,
``"completed"``, ``"tool_calls"``) is ``response.completed`` with usage;
``"failed"`` is ``response.failed`` whose error carries ``error_message`` and
``error_type`` (code, default ``"server_error"``); any other value is
``response.incomplete`` with that value as ``incomplete_details.reason`` (e.g.
``"max_output_tokens"``, ``"content_filter"``). The shared faults work as in every
dialect; ``"error"`` sends the API's in-stream ``error`` event
(``{"type": "error", "code", "message", "param"}``).

:func:`content_parts` and :func:`requested_schema` read a recorded request's
``input`` and ``text.format`` for ``RecordedRequest.content_parts()`` and
``.requested_schema()``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scenarios import Script

__all__ = ["content_parts", "error_event", "render", "requested_schema"]

_COMPLETED = frozenset({"stop", "completed", "tool_calls"})
_CREATED_AT = 1700000000
_RESPONSE_ID = "resp_fake0123456789abcdef"
_REASONING_ID = "rs_fake0123456789abcdef"
_MESSAGE_ID = "msg_fake0123456789abcdef"
_ENCRYPTED = "gAAAAABmFakeEncryptedReasoningContentForTheFakeServer=="


def _dumps(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _event(kind: str, number: int, fields: dict[str, Any]) -> bytes:
    payload = {"type": kind, "sequence_number": number, **fields}
    return f"event: {kind}\ndata: {_dumps(payload)}\n\n".encode()


def _obfuscation(text: str) -> str:
    """Padding as the API adds it (its length varies inversely with the delta's)."""
    return "Fk3pQ9xZ2mLw7rTb"[: max(2, 16 - len(text))]


def _response(
    model: str,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    return {
        "id": _RESPONSE_ID,
        "object": "response",
        "created_at": _CREATED_AT,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _calls(script: Script) -> list[tuple[str, str, str]]:
    from .scenarios import _call_tuple

    calls = []
    for number, call in enumerate(script.tool_calls, 1):
        call_id, name, arguments = _call_tuple(call)
        calls.append((call_id or f"call_fake_{number}", name, arguments))
    return calls


def render(script: Script, model: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """``(opening, pieces, closing)``: the events before, of and after the text pieces."""
    from .scenarios import _argument_pieces, _pieces

    number = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal number
        data = _event(kind, number, fields)
        number += 1
        return data

    reason = script.finish_reason or "stop"
    status = (
        "completed" if reason in _COMPLETED else "failed" if reason == "failed" else "incomplete"
    )
    item_status = "completed" if status == "completed" else "incomplete"
    output: list[dict[str, Any]] = []  # the final response's output items
    opening = [
        event("response.created", response=_response(model, "in_progress", [])),
        event("response.in_progress", response=_response(model, "in_progress", [])),
    ]
    index = 0
    reasoning = _pieces(script.reasoning)
    if reasoning:
        item: dict[str, Any] = {
            "id": _REASONING_ID,
            "type": "reasoning",
            "encrypted_content": _ENCRYPTED,
            "summary": [],
        }
        where = {"item_id": _REASONING_ID, "output_index": index, "summary_index": 0}
        whole = "".join(reasoning)
        part: dict[str, Any] = {"type": "summary_text", "text": ""}
        opening.append(event("response.output_item.added", output_index=index, item=item))
        opening.append(event("response.reasoning_summary_part.added", **where, part=part))
        opening += [
            event(
                "response.reasoning_summary_text.delta",
                **where,
                delta=piece,
                obfuscation=_obfuscation(piece),
            )
            for piece in reasoning
        ]
        done_part = {"type": "summary_text", "text": whole}
        opening.append(event("response.reasoning_summary_text.done", **where, text=whole))
        opening.append(event("response.reasoning_summary_part.done", **where, part=done_part))
        item = {**item, "summary": [done_part]}
        opening.append(event("response.output_item.done", output_index=index, item=item))
        output.append(item)
        index += 1
    pieces = script.pieces
    body: list[bytes] = []
    closing: list[bytes] = []
    if pieces or not script.tool_calls:  # a tool-only answer has no message item
        text_at = index
        message: dict[str, Any] = {
            "id": _MESSAGE_ID,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        where = {"item_id": _MESSAGE_ID, "output_index": text_at, "content_index": 0}
        opening.append(event("response.output_item.added", output_index=text_at, item=message))
        empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        opening.append(event("response.content_part.added", **where, part=empty))
        body = [
            event(
                "response.output_text.delta",
                **where,
                delta=piece,
                logprobs=[],
                obfuscation=_obfuscation(piece),
            )
            for piece in pieces
        ]
        text = "".join(pieces)
        text_part: dict[str, Any] = {
            "type": "output_text",
            "annotations": [],
            "logprobs": [],
            "text": text,
        }
        closing.append(event("response.output_text.done", **where, text=text, logprobs=[]))
        closing.append(event("response.content_part.done", **where, part=text_part))
        message = {**message, "status": item_status, "content": [text_part]}
        closing.append(event("response.output_item.done", output_index=text_at, item=message))
        output.append(message)
        index += 1
    for number_of_call, (call_id, name, arguments) in enumerate(_calls(script), 1):
        item_id = f"fc_fake{number_of_call:04d}"
        call = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }
        closing.append(event("response.output_item.added", output_index=index, item=call))
        where = {"item_id": item_id, "output_index": index}
        closing += [
            event(
                "response.function_call_arguments.delta",
                **where,
                delta=piece,
                obfuscation=_obfuscation(piece),
            )
            for piece in _argument_pieces(arguments)
        ]
        closing.append(event("response.function_call_arguments.done", **where, arguments=arguments))
        call = {**call, "status": "completed", "arguments": arguments}
        closing.append(event("response.output_item.done", output_index=index, item=call))
        output.append(call)
        index += 1
    if status == "failed":
        error = {"code": script.error_type or "server_error", "message": script.error_message}
        response = _response(model, "failed", output, error=error)
        closing.append(event("response.failed", response=response))
        return opening, body, closing
    usage = None
    if script.usage is not None:
        out = script.output_tokens() + len(reasoning)
        usage = {
            "input_tokens": script.usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": len(reasoning)},
            "total_tokens": script.usage[0] + out,
        }
    if status == "completed":
        response = _response(model, "completed", output, usage=usage)
        closing.append(event("response.completed", response=response))
    else:
        response = _response(model, "incomplete", output, usage=usage, incomplete=reason)
        closing.append(event("response.incomplete", response=response))
    return opening, body, closing


def error_event(script: Script, model: str = "fake-model") -> bytes:
    """The API's in-stream ``error`` event, numbered as if sent after ``script.after`` pieces."""
    opening, pieces, _ = script.render("responses", script.model or model)
    number = len(opening) + min(script.after, len(pieces))
    payload = {
        "type": "error",
        "sequence_number": number,
        "code": script.error_type or "server_error",
        "message": script.error_message,
        "param": None,
    }
    return f"event: error\ndata: {_dumps(payload)}\n\n".encode()


# --- what a request sent (RecordedRequest.content_parts / requested_schema) --------------


def content_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The last user message's parts in the neutral form of ``RecordedRequest.content_parts``."""
    users = [
        item
        for item in body.get("input", [])
        if isinstance(item, dict) and item.get("role") == "user"
    ]
    raw = users[-1].get("content", []) if users else []
    if isinstance(raw, str):
        return [{"type": "text", "text": raw}]
    parts = []
    for item in raw:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "input_text":
            parts.append({"type": "text", "text": item.get("text", "")})
        elif kind == "input_image":
            mime, data = _data_url(str(item.get("image_url", "")))
            parts.append({"type": "image", "mime_type": mime, "data": data})
        elif kind == "input_file":
            mime, data = _data_url(str(item.get("file_data", "")))
            parts.append(
                {"type": "file", "mime_type": mime, "data": data, "name": item.get("filename")}
            )
    return parts


def requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """``text.format`` as ``RecordedRequest.requested_schema`` reports it (mode ``json_schema``)."""
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") != "json_schema":
        return None
    return {
        "mode": "json_schema",
        "name": fmt.get("name"),
        "schema": fmt.get("schema"),
        "strict": fmt.get("strict"),
    }


def _data_url(url: str) -> tuple[str, bytes]:
    import base64

    head, _, data = url.partition(",")
    return head[5:].split(";", 1)[0], base64.b64decode(data)
