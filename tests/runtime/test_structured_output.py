"""schema=: the partial object while it streams, the validated object at the end, typed errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from pk_notebook import (
    ConfigurationError,
    Delta,
    Finish,
    OutputValidationError,
    Pipeline,
    StreamStatus,
)


class Trip(BaseModel):
    city: str
    days: int
    sights: list[str]


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Person(TypedDict):
    name: str
    age: int


class Writer:
    """Streams a fixed answer in small pieces; records the requests it gets."""

    name = "writer"
    model = "writer-1"

    def __init__(self, text: str, reason: str = "stop", piece: int = 4) -> None:
        self.text, self.reason, self.piece = text, reason, piece
        self.requests: list[Any] = []

    async def stream(self, request: Any):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        request.call.schema_mode = "test"
        for i in range(0, len(self.text), self.piece):
            yield Delta(self.text[i : i + self.piece])
        yield Finish(self.reason)

    async def aclose(self) -> None:
        pass


TRIP = '{"city": "Lisbon", "days": 3, "sights": ["Belém Tower", "Alfama"]}'


async def test_partial_object_grows_and_the_result_is_a_model_instance() -> None:
    writer = Writer(TRIP)
    seen: list[Any] = []
    async with Pipeline(writer) as pipe:
        async with pipe.stream("Plan a trip", schema=Trip) as stream:
            async for _ in stream:
                seen.append(stream.partial)
    result = stream.result
    assert isinstance(result.parsed, Trip)
    assert result.parsed.sights == ["Belém Tower", "Alfama"]
    assert result.schema_mode == "test"
    assert writer.requests[0].schema.name == "Trip"
    assert writer.requests[0].schema.json_schema["required"] == ["city", "days", "sights"]
    # mid-stream: a partial string, then more fields, each step a prefix of the next
    assert {"city": "Li"} in seen  # a string cut mid-way is shown as far as it goes
    lists = [s["sights"] for s in seen if isinstance(s, dict) and s.get("sights")]
    assert any(len(x) == 2 and x[1] != "Alfama" and "Alfama".startswith(x[1]) for x in lists)
    assert seen[-1] == {"city": "Lisbon", "days": 3, "sights": ["Belém Tower", "Alfama"]}


@pytest.mark.parametrize(
    ("schema", "text", "expected"),
    [
        (Point, '{"x": 1.5, "y": -2}', Point(1.5, -2.0)),
        (Person, '{"name": "Ada", "age": 36}', {"name": "Ada", "age": 36}),
        (
            {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
            '```json\n{"n": 7}\n```',
            {"n": 7},
        ),
    ],
)
async def test_dataclass_typeddict_and_json_schema_dict(
    schema: Any, text: str, expected: Any
) -> None:
    async with Pipeline(Writer(text)) as pipe:
        result = await pipe.execute("user", "go", schema=schema)
    assert result.parsed == expected


async def test_an_answer_that_does_not_fit_is_a_typed_error_with_the_raw_text() -> None:
    bad = '{"city": "Lisbon", "days": "three", "sights": []}'
    async with Pipeline(Writer(bad)) as pipe:
        with pytest.raises(OutputValidationError) as info:
            await pipe.execute("user", "go", schema=Trip)
    error = info.value
    assert error.raw == bad
    assert any(e.startswith("days:") for e in error.errors)
    assert "does not match Trip" in str(error)


async def test_json_cut_by_the_token_limit_names_max_tokens() -> None:
    async with Pipeline(Writer(TRIP[:30], reason="length")) as pipe:
        stream = pipe.stream("go", schema=Trip)
        with pytest.raises(OutputValidationError, match="max_tokens"):
            await stream.collect()
    assert stream.result.status is StreamStatus.FAILED
    assert stream.result.text == TRIP[:30]  # kept


async def test_dict_schema_is_checked_with_jsonschema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    async with Pipeline(Writer('{"n": "x"}')) as pipe:
        with pytest.raises(OutputValidationError, match="n: 'x' is not of type 'integer'"):
            await pipe.execute("user", "go", schema=schema)


def test_unusable_schemas_are_refused_before_anything_is_sent() -> None:
    pipe = Pipeline(Writer(""))
    with pytest.raises(ConfigurationError, match="JSON schema"):
        pipe.stream("x", schema={"city": "str"})
    with pytest.raises(ConfigurationError, match="pydantic model"):
        pipe.stream("x", schema="Trip")


def test_strict_schema_closes_objects_and_says_when_strict_mode_fits() -> None:
    from pk_notebook.runtime.schema import output_schema

    schema, strict = output_schema(Trip).strict_schema()
    assert schema["additionalProperties"] is False and strict

    class Loose(BaseModel):
        a: int
        b: int = 0

    _, strict = output_schema(Loose).strict_schema()
    assert not strict  # an optional field: sent non-strict rather than changed
