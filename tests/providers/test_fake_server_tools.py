"""The fake server speaks reasoning and tool calls in all three dialects: its bytes
look like the recorded streams, and the real providers parse them into
ToolCallDeltas, Finish.tool_calls, reasoning and the signed thinking records."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.runtime.tools import ToolSpec
from pk_notebook.runtime.types import (
    Delta,
    Finish,
    Message,
    ProviderConfig,
    ProviderEvent,
    Request,
    ToolCallDelta,
)
from pk_notebook.testing import FakeProviderServer, Script

CORPUS = Path(__file__).parent.parent / "conformance"
PROVIDERS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}
DIALECTS = list(PROVIDERS)
SIGNATURE = "c2lnbmVkLXRoaW5raW5n"
GET_WEATHER = ToolSpec(
    "get_weather",
    "Current weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def tool_script(**options: Any) -> Script:
    return Script(
        options.pop("text", "Let me look that up."),
        reasoning=options.pop(
            "reasoning", "The user wants two cities. I will call the tool twice."
        ),
        tool_calls=options.pop(
            "tool_calls",
            [
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_weather", "arguments": {"city": "São Paulo"}},
            ],
        ),
        signature=SIGNATURE,
        **options,
    )


async def collect(
    server: FakeProviderServer, dialect: str, messages: Sequence[Message]
) -> list[ProviderEvent]:
    provider = PROVIDERS[dialect]("fake-model", base_url=server.base_url)
    request = Request(tuple(messages), ProviderConfig(), tools=(GET_WEATHER,))
    try:
        return [event async for event in provider.stream(request)]
    finally:
        await provider.aclose()


def kind_of(event: ProviderEvent) -> str:
    if isinstance(event, ToolCallDelta):
        return "call"
    if isinstance(event, Delta):
        return "reasoning" if event.reasoning else "text" if event.text else ""
    return ""


def finish_of(events: Sequence[ProviderEvent]) -> Finish:
    assert isinstance(events[-1], Finish)
    return events[-1]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reasoning_text_and_parallel_calls_parse_with_the_real_providers(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    fake_server.enqueue(tool_script())
    events = await collect(fake_server, dialect, [Message("user", "Paris and São Paulo?")])
    deltas = [e for e in events if isinstance(e, Delta)]
    assert "".join(d.reasoning for d in deltas) == (
        "The user wants two cities. I will call the tool twice."
    )
    assert "".join(d.text for d in deltas) == "Let me look that up."
    # the thinking comes before the answer, and the answer before the calls
    order = [kind_of(e) for e in events if kind_of(e)]
    assert order == sorted(order, key=["reasoning", "text", "call"].index)

    finish = finish_of(events)
    assert (
        finish.reason
        == {"openai": "tool_calls", "anthropic": "tool_use", "gemini": "STOP"}[dialect]
    )
    assert [(c.name, json.loads(c.arguments)) for c in finish.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "São Paulo"}),
    ]
    ids = [c.id for c in finish.tool_calls]
    if dialect == "openai":
        assert ids == ["call_fake_1", "call_fake_2"]
    elif dialect == "anthropic":
        assert ids == ["toolu_fake_1", "toolu_fake_2"]
    else:  # Gemini sends no ids: the provider makes distinct ones
        assert len(set(ids)) == 2 and all(ids)

    # the fragments: per call, the one with the id and name first, then the arguments
    fragments = [e for e in events if isinstance(e, ToolCallDelta)]
    for index, call in enumerate(finish.tool_calls):
        mine = [f for f in fragments if f.index == index]
        assert mine[0].name == call.name and mine[0].id == call.id
        assert all(not f.name for f in mine[1:])
        assert "".join(f.arguments for f in mine) == call.arguments
        if dialect != "gemini":  # Gemini sends each call whole
            assert len([f for f in mine if f.arguments]) > 1


async def test_openai_reasoning_streams_as_deepseek_sends_it(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(Script("Hi.", reasoning="Hmm, a greeting."))
    events = await collect(fake_server, "openai", [Message("user", "hi")])
    assert "".join(e.reasoning for e in events if isinstance(e, Delta)) == "Hmm, a greeting."
    assert finish_of(events).reason == "stop" and finish_of(events).tool_calls == ()


async def test_anthropic_thinking_and_redacted_thinking_come_back_signed(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(tool_script(redacted_thinking=["EmwKAhgBEgyredacted"]))
    finish = finish_of(await collect(fake_server, "anthropic", [Message("user", "hi")]))
    blocks = [{k: v for k, v in b.items() if k != "provider"} for b in finish.reasoning_blocks]
    assert blocks == [
        {"type": "redacted_thinking", "data": "EmwKAhgBEgyredacted"},
        {
            "type": "thinking",
            "thinking": "The user wants two cities. I will call the tool twice.",
            "signature": SIGNATURE,
        },
    ]


async def test_gemini_puts_the_thought_signature_on_the_first_call(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(tool_script())
    finish = finish_of(await collect(fake_server, "gemini", [Message("user", "hi")]))
    assert [c.signature for c in finish.tool_calls] == [SIGNATURE, ""]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_tool_loop_is_two_scripts_and_the_second_request_carries_the_results(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    fake_server.enqueue(tool_script(text=""))
    fake_server.enqueue(Script("Rain in Paris, sun in São Paulo."))
    asked = [Message("user", "Paris and São Paulo?")]
    first = finish_of(await collect(fake_server, dialect, asked))
    history = [
        *asked,
        Message(
            "assistant",
            "",
            tool_calls=tuple(first.tool_calls),
            reasoning="The user wants two cities. I will call the tool twice.",
            reasoning_blocks=tuple(first.reasoning_blocks),
        ),
        *(
            Message("tool", output, tool_call_id=call.id, name=call.name)
            for call, output in zip(first.tool_calls, ["rain", "sun"], strict=True)
        ),
    ]
    events = await collect(fake_server, dialect, history)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == (
        "Rain in Paris, sun in São Paulo."
    )
    assert finish_of(events).tool_calls == ()

    assert len(fake_server.requests) == 2
    body = fake_server.requests[1].json
    ids = [c.id for c in first.tool_calls]
    if dialect == "openai":
        assistant, *results = body["messages"][-3:]
        assert [c["id"] for c in assistant["tool_calls"]] == ids
        assert results == [
            {"role": "tool", "tool_call_id": ids[0], "content": "rain"},
            {"role": "tool", "tool_call_id": ids[1], "content": "sun"},
        ]
    elif dialect == "anthropic":
        assistant, results = body["messages"][-2:]
        kinds = [block["type"] for block in assistant["content"]]
        assert kinds == ["thinking", "tool_use", "tool_use"]
        assert assistant["content"][0]["signature"] == SIGNATURE
        assert [(r["type"], r["tool_use_id"], r["content"]) for r in results["content"]] == [
            ("tool_result", ids[0], "rain"),
            ("tool_result", ids[1], "sun"),
        ]
    else:
        model, results = body["contents"][-2:]
        calls = [p for p in model["parts"] if "functionCall" in p]
        assert [p.get("thoughtSignature") for p in calls] == [SIGNATURE, None]
        responses = [p["functionResponse"] for p in results["parts"]]
        assert [r["name"] for r in responses] == ["get_weather", "get_weather"]
        assert "rain" in json.dumps(responses[0]) and "sun" in json.dumps(responses[1])


def test_scripts_with_tools_and_reasoning_can_be_enqueued_over_http(
    fake_server: FakeProviderServer,
) -> None:
    script = {
        "text": "",
        "reasoning": "thinking",
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "call_x"},
            ["call_y", "get_weather", '{"city": "Bergen"}'],
        ],
        "redacted_thinking": ["abc"],
    }
    post = urllib.request.Request(
        f"{fake_server.url}/_fake/enqueue",
        data=json.dumps(script).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(post, timeout=5) as response:
        assert json.load(response) == {"ok": True}
    queued = fake_server._next_script()
    assert list(queued.tool_calls) == [
        ("call_x", "get_weather", '{"city": "Oslo"}'),
        ("call_y", "get_weather", '{"city": "Bergen"}'),
    ]
    assert list(queued.redacted_thinking) == ["abc"]


def test_a_bad_scripted_call_is_refused() -> None:
    with pytest.raises(ValueError, match="scripted tool call"):
        Script(tool_calls=[{"function": "f"}])


# --- byte realism: every event the fake sends has a shape the real APIs send --------

RECORDINGS = {
    "openai": [
        "openai_chat_parallel_tool_calls",
        "deepseek_reasoner_reasoning_content",
        "openai_chat_include_usage",
        "openai_chat_text_basic",
    ],
    "anthropic": ["anthropic_thinking", "anthropic_text_and_parallel_tool_use"],
    "gemini": ["gemini_function_call", "gemini_thinking", "gemini_text_basic"],
}


def payloads(raw: bytes) -> Iterator[tuple[str | None, Any]]:
    """``(event name, JSON data)`` of each SSE event (``[DONE]`` skipped)."""
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        name = None
        data = []
        for line in block.decode("utf-8").split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data and data != ["[DONE]"]:
            yield name, json.loads("\n".join(data))


def shapes(dialect: str, raw: bytes) -> list[tuple[Any, ...]]:
    """What each event looks like, names and nesting, values left out (but the kinds)."""
    out: list[tuple[Any, ...]] = []
    for name, data in payloads(raw):
        if dialect == "openai":
            if not data.get("choices"):
                out.append(("usage", frozenset(data)))
            for choice in data.get("choices") or ():
                delta = choice["delta"]
                finish = choice.get("finish_reason")
                out.append(("delta", frozenset(delta), finish))
                for call in delta.get("tool_calls") or ():
                    out.append(("call", frozenset(call), frozenset(call.get("function", {}))))
        elif dialect == "anthropic":
            kind = data["type"]
            assert name == kind
            if kind == "content_block_start":
                block = data["content_block"]
                out.append((kind, block["type"], frozenset(block)))
            elif kind == "content_block_delta":
                out.append((kind, data["delta"]["type"], frozenset(data["delta"])))
            elif kind == "message_delta":
                out.append((kind, frozenset(data["delta"]), data["delta"]["stop_reason"]))
            else:
                out.append((kind,))
        else:
            for candidate in data["candidates"]:
                for part in candidate["content"]["parts"]:
                    out.append(("part", frozenset(part)))
                out.append(("candidate", frozenset(candidate)))
    return out


def covered(mine: tuple[Any, ...], recorded: set[tuple[Any, ...]]) -> bool:
    """A recorded event has the same kinds and at least the keys this one has."""
    for other in recorded:
        if len(other) != len(mine):
            continue
        if all(
            a <= b if isinstance(a, frozenset) and isinstance(b, frozenset) else a == b
            for a, b in zip(mine, other, strict=True)
        ):
            return True
    return False


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "script",
    [
        pytest.param(tool_script(), id="reasoning-text-calls"),
        pytest.param(tool_script(text=""), id="reasoning-calls"),
        pytest.param(tool_script(reasoning=""), id="text-calls"),
        pytest.param(Script("Just text.", reasoning="Some thought."), id="reasoning-text"),
    ],
)
def test_every_event_has_a_shape_the_real_apis_send(dialect: str, script: Script) -> None:
    recorded: set[tuple[Any, ...]] = set()
    for stem in RECORDINGS[dialect]:
        recorded.update(shapes(dialect, (CORPUS / f"{stem}.sse").read_bytes()))
    opening, body, closing = script.render(dialect, "fake-model")
    mine = shapes(dialect, b"".join(opening + body + closing))
    missing = [s for s in mine if not covered(s, recorded)]
    assert not missing, missing
