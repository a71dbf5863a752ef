"""The mock answers structured requests offline: a valid generated object for the
schema (nested lists, enums, $refs), an exact or invalid object from a scenario,
JSON cut short by the token limit; and it says what attachments it received."""

from __future__ import annotations

import enum
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from pk_notebook import ConfigurationError, OutputValidationError, Pipeline
from pk_notebook.providers import MockProvider, Scenario
from pk_notebook.providers.mock import example_for_schema
from pk_notebook.runtime.attachments import Attachment
from pk_notebook.runtime.schema import output_schema
from pk_notebook.runtime.types import Message, ProviderConfig, Request


class Level(enum.Enum):
    easy = "easy"
    hard = "hard"


class Stop(BaseModel):
    place: str
    minutes: int = Field(ge=15)
    level: Level


class Day(BaseModel):
    title: str
    stops: list[Stop]
    budget: float = Field(gt=10, le=500)


class Trip(BaseModel):
    city: str
    days: list[Day]
    season: Literal["spring", "summer", "autumn", "winter"]
    tags: list[str] = Field(min_length=3, max_length=5)
    note: str | None = None
    booked: bool


class Node(BaseModel):
    name: str
    children: list[Node] = []


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * (41 * 1024)


async def test_a_generated_answer_is_valid_for_a_nested_model() -> None:
    seen: list[Any] = []
    async with Pipeline(MockProvider()) as pipe:
        async with pipe.stream("Plan a trip", schema=Trip) as stream:
            async for _ in stream:
                seen.append(stream.partial)
    result = stream.result
    assert isinstance(result.parsed, Trip)
    assert result.schema_mode == "mock"
    trip = result.parsed
    assert trip.city == "city"  # a word from the property's name
    assert len(trip.days) == 2 and len(trip.days[0].stops) == 2
    assert trip.days[0].stops[0].level is Level.easy  # an enum's first value
    assert trip.days[0].stops[0].minutes == 15  # moved inside the minimum
    assert 10 < trip.days[0].budget <= 500
    assert trip.season == "spring"
    assert trip.tags == ["tags 1", "tags 2", "tags 3"]
    # streamed in pieces: the object filled in
    assert len(seen) > 20
    assert seen[-1] == json.loads(result.text)


async def test_the_generated_answer_is_deterministic() -> None:
    async with Pipeline(MockProvider()) as pipe:
        first = await pipe.execute("user", "a", schema=Trip)
        second = await pipe.execute("user", "b", schema=Trip)
    assert first.text == second.text


def test_the_generator_covers_refs_unions_formats_and_recursion() -> None:
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date"},
            "email": {"type": "string", "format": "email"},
            "kind": {"const": "event"},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
            "either": {"oneOf": [{"type": "boolean"}, {"type": "string"}]},
            "maybe": {"type": ["null", "number"], "exclusiveMinimum": 3},
            "short": {"type": "string", "maxLength": 3},
            "long": {"type": "string", "minLength": 8},
            "owner": {"$ref": "#/$defs/Person"},
            "merged": {"allOf": [{"$ref": "#/$defs/Person"}], "description": "x"},
        },
        "$defs": {"Person": {"type": "object", "properties": {"first_name": {"type": "string"}}}},
    }
    value = example_for_schema(schema)
    assert value == {
        "when": "2024-01-01",
        "email": "email@example.com",
        "kind": "event",
        "pair": [1, "pair 2"],
        "either": True,
        "maybe": 3.5,
        "short": "sho",
        "long": "longxxxx",
        "owner": {"first_name": "first name"},
        "merged": {"first_name": "first name"},
    }
    import jsonschema

    jsonschema.validate(value, schema)
    tree = example_for_schema(Node.model_json_schema())
    Node.model_validate(tree)  # a recursive model ends


async def test_a_scenario_scripts_the_exact_object() -> None:
    answer = '{"city": "{city}", "days": [], "season": "summer", "tags": ["a", "b", "c"], '
    answer += '"booked": false}'  # {city}: the match's group, like any answer
    mock = MockProvider([Scenario(answer, match=r"trip to (?P<city>\w+)", schema="Trip")])
    async with Pipeline(mock) as pipe:
        result = await pipe.execute("user", "A trip to Porto", schema=Trip)
    assert result.parsed.city == "Porto"
    assert result.parsed.season == "summer"


async def test_prose_scenarios_never_answer_a_structured_request() -> None:
    mock = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    async with Pipeline(mock) as pipe:
        result = await pipe.execute("user", "Plan a day in Lisbon as json", schema=Trip)
        plain = await pipe.execute("user", "Plan a day in Lisbon")
    assert isinstance(result.parsed, Trip)
    assert not plain.text.startswith("{")


