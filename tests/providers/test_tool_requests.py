"""Tools, tool rounds and reasoning in the request each dialect sends.

The bodies are checked where they matter: as the JSON a real HTTP server (the
fake provider server on 127.0.0.1) received from a real provider call.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.providers.anthropic import anthropic_messages
from pk_notebook.runtime.tools import ToolSpec, tool
from pk_notebook.runtime.types import Message, ProviderConfig, Request, ToolCall
from pk_notebook.testing import FakeProviderServer

from ._parsers import parse

CONFORMANCE = Path(__file__).parent.parent / "conformance"

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "the city's name"}},
    "required": ["city"],
}
WEATHER = ToolSpec("get_weather", "Current weather for a city.", WEATHER_SCHEMA)
CLOCK = ToolSpec("clock")  # no description, the default empty-object schema

THINKING = {
    "provider": "anthropic",
    "type": "thinking",
    "thinking": "Two cities: two calls.",
    "signature": "sig-anthropic",
}
REDACTED = {"provider": "anthropic", "type": "redacted_thinking", "data": "opaque-data"}
FOREIGN = {"provider": "someone-else", "type": "thinking", "thinking": "not yours"}

HISTORY = (
    Message("system", "Be brief."),
    Message("user", "Weather in Paris and London?"),
    Message(
        "assistant",
        "Let me look.",
        tool_calls=(
            ToolCall("call_1", "get_weather", '{"city": "Paris"}', signature="sig-gemini"),
            ToolCall("call_2", "get_weather", '{"city": "London"}'),
        ),
        reasoning="Two cities: two calls.",
        reasoning_blocks=(THINKING, REDACTED, FOREIGN),
    ),
    Message("tool", "18 C, rain", tool_call_id="call_1", name="get_weather"),
    Message("tool", "city not found", tool_call_id="call_2", name="get_weather", is_error=True),
    Message("user", "And tomorrow?"),
)


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeProviderServer() as running:
        yield running


async def sent_body(server: FakeProviderServer, provider: Any, request: Request) -> Any:
    """Make one real call; return the JSON body the server received."""
    try:
        events = [event async for event in provider.stream(request)]
    finally:
        await provider.aclose()
    assert events  # the fake server answered
    recorded = server.requests[-1]
    recorded.wait_ended()
    return recorded.json


def request(
    messages: tuple[Message, ...] = HISTORY,
    tools: tuple[Any, ...] = (WEATHER, CLOCK),
    tool_choice: str | None = "auto",
) -> Request:
    return Request(messages=messages, config=ProviderConfig(), tools=tools, tool_choice=tool_choice)


# --- one tool round in the history, per dialect -----------------------------------------


async def test_openai_body(server: FakeProviderServer) -> None:
    provider = OpenAIProvider("gpt-test", base_url=server.base_url)
    body = await sent_body(server, provider, request())
    assert body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris and London?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "London"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, rain"},
            {"role": "tool", "tool_call_id": "call_2", "content": "city not found"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather for a city.",
                    "parameters": WEATHER_SCHEMA,
                },
            },
            {
                "type": "function",
                "function": {"name": "clock", "parameters": {"type": "object", "properties": {}}},
            },
        ],
        "tool_choice": "auto",
    }


async def test_anthropic_body(server: FakeProviderServer) -> None:
    provider = AnthropicProvider("claude-test", base_url=server.base_url)
    body = await sent_body(server, provider, request())
    assert body == {
        "model": "claude-test",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Weather in Paris and London?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "thinking",
                        "thinking": "Two cities: two calls.",
                        "signature": "sig-anthropic",
                    },
                    {"type": "redacted_thinking", "data": "opaque-data"},
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "get_weather",
                        "input": {"city": "London"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, rain"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": "city not found",
                        "is_error": True,
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
        "stream": True,
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather for a city.",
                "input_schema": WEATHER_SCHEMA,
            },
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "auto"},
    }


async def test_gemini_body(server: FakeProviderServer) -> None:
    provider = GeminiProvider("gemini-test", base_url=server.base_url)
    body = await sent_body(server, provider, request())
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris and London?"}]},
            {
                "role": "model",
                "parts": [
                    {"text": "Let me look."},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "sig-gemini",
                    },
                    {"functionCall": {"name": "get_weather", "args": {"city": "London"}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "name": "get_weather",
                            "response": {"result": "18 C, rain"},
                        }
                    },
                    {
                        "functionResponse": {
                            "name": "get_weather",
                            "response": {"error": "city not found"},
                        }
                    },
                    {"text": "And tomorrow?"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Current weather for a city.",
                        "parametersJsonSchema": WEATHER_SCHEMA,
                    },
                    {
                        "name": "clock",
                        "parametersJsonSchema": {"type": "object", "properties": {}},
                    },
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    }


# --- tool_choice, and the tools a function makes ---------------------------------------


def offline(cls: type) -> Any:
    """A provider for build() only (a local base_url: no key needed, nothing is sent)."""
    return cls("m", base_url="http://127.0.0.1:9/v1")


def body_of(provider: Any, req: Request) -> Any:
    _, _, raw = provider.build(req, provider.config.merged(req.config))
    return json.loads(raw)


CHOICES = [
    # tool_choice, OpenAI, Anthropic, Gemini mode
    (None, None, None, None),
    ("auto", "auto", {"type": "auto"}, "AUTO"),
    ("none", "none", {"type": "none"}, "NONE"),
    ("required", "required", {"type": "any"}, "ANY"),
]


@pytest.mark.parametrize(("choice", "openai", "anthropic", "gemini"), CHOICES)
def test_tool_choice(choice: str | None, openai: Any, anthropic: Any, gemini: Any) -> None:
    req = request(tool_choice=choice)
    assert body_of(offline(OpenAIProvider), req).get("tool_choice") == openai
    assert body_of(offline(AnthropicProvider), req).get("tool_choice") == anthropic
    config = body_of(offline(GeminiProvider), req).get("toolConfig")
    assert (config["functionCallingConfig"]["mode"] if config else None) == gemini


@pytest.mark.parametrize("cls", [OpenAIProvider, AnthropicProvider, GeminiProvider])
def test_no_tools_no_tool_fields(cls: type) -> None:
    body = body_of(
        offline(cls), request(messages=(Message("user", "hi"),), tools=(), tool_choice="none")
    )
    assert not {"tools", "tool_choice", "toolConfig"} & set(body)


def test_function_tool_schema_goes_out_whole() -> None:
    def forecast(city: str, days: int = 3) -> str:
        """Forecast for a city.

        Args:
            city: the city's name.
            days: how many days ahead.
        """
        return ""

    spec = tool(forecast)
    req = request(messages=(Message("user", "hi"),), tools=(spec,))
    assert body_of(offline(OpenAIProvider), req)["tools"][0]["function"]["parameters"] == dict(
        spec.parameters
    )
    assert body_of(offline(AnthropicProvider), req)["tools"][0]["input_schema"] == dict(
        spec.parameters
    )
    declaration = body_of(offline(GeminiProvider), req)["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"] == dict(spec.parameters)
    assert declaration["description"] == "Forecast for a city."


# --- edge cases of the history -----------------------------------------------------------


def test_openai_skips_empty_assistant_and_sends_no_reasoning() -> None:
    messages = (
        Message("user", "hi"),
        Message("assistant", "", status="stopped"),
        Message("user", "again"),
        Message("assistant", "", tool_calls=(ToolCall("c", "clock", ""),), reasoning="hmm"),
        Message("tool", "12:00", tool_call_id="c", name="clock"),
    )
    sent = body_of(offline(OpenAIProvider), request(messages=messages))["messages"]
    assert sent == [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "again"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "12:00"},
    ]
    assert "reasoning" not in json.dumps(sent)


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"', ""])
def test_arguments_that_are_not_an_object(arguments: str) -> None:
    messages = (
        Message("user", "hi"),
        Message("assistant", "", tool_calls=(ToolCall("c", "clock", arguments),)),
        Message("tool", "12:00", tool_call_id="c", name="clock"),
    )
    anthropic = body_of(offline(AnthropicProvider), request(messages=messages))["messages"]
    assert anthropic[1]["content"] == [
        {"type": "tool_use", "id": "c", "name": "clock", "input": {}}
    ]
    gemini = body_of(offline(GeminiProvider), request(messages=messages))["contents"]
    # (a call of the current turn without a signature of its own gets Google's dummy one)
    assert gemini[1]["parts"] == [
        {
            "functionCall": {"name": "clock", "args": {}},
            "thoughtSignature": "skip_thought_signature_validator",
        }
    ]


def test_gemini_result_without_a_name_takes_the_call_name() -> None:
    messages = (
        Message("user", "hi"),
        Message("assistant", "", tool_calls=(ToolCall("c", "clock", "{}"),)),
        Message("tool", "12:00", tool_call_id="c"),
    )
    contents = body_of(offline(GeminiProvider), request(messages=messages))["contents"]
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "clock", "response": {"result": "12:00"}}}],
    }


def assert_alternates(messages: list[dict[str, Any]]) -> None:
    roles = [m["role"] for m in messages]
    assert roles[0] == "user"
    assert all(a != b for a, b in itertools.pairwise(roles)), roles


def test_anthropic_history_alternates() -> None:
    """Two tool rounds, a text-only answer, two user messages in a row, a stopped
    empty answer: every role change survives and no role repeats."""
    history = (
        Message("user", "first"),
        Message("user", "second"),
        Message("assistant", "", tool_calls=(ToolCall("a", "clock", "{}"),)),
        Message("tool", "12:00", tool_call_id="a", name="clock"),
        Message(
            "assistant",
            "  ",
            tool_calls=(ToolCall("b", "clock", "{}"), ToolCall("c", "clock", "{}")),
        ),
        Message("tool", "12:01", tool_call_id="b", name="clock"),
        Message("tool", "boom", tool_call_id="c", name="clock", is_error=True),
        Message("assistant", "It is noon.", reasoning_blocks=(THINKING,)),
        Message("user", "thanks"),
        Message("assistant", "", status="stopped"),
        Message("user", "again"),
    )
    system: list[str] = []
    sent = anthropic_messages(history, system)
    assert_alternates(sent)
    assert sent[0] == {
        "role": "user",
        "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
    }
    # a whitespace-only text is not sent as a block (the API refuses it)
    assert [b["type"] for b in sent[3]["content"]] == ["tool_use", "tool_use"]
    assert [b["type"] for b in sent[4]["content"]] == ["tool_result", "tool_result"]
    # a text-only answer stays a plain string (its thinking belongs to a finished turn)
    assert sent[5] == {"role": "assistant", "content": "It is noon."}
    assert sent[6] == {
        "role": "user",
        "content": [{"type": "text", "text": "thanks"}, {"type": "text", "text": "again"}],
    }
    assert system == []


def test_recorded_answer_goes_back_unchanged() -> None:
    """What the parser made of recorded streams, stored as a Message, is sent back
    as the API wants it: the thinking with its signature, the calls' inputs."""
    thinking = parse("anthropic", (CONFORMANCE / "anthropic_thinking.sse").read_bytes())
    tools = parse(
        "anthropic", (CONFORMANCE / "anthropic_text_and_parallel_tool_use.sse").read_bytes()
    )
    assert thinking.finish is not None and tools.finish is not None
    answer = Message(
        "assistant",
        tools.text,
        tool_calls=tuple(tools.finish.tool_calls),
        reasoning=thinking.reasoning,
        reasoning_blocks=tuple(thinking.finish.reasoning_blocks),
    )
    results = tuple(
        Message("tool", f"secret {i}", tool_call_id=call.id, name=call.name)
        for i, call in enumerate(answer.tool_calls)
    )
    sent = anthropic_messages((Message("user", "go"), answer, *results), [])
    assert_alternates(sent)
    blocks = sent[1]["content"]
    meta = json.loads((CONFORMANCE / "anthropic_thinking.json").read_text(encoding="utf-8"))
    assert blocks[0]["type"] == "thinking" and "provider" not in blocks[0]
    assert blocks[0]["thinking"] == meta["extra"]["reasoning_text"]
    assert len(blocks[0]["signature"]) == meta["extra"]["thinking_signature_length"][0]
    expected = json.loads(
        (CONFORMANCE / "anthropic_text_and_parallel_tool_use.json").read_text(encoding="utf-8")
    )["expected_tool_calls"]
    assert [b for b in blocks if b["type"] == "tool_use"] == [
        {"type": "tool_use", **call} for call in expected
    ]
    assert [b["tool_use_id"] for b in sent[2]["content"]] == [c["id"] for c in expected]


def test_anthropic_history_with_tools_but_no_tools_given() -> None:
    """The API refuses tool_use/tool_result blocks in a request without ``tools``: a
    session continued without tools= declares the tools its history used, uncallable."""
    body = body_of(offline(AnthropicProvider), request(tools=(), tool_choice=None))
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Used earlier in this conversation; not available now.",
            "input_schema": {"type": "object", "properties": {}},
        }
    ]
    assert body["tool_choice"] == {"type": "none"}
    plain = body_of(
        offline(AnthropicProvider), request(messages=(Message("user", "hi"),), tools=())
    )
    assert "tools" not in plain and "tool_choice" not in plain
