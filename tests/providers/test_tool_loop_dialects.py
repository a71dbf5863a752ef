"""Whole tool loops over HTTP, once per dialect (OpenAI-compatible, Anthropic, Gemini):
the fake server plays the model (a script with the calls, then one with the answer),
the real provider parses it, the pipeline runs the Python functions, and the next
request carries the results in that dialect's own format."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from pk_notebook import Pipeline, ProviderMiddleware, RetryPolicy, StreamStatus, tool
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.testing import FakeProviderServer, Script

PROVIDERS = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}
SIGNATURE = "dGhlLXRoaW5raW5nLXNpZ25hdHVyZQ=="
THINKING = "The user asks about rain. I should call get_weather."


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"{city}: light rain, 14 C"


@pytest.fixture(params=list(PROVIDERS))
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pipeline(server: FakeProviderServer, dialect: str, **options: Any) -> Pipeline:
    provider = PROVIDERS[dialect]("fake-model", base_url=server.base_url)
    return Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), **options)


def calls(*cities_or_calls: Any, name: str = "get_weather", **options: Any) -> Script:
    """A model answer that calls ``name`` once per city (or per given call mapping)."""
    scripted = [
        c if isinstance(c, dict) else {"name": name, "arguments": {"city": c}}
        for c in cities_or_calls
    ]
    options.setdefault("reasoning", THINKING)
    return Script("", tool_calls=scripted, signature=SIGNATURE, **options)


def results_sent(server: FakeProviderServer, dialect: str, index: int = -1) -> list[dict[str, Any]]:
    """The tool results a request carried, as ``{"id", "name", "output", "error"}``."""
    body = server.requests[index].json
    found = []
    if dialect == "openai":
        for message in body["messages"]:
            if message["role"] == "tool":
                found.append(
                    {"id": message["tool_call_id"], "output": message["content"], "error": None}
                )
    elif dialect == "anthropic":
        for message in body["messages"]:
            if message["role"] == "user" and isinstance(message["content"], list):
                for block in message["content"]:
                    if block["type"] == "tool_result":
                        found.append(
                            {
                                "id": block["tool_use_id"],
                                "output": block["content"],
                                "error": block.get("is_error", False),
                            }
                        )
    else:
        for content in body["contents"]:
            for part in content["parts"]:
                if "functionResponse" in part:
                    response = part["functionResponse"]["response"]
                    found.append(
                        {
                            "name": part["functionResponse"]["name"],
                            "output": json.dumps(response),
                            "error": "error" in response,
                        }
                    )
    return found


def tool_choice_sent(server: FakeProviderServer, dialect: str, index: int = -1) -> Any:
    body = server.requests[index].json
    if dialect == "openai":
        return body.get("tool_choice")
    if dialect == "anthropic":
        return (body.get("tool_choice") or {}).get("type")
    mode = (body.get("toolConfig") or {}).get("functionCallingConfig", {}).get("mode")
    return mode.lower() if mode else None


async def test_a_full_loop_calls_the_function_and_answers_from_its_result(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    fake_server.enqueue(calls("Paris"))
    fake_server.enqueue(Script("Yes: light rain in Paris, take the umbrella."))
    async with pipeline(fake_server, dialect) as pipe:
        kinds: list[str] = []
        async with pipe.stream("Umbrella in Paris?", tools=[get_weather]) as stream:
            async for chunk in stream:
                if chunk.tool is not None:
                    kinds.append(chunk.tool.kind)
        result = stream.result

    assert result.status is StreamStatus.FINISHED
    assert result.text == "Yes: light rain in Paris, take the umbrella."
    assert result.reasoning.startswith(THINKING)
    assert [r.output for r in result.tool_results] == ["Paris: light rain, 14 C"]
    assert result.model_calls == 2 and len(fake_server.requests) == 2
    assert kinds[0] == "start" and kinds[-3:] == ["call", "running", "result"]

    first, second = (r.json for r in fake_server.requests)
    # the tool went out in the dialect's format, the same both times
    if dialect == "openai":
        assert first["tools"][0]["function"]["name"] == "get_weather"
        assert first["tools"][0]["function"]["parameters"]["required"] == ["city"]
    elif dialect == "anthropic":
        assert first["tools"][0]["name"] == "get_weather"
        assert first["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        declaration = first["tools"][0]["functionDeclarations"][0]
        assert declaration["name"] == "get_weather"
    assert second["tools"] == first["tools"]

    # the second request carries the call and its result, in the dialect's format
    (call,) = result.tool_calls
    sent = results_sent(fake_server, dialect)
    assert len(sent) == 1 and "Paris: light rain, 14 C" in sent[0]["output"]
    assert not sent[0]["error"]
    if dialect == "openai":
        assistant = second["messages"][-2]
        assert assistant["role"] == "assistant"
        assert assistant["tool_calls"][0]["id"] == call.id == sent[0]["id"] == "call_fake_1"
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    elif dialect == "anthropic":
        assistant = second["messages"][-2]
        thinking, tool_use = assistant["content"]
        assert thinking == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}
        assert tool_use["id"] == sent[0]["id"] == call.id and tool_use["input"] == {"city": "Paris"}
    else:
        model = second["contents"][-2]
        assert model["role"] == "model"
        (part,) = [p for p in model["parts"] if "functionCall" in p]
        assert part["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
        assert part["thoughtSignature"] == SIGNATURE
        assert sent[0]["name"] == "get_weather"


async def test_parallel_calls_run_concurrently(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    async def slow_weather(city: str) -> str:
        """Weather, slowly."""
        await asyncio.sleep(0.3)
        return f"{city}: sunny"

    made = tool(slow_weather)  # its schema built once, before the clock starts
    async with pipeline(fake_server, dialect) as pipe:
        await pipe.execute("user", "warm up")  # a connection, open and warm
        fake_server.requests.clear()
        fake_server.enqueue(calls("Rome", "Oslo", name="slow_weather"))
        fake_server.enqueue(Script("Sunny in both."))
        started = time.monotonic()
        result = await pipe.execute("user", "Rome and Oslo?", tools=[made])
        elapsed = time.monotonic() - started
    assert result.complete and result.text == "Sunny in both."
    assert [r.output for r in result.tool_results] == ["Rome: sunny", "Oslo: sunny"]
    assert elapsed < 0.55, elapsed  # two 0.3 s calls at once, and two model calls
    sent = results_sent(fake_server, dialect)
    assert ["Rome: sunny" in s["output"] for s in sent] == [True, False]
    assert ["Oslo: sunny" in s["output"] for s in sent] == [False, True]


async def test_a_raising_tool_goes_back_as_a_tool_error_and_the_turn_finishes(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    def read_sensor(city: str) -> str:
        """Read the rain sensor."""
        raise RuntimeError("the rain sensor is offline")

    fake_server.enqueue(calls("Lyon", name="read_sensor"))
    fake_server.enqueue(Script("The sensor is offline, sorry."))
    async with pipeline(fake_server, dialect) as pipe:
        result = await pipe.execute("user", "Rain in Lyon?", tools=[read_sensor])
    assert result.status is StreamStatus.FINISHED
    assert result.text == "The sensor is offline, sorry."
    (outcome,) = result.tool_results
    assert outcome.status == "error" and "the rain sensor is offline" in outcome.output
    (sent,) = results_sent(fake_server, dialect)
    assert "the rain sensor is offline" in sent["output"]
    if dialect != "openai":  # OpenAI's tool messages have no error flag: the text says it
        assert sent["error"] is True


async def test_an_async_tool_returning_data_is_sent_as_json(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    async def forecast(city: str) -> dict[str, Any]:
        """Tomorrow's forecast."""
        await asyncio.sleep(0.01)
        return {"city": city, "rain_mm": 3.5}

    fake_server.enqueue(calls("Nice", name="forecast"))
    fake_server.enqueue(Script("3.5 mm tomorrow."))
    async with pipeline(fake_server, dialect) as pipe:
        result = await pipe.execute("user", "Rain tomorrow in Nice?", tools=[forecast])
    assert result.complete and result.text == "3.5 mm tomorrow."
    (outcome,) = result.tool_results
    assert outcome.status == "ok" and outcome.value == {"city": "Nice", "rain_mm": 3.5}
    assert json.loads(outcome.output) == {"city": "Nice", "rain_mm": 3.5}
    (sent,) = results_sent(fake_server, dialect)
    assert "3.5" in sent["output"] and "Nice" in sent["output"]


