"""Tool-call fragments and reasoning records the parsers make of recorded streams.

The recorded bodies are those of ``tests/conformance`` (real provider responses,
with the values the official SDKs read from them in the ``.json`` files); the
few constructed bodies follow the providers' documented shapes and say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pk_notebook.providers import AnthropicProvider
from pk_notebook.runtime.types import Delta, Finish, ProviderConfig, Request, ToolCallDelta
from pk_notebook.testing import FakeProviderServer, Script

from ._parsers import Outcome, parse

CONFORMANCE = Path(__file__).parent.parent / "conformance"

TOOL_STREAMS = [
    ("anthropic", "anthropic_text_and_parallel_tool_use"),
    ("gemini", "gemini_function_call"),
    ("openai", "openai_chat_parallel_tool_calls"),
]


def body(name: str) -> bytes:
    return (CONFORMANCE / f"{name}.sse").read_bytes()


def meta(name: str) -> dict[str, Any]:
    return json.loads((CONFORMANCE / f"{name}.json").read_text(encoding="utf-8"))


def reads(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def joined(outcome: Outcome) -> list[tuple[str, str, str]]:
    """The ToolCallDeltas put together per index, as a view would: (id, name, arguments)."""
    calls: dict[int, list[str]] = {}
    for event in outcome.events:
        if isinstance(event, ToolCallDelta):
            slot = calls.setdefault(event.index, ["", "", ""])
            slot[0] = slot[0] or event.id
            slot[1] += event.name
            slot[2] += event.arguments
    return [(i, n, a) for i, n, a in (calls[k] for k in sorted(calls))]


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20], ids=lambda s: f"reads-of-{s}")
@pytest.mark.parametrize(("dialect", "name"), TOOL_STREAMS, ids=[n for _, n in TOOL_STREAMS])
def test_tool_call_deltas_add_up_to_the_calls(dialect: str, name: str, size: int) -> None:
    outcome = parse(dialect, *reads(body(name), size))
    assert outcome.error is None and outcome.finish is not None
    calls = [(c.id, c.name, c.arguments) for c in outcome.finish.tool_calls]
    assert joined(outcome) == calls
    # and the calls are the ones the official SDK read
    expected = meta(name)["expected_tool_calls"]
    assert [json.loads(c[2]) for c in calls] == [
        c.get("input") or c.get("args") or json.loads(c["function"]["arguments"]) for c in expected
    ]
    # the first fragment of each call brings its name
    first: dict[int, ToolCallDelta] = {}
    for event in outcome.events:
        if isinstance(event, ToolCallDelta):
            first.setdefault(event.index, event)
    assert all(f.name for f in first.values())
    # fragments are not bare activity deltas any more
    assert not any(isinstance(e, Delta) and e.activity for e in outcome.events)


def test_openai_fragments_arrive_as_they_stream() -> None:
    outcome = parse("openai", body("openai_chat_parallel_tool_calls"))
    fragments = [e for e in outcome.events if isinstance(e, ToolCallDelta)]
    assert len(fragments) > 2 * 2  # a start and several argument pieces per call
    assert fragments[0] == ToolCallDelta(0, "call_vbjItaL3xe3uYPY1PIVhmBcs", "get_weather", "")
    assert fragments[1] == ToolCallDelta(0, "", "", '{"lo')


def test_anthropic_ordinal_index_and_pieces() -> None:
    """The index is the call's ordinal among the answer's calls (the text block is 0)."""
    outcome = parse("anthropic", body("anthropic_text_and_parallel_tool_use"))
    fragments = [e for e in outcome.events if isinstance(e, ToolCallDelta)]
    assert {f.index for f in fragments} == {0, 1}
    assert fragments[0] == ToolCallDelta(
        0, "toolu_015cUijgET79LXjgeYQerN2h", "secret_retrieval_tool"
    )
    assert [f.arguments for f in fragments if f.index == 0] == [
        "",
        "",
        '{"passwo',
        'rd": "mellon',
        '"}',
    ]


def test_gemini_thought_signature_goes_with_its_call() -> None:
    outcome = parse("gemini", body("gemini_function_call"))
    assert outcome.finish is not None
    first, second = outcome.finish.tool_calls
    wire = json.loads(body("gemini_function_call").split(b"data: ", 1)[1])
    parts = wire["candidates"][0]["content"]["parts"]
    assert first.signature == parts[0]["thoughtSignature"] and first.signature
    assert second.signature == ""  # only the first of parallel calls carries one


def anthropic_signature(data: bytes) -> str:
    """The signature_delta of a recorded body, read with plain json.loads."""
    signatures = []
    for line in data.decode().splitlines():
        if line.startswith("data: "):
            event = json.loads(line[len("data: ") :])
            if event.get("delta", {}).get("type") == "signature_delta":
                signatures.append(event["delta"]["signature"])
    assert len(signatures) == 1
    return signatures[0]


@pytest.mark.parametrize("size", [1, 13, 1 << 20], ids=lambda s: f"reads-of-{s}")
def test_anthropic_thinking_signature_in_reasoning_blocks(size: int) -> None:
    name = "anthropic_thinking"
    outcome = parse("anthropic", *reads(body(name), size))
    assert outcome.error is None and outcome.finish is not None
    expected = meta(name)
    assert outcome.text == expected["expected_text"]
    assert outcome.reasoning == expected["extra"]["reasoning_text"]
    signature = anthropic_signature(body(name))
    assert len(signature) == expected["extra"]["thinking_signature_length"][0]
    assert tuple(outcome.finish.reasoning_blocks) == (
        {
            "provider": "anthropic",
            "type": "thinking",
            "thinking": expected["extra"]["reasoning_text"],
            "signature": signature,
        },
    )


def test_no_reasoning_blocks_without_thinking() -> None:
    outcome = parse("anthropic", body("anthropic_text_and_parallel_tool_use"))
    assert outcome.finish is not None and tuple(outcome.finish.reasoning_blocks) == ()


# Constructed from the documented shapes (no recording has a redacted block): a
# redacted_thinking block (whole in its start event), a thinking block, and a tool_use
# whose input comes whole in its start event with no input_json_delta.
def event(name: str, **payload: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **payload})}\n\n".encode()


REDACTED_BODY = (
    event("message_start", message={"model": "claude", "usage": {"input_tokens": 5}})
    + event(
        "content_block_start",
        index=0,
        content_block={"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    )
    + event("content_block_stop", index=0)
    + event(
        "content_block_start",
        index=1,
        content_block={"type": "thinking", "thinking": "", "signature": ""},
    )
    + event("content_block_delta", index=1, delta={"type": "thinking_delta", "thinking": "Call "})
    + event("content_block_delta", index=1, delta={"type": "thinking_delta", "thinking": "it."})
    + event("content_block_delta", index=1, delta={"type": "signature_delta", "signature": "c2ln"})
    + event("content_block_stop", index=1)
    + event(
        "content_block_start",
        index=2,
        content_block={
            "type": "tool_use",
            "id": "toolu_1",
            "name": "clock",
            "input": {"tz": "UTC"},
        },
    )
    + event("content_block_stop", index=2)
    + event("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 9})
    + event("message_stop")
)


def test_redacted_thinking_kept_without_visible_text() -> None:
    outcome = parse("anthropic", REDACTED_BODY)
    assert outcome.error is None and outcome.finish is not None
    assert outcome.reasoning == "Call it." and outcome.text == ""
    assert tuple(outcome.finish.reasoning_blocks) == (
        {"provider": "anthropic", "type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {"provider": "anthropic", "type": "thinking", "thinking": "Call it.", "signature": "c2ln"},
    )
    assert [(c.id, c.name, c.arguments) for c in outcome.finish.tool_calls] == [
        ("toolu_1", "clock", '{"tz": "UTC"}')
    ]
    assert joined(outcome) == [("toolu_1", "clock", '{"tz": "UTC"}')]


def test_gemini_thought_parts_are_reasoning() -> None:
    name = "gemini_thinking"
    outcome = parse("gemini", body(name))
    expected = meta(name)
    assert outcome.text == expected["expected_text"]
    assert outcome.reasoning == expected["extra"]["reasoning_text"]
    assert expected["extra"]["reasoning_text"] not in outcome.text


def test_openai_compatible_reasoning_content() -> None:
    name = "deepseek_reasoner_reasoning_content"
    outcome = parse("openai", body(name))
    expected = meta(name)
    assert outcome.text == expected["expected_text"]
    assert outcome.reasoning == expected["extra"]["reasoning_text"]
    assert not any(isinstance(e, ToolCallDelta) for e in outcome.events)


async def test_reasoning_blocks_through_a_real_call() -> None:
    """The Finish a real AnthropicProvider call yields (base.finish) carries the blocks."""
    name = "anthropic_thinking"
    with FakeProviderServer() as server:
        server.enqueue(Script.recorded(body(name)))
        provider = AnthropicProvider("claude-haiku-4-5", base_url=server.base_url)
        try:
            request = Request(messages=(), config=ProviderConfig())
            events = [e async for e in provider.stream(request)]
        finally:
            await provider.aclose()
    finish = events[-1]
    assert isinstance(finish, Finish)
    (block,) = finish.reasoning_blocks
    assert block["signature"] == anthropic_signature(body(name))
    assert block["thinking"] == meta(name)["extra"]["reasoning_text"]
