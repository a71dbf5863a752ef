"""schema= over HTTP, per dialect: the exact request each provider sends (OpenAI
``response_format``, Anthropic's forced tool, Gemini ``responseJsonSchema``), the
partial object while the real parser reads the fake server's stream, the validated
``result.parsed`` and ``result.schema_mode``, and the cut-off case."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from pk_notebook import OutputValidationError, Pipeline, ProviderMiddleware, RetryPolicy, tool
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.runtime.schema import output_schema
from pk_notebook.testing import FakeProviderServer, Script

PROVIDERS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}
MODES = {"openai": "json_schema", "anthropic": "tool", "gemini": "response_schema"}


class Trip(BaseModel):
    city: str
    days: int
    sights: list[str]


TRIP = {"city": "Lisbon", "days": 3, "sights": ["Belém Tower", "Alfama"]}


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeProviderServer() as running:
        yield running


@pytest.fixture(params=list(PROVIDERS))
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pipeline(server: FakeProviderServer, dialect: str, **options: Any) -> Pipeline:
    provider = PROVIDERS[dialect]("fake-model", base_url=server.base_url, **options)
    return Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))


# --- the request --------------------------------------------------------------------


async def test_openai_sends_a_strict_json_schema(server: FakeProviderServer) -> None:
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "openai") as pipe:
        result = await pipe.execute("user", "Plan 3 days in Lisbon", schema=Trip)
    body = server.requests[-1].json
    strict, ok = output_schema(Trip).strict_schema()
    assert ok
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Trip", "schema": strict, "strict": True},
    }
    assert body["response_format"]["json_schema"]["schema"]["additionalProperties"] is False
    assert body["messages"] == [{"role": "user", "content": "Plan 3 days in Lisbon"}]
    assert server.requests[-1].requested_schema() == {
        "mode": "json_schema",
        "name": "Trip",
        "schema": strict,
        "strict": True,
    }
    assert result.schema_mode == "json_schema"
    assert result.parsed == Trip(**TRIP)


async def test_openai_optional_fields_are_sent_non_strict(server: FakeProviderServer) -> None:
    class Note(BaseModel):
        title: str
        body: str | None = None

    server.enqueue(Script.json({"title": "hi"}))
    async with pipeline(server, "openai") as pipe:
        result = await pipe.execute("user", "A note", schema=Note)
    spec = server.requests[-1].json["response_format"]["json_schema"]
    assert spec["strict"] is False
    assert spec["schema"]["required"] == ["title"]  # not changed in meaning
    assert result.parsed == Note(title="hi")


async def test_openai_prompt_mode_for_servers_without_json_schema(
    server: FakeProviderServer,
) -> None:
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "openai", structured_output="prompt", system="Be brief.") as pipe:
        result = await pipe.execute("user", "Plan 3 days in Lisbon", schema=Trip)
    body = server.requests[-1].json
    assert "response_format" not in body
    system = body["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("Be brief.\n\nAnswer with one JSON value only")
    assert json.dumps(output_schema(Trip).json_schema, ensure_ascii=False) in system["content"]
    assert server.requests[-1].requested_schema() is None
    assert result.schema_mode == "prompt"
    assert result.parsed == Trip(**TRIP)


def test_openai_structured_output_option_is_checked() -> None:
    from pk_notebook import ConfigurationError

    with pytest.raises(ConfigurationError, match="structured_output must be"):
        OpenAIProvider("m", base_url="http://localhost:1/v1", structured_output="json")


async def test_anthropic_forces_the_schema_tool(server: FakeProviderServer) -> None:
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "anthropic") as pipe:
        result = await pipe.execute("user", "Plan 3 days in Lisbon", schema=Trip)
    body = server.requests[-1].json
    assert body["tool_choice"] == {"type": "tool", "name": "Trip"}
    assert body["tools"] == [
        {
            "name": "Trip",
            "description": "Give your answer (Trip) through this tool: its input is the answer.",
            "input_schema": output_schema(Trip).json_schema,
        }
    ]
    assert server.requests[-1].requested_schema()["schema"] == output_schema(Trip).json_schema
    assert result.schema_mode == "tool"
    assert result.parsed == Trip(**TRIP)
    # the forced tool's input is the answer text, not a tool call
    assert json.loads(result.text) == TRIP
    assert result.tool_calls == ()
    assert result.finish_reason == "end_turn"


async def test_anthropic_keeps_real_tools_and_lets_the_model_choose(
    server: FakeProviderServer,
) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"{city}: 21 C, sunny"

    server.enqueue(
        Script("", tool_calls=[{"name": "get_weather", "arguments": {"city": "Lisbon"}}])
    )
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "anthropic") as pipe:
        result = await pipe.execute(
            "user", "Plan 3 days in Lisbon", schema=Trip, tools=[get_weather]
        )
    first, second = server.requests[-2].json, server.requests[-1].json
    assert [t["name"] for t in first["tools"]] == ["get_weather", "Trip"]
    assert first["tool_choice"] == {"type": "any"}
    # the real call ran, its result went back, and the answer came through the schema tool
    assert any(
        block.get("type") == "tool_result"
        for message in second["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
    )
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert result.tool_results[0].output == "Lisbon: 21 C, sunny"
    assert result.parsed == Trip(**TRIP)
    assert result.schema_mode == "tool"


async def test_anthropic_non_object_schema_falls_back_to_instructions(
    server: FakeProviderServer,
) -> None:
    schema = {"title": "Cities", "type": "array", "items": {"type": "string"}}
    server.enqueue(Script.json(["Lisbon", "Porto"], structured=False))
    async with pipeline(server, "anthropic") as pipe:
        result = await pipe.execute("user", "Two cities", schema=schema)
    body = server.requests[-1].json
    assert "tools" not in body and "tool_choice" not in body
    assert "Answer with one JSON value only" in body["system"]
    assert result.schema_mode == "prompt"
    assert result.parsed == ["Lisbon", "Porto"]


async def test_gemini_sends_response_json_schema(server: FakeProviderServer) -> None:
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "gemini") as pipe:
        result = await pipe.execute("user", "Plan 3 days in Lisbon", schema=Trip)
    generation = server.requests[-1].json["generationConfig"]
    assert generation == {
        "responseMimeType": "application/json",
        "responseJsonSchema": output_schema(Trip).json_schema,
    }
    assert server.requests[-1].requested_schema()["mode"] == "response_schema"
    assert result.schema_mode == "response_schema"
    assert result.parsed == Trip(**TRIP)


async def test_no_schema_sends_none_of_it(server: FakeProviderServer, dialect: str) -> None:
    server.enqueue(Script("plain"))
    async with pipeline(server, dialect) as pipe:
        result = await pipe.execute("user", "hello")
    body = server.requests[-1].json
    assert "response_format" not in body and "tools" not in body
    assert "generationConfig" not in body
    assert server.requests[-1].requested_schema() is None
    assert result.schema_mode is None


# --- while streaming, and at the end -------------------------------------------------


async def test_partial_object_fills_in_through_the_real_parser(
    server: FakeProviderServer, dialect: str
) -> None:
    server.enqueue(Script.json(TRIP, piece=5))
    seen: list[Any] = []
    async with pipeline(server, dialect) as pipe:
        async with pipe.stream("Plan 3 days in Lisbon", schema=Trip) as stream:
            async for _ in stream:
                seen.append(stream.partial)
    result = stream.result
    assert result.schema_mode == MODES[dialect]
    assert result.parsed == Trip(**TRIP)
    assert len(seen) > 10  # one per piece: the object filled in piece by piece
    # a string cut mid-way, then the whole of it
    assert any(isinstance(s, dict) and s.get("city") not in (None, "Lisbon") for s in seen)
    assert any(isinstance(s, dict) and s.get("sights") and len(s["sights"]) == 1 for s in seen)
    assert seen[-1] == TRIP


async def test_a_cut_off_answer_names_max_tokens(server: FakeProviderServer, dialect: str) -> None:
    text = json.dumps(TRIP)[:30]
    reason = {"openai": "length", "anthropic": "max_tokens", "gemini": "MAX_TOKENS"}[dialect]
    server.enqueue(Script.json(text, finish_reason=reason))
    async with pipeline(server, dialect) as pipe:
        with pytest.raises(OutputValidationError, match="max_tokens") as caught:
            await pipe.execute("user", "Plan 3 days in Lisbon", schema=Trip)
    assert caught.value.raw == text


async def test_an_answer_that_does_not_fit_is_a_validation_error(
    server: FakeProviderServer, dialect: str
) -> None:
    server.enqueue(Script.json({"city": "Lisbon", "days": "three"}))
    async with pipeline(server, dialect) as pipe:
        with pytest.raises(OutputValidationError, match="days") as caught:
            await pipe.execute("user", "Plan 3 days in Lisbon", schema=Trip)
    assert json.loads(caught.value.raw) == {"city": "Lisbon", "days": "three"}


# --- the Anthropic parser on its own --------------------------------------------------


def test_anthropic_answer_tool_pieces_are_text_and_other_tools_stay_calls() -> None:
    from pk_notebook.providers.anthropic import AnthropicParser
    from pk_notebook.runtime.types import Delta, Finish, ToolCallDelta

    provider = AnthropicProvider("m", base_url="http://localhost:1")
    script = Script.json(TRIP, structured="Trip", tool_calls=[("toolu_1", "clock", "{}")])
    opening, pieces, closing = script.render("anthropic", "m")
    parser = AnthropicParser(provider, answer_tool="Trip")
    events = parser.feed(b"".join(opening + pieces + closing))
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert json.loads(text) == TRIP
    fragments = [e for e in events if isinstance(e, ToolCallDelta)]
    assert {f.name for f in fragments if f.name} == {"clock"}
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert [c.name for c in finish.tool_calls] == ["clock"]
    assert finish.reason == "tool_use"  # a real call is still a tool round


async def test_gemini_with_tools_asks_by_instructions(server: FakeProviderServer) -> None:
    """Gemini 2.x refuses function calling with a JSON response type: the schema goes
    into the system instruction, and the answer is validated all the same."""

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"{city}: 21 C, sunny"

    server.enqueue(
        Script("", tool_calls=[{"name": "get_weather", "arguments": {"city": "Lisbon"}}])
    )
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "gemini") as pipe:
        result = await pipe.execute(
            "user", "Plan 3 days in Lisbon", schema=Trip, tools=[get_weather]
        )
    for recorded in server.requests[-2:]:
        body = recorded.json
        assert "responseMimeType" not in body.get("generationConfig", {})
        assert "Answer with one JSON value only" in body["systemInstruction"]["parts"][0]["text"]
    assert result.schema_mode == "prompt"
    assert result.parsed == Trip(**TRIP)
    assert result.tool_results[0].output == "Lisbon: 21 C, sunny"


async def test_openai_keeps_tools_with_a_json_schema(server: FakeProviderServer) -> None:
    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"{city}: 21 C, sunny"

    server.enqueue(
        Script("", tool_calls=[{"name": "get_weather", "arguments": {"city": "Lisbon"}}])
    )
    server.enqueue(Script.json(TRIP))
    async with pipeline(server, "openai") as pipe:
        result = await pipe.execute(
            "user", "Plan 3 days in Lisbon", schema=Trip, tools=[get_weather]
        )
    first, second = server.requests[-2].json, server.requests[-1].json
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["response_format"]["type"] == "json_schema"
    assert second["response_format"] == first["response_format"]
    assert result.parsed == Trip(**TRIP)
    assert result.schema_mode == "json_schema"