async def test_a_schema_scenario_answers_only_its_schema() -> None:
    class Other(BaseModel):
        x: int

    mock = MockProvider([Scenario('{"x": 7}', schema="Other"), Scenario("plain text")])
    async with Pipeline(mock) as pipe:
        other = await pipe.execute("user", "go", schema=Other)
        trip = await pipe.execute("user", "go", schema=Trip)
        plain = await pipe.execute("user", "go")
    assert other.parsed == Other(x=7)
    assert isinstance(trip.parsed, Trip)  # generated: the scenario names another schema
    assert plain.text == "plain text"


async def test_an_invalid_object_rehearses_a_validation_error() -> None:
    mock = MockProvider([{"schema": "*", "response": '{"city": 3, "booked": "maybe"}'}])
    async with Pipeline(mock) as pipe:
        with pytest.raises(OutputValidationError, match="does not match Trip") as caught:
            await pipe.execute("user", "Plan a trip", schema=Trip)
    assert caught.value.raw == '{"city": 3, "booked": "maybe"}'
    assert any(e.startswith("city") for e in caught.value.errors)


async def test_finish_reason_length_rehearses_truncated_json() -> None:
    mock = MockProvider([{"schema": "Trip", "finish_reason": "length"}])
    async with Pipeline(mock) as pipe:
        with pytest.raises(OutputValidationError, match="max_tokens") as caught:
            await pipe.execute("user", "Plan a trip", schema=Trip)
    full = json.dumps(example_for_schema(output_schema(Trip).json_schema))
    assert full.startswith(caught.value.raw) and len(caught.value.raw) < len(full)


async def test_a_small_max_tokens_cuts_the_answer_and_names_max_tokens() -> None:
    async with Pipeline(MockProvider()) as pipe:
        with pytest.raises(OutputValidationError, match="max_tokens"):
            await pipe.execute(
                "user", "Plan a trip", schema=Trip, config=ProviderConfig(max_tokens=10)
            )


async def test_the_truncate_fault_ends_the_stream_as_truncated() -> None:
    from pk_notebook import StreamStatus, TruncatedStream

    mock = MockProvider([{"schema": "*", "fault": {"kind": "truncate", "after": 5}}])
    async with Pipeline(mock) as pipe:
        async with pipe.stream("Plan a trip", schema=Trip) as stream:
            with pytest.raises(TruncatedStream):
                async for _ in stream:
                    pass
    assert stream.result.status is StreamStatus.TRUNCATED
    assert stream.result.parsed is None


def test_a_schema_scenario_needs_no_response() -> None:
    Scenario.from_dict({"schema": "Trip"})
    with pytest.raises(ConfigurationError, match="no 'response'"):
        Scenario.from_dict({"match": "x"})


async def test_a_tool_scenario_with_a_schema_answers_with_an_object() -> None:
    from pk_notebook import tool

    @tool
    def lookup(city: str) -> str:
        """Facts about a city."""
        return f"{city} is sunny"

    mock = MockProvider(
        [
            {
                "schema": "*",
                "match": "trip",
                "tool_calls": [{"name": "lookup", "arguments": {"city": "Lisbon"}}],
            }
        ]
    )
    async with Pipeline(mock) as pipe:
        result = await pipe.execute("user", "Plan a trip", schema=Trip, tools=[lookup])
    assert result.tool_results[0].output == "Lisbon is sunny"
    assert isinstance(result.parsed, Trip)


# --- attachments -------------------------------------------------------------------------


async def test_the_default_answer_says_what_it_received() -> None:
    figure = Attachment(PNG, "image/png", "figure.png")
    paper = Attachment(b"%PDF-1.4\n" + b"x" * 2000, "application/pdf", "paper.pdf")
    async with Pipeline(MockProvider()) as pipe:
        one = await pipe.execute("user", "What does this show?", attachments=[figure])
        two = await pipe.execute("user", "And these?", attachments=[figure, figure, paper])
        none = await pipe.execute("user", "No files")
    assert one.text.endswith("\n\nI received 1 image (figure.png, image/png, 41 kB).")
    assert two.text.endswith(
        "I received 2 images (figure.png, image/png, 41 kB; figure.png, image/png, 41 kB) "
        "and 1 PDF (paper.pdf, application/pdf, 2 kB)."
    )
    assert "I received" not in none.text


async def test_a_scenario_can_say_what_it_received() -> None:
    mock = MockProvider([Scenario("Thanks! {attachments}", match="look")])
    figure = Attachment(PNG, "image/png", "figure.png")
    request = Request((Message("user", "look", attachments=(figure,)),), ProviderConfig())
    _, text = mock.pick(request)
    assert text == "Thanks! I received 1 image (figure.png, image/png, 41 kB)."