async def test_max_tool_rounds_reached_the_last_request_asks_for_text(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    fake_server.enqueue(calls("Paris"), times=2)
    fake_server.enqueue(Script("Enough lookups: it rains in Paris."))
    async with pipeline(fake_server, dialect) as pipe:
        result = await pipe.execute("user", "Paris?", tools=[get_weather], max_tool_rounds=2)
    assert len(fake_server.requests) == 3
    assert [tool_choice_sent(fake_server, dialect, i) for i in range(3)] == [None, None, "none"]
    assert result.complete and result.text == "Enough lookups: it rains in Paris."
    assert len(result.tool_results) == 2 and result.model_calls == 3
    assert len(results_sent(fake_server, dialect)) == 2  # both rounds' results went back


async def test_stop_during_a_slow_tool_saves_a_consistent_partial_turn(
    fake_server: FakeProviderServer, dialect: str
) -> None:
    cancelled = asyncio.Event()

    async def slow_radar(city: str) -> str:
        """The rain radar (slow)."""
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    fake_server.enqueue(calls("Paris", name="slow_radar"))
    fake_server.enqueue(Script("unused"))
    async with pipeline(fake_server, dialect) as pipe:
        stream = pipe.stream("Radar for Paris?", session="trip", tools=[slow_radar])
        async with stream:
            async for chunk in stream:
                if chunk.tool is not None and chunk.tool.kind == "running":
                    stopped_at = time.monotonic()
                    stream.stop()
        assert time.monotonic() - stopped_at < 1.0
        result = stream.result
        await asyncio.wait_for(cancelled.wait(), 2)
        history = await pipe.state_store.load("trip")
    assert result.status is StreamStatus.STOPPED
    (outcome,) = result.tool_results
    assert outcome.status == "stopped"
    assert len(fake_server.requests) == 1  # nothing was sent after the stop
    assert [m.role for m in history] == ["user", "assistant", "tool"]
    user, assistant, tool_message = history
    assert user.content == "Radar for Paris?"
    assert [c.name for c in assistant.tool_calls] == ["slow_radar"]
    assert tool_message.tool_call_id == assistant.tool_calls[0].id
    assert tool_message.is_error and tool_message.status == "stopped"
    assert assistant.reasoning == THINKING
