"""The mock provider scripts tool use offline: reasoning, calls streamed as fragments,
then an answer from the tool's result (driven directly, with hand-built histories)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pk_notebook import ConfigurationError, Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider, Scenario
from pk_notebook.providers.mock import ScriptedCall
from pk_notebook.runtime.tools import ToolSpec
from pk_notebook.runtime.types import (
    Delta,
    Finish,
    Message,
    ProviderConfig,
    ProviderEvent,
    Request,
    ToolCall,
    ToolCallDelta,
)

WEATHER = {
    "name": "weather",
    "match": r"weather in (?P<city>\w+)",
    "reasoning": "I need the weather in {city}.",
    "response": "Let me check.",
    "tool_calls": [{"name": "get_weather", "arguments": {"city": "{city}", "unit": "C"}}],
    "answer": "In {city} it is {result}.",
}
GET_WEATHER = ToolSpec("get_weather", "Current weather for a city.")


def request(
    messages: Sequence[Message],
    tools: Sequence[Any] = (GET_WEATHER,),
    tool_choice: str | None = None,
    **config: Any,
) -> Request:
    return Request(
        tuple(messages), ProviderConfig(**config), tools=tuple(tools), tool_choice=tool_choice
    )


async def events(provider: MockProvider, req: Request) -> list[ProviderEvent]:
    return [event async for event in provider.stream(req)]


def text_of(evs: Sequence[ProviderEvent]) -> str:
    return "".join(e.text for e in evs if isinstance(e, Delta))


def reasoning_of(evs: Sequence[ProviderEvent]) -> str:
    return "".join(e.reasoning for e in evs if isinstance(e, Delta))


def finish_of(evs: Sequence[ProviderEvent]) -> Finish:
    assert isinstance(evs[-1], Finish)
    return evs[-1]


def results_for(calls: Sequence[ToolCall], *outputs: str) -> list[Message]:
    """The messages the pipeline appends after a round: the calls, then one result each."""
    return [
        Message("assistant", "", tool_calls=tuple(calls)),
        *(
            Message("tool", output, tool_call_id=call.id, name=call.name)
            for call, output in zip(calls, outputs, strict=True)
        ),
    ]


async def test_a_tool_scenario_thinks_then_writes_then_streams_the_call() -> None:
    provider = MockProvider([WEATHER])
    evs = await events(provider, request([Message("user", "What's the weather in Paris?")]))
    kinds = [type(e).__name__ for e in evs]
    # reasoning first, then the text, then the call's fragments, then the end
    first_text = next(i for i, e in enumerate(evs) if isinstance(e, Delta) and e.text)
    last_reasoning = max(i for i, e in enumerate(evs) if isinstance(e, Delta) and e.reasoning)
    first_call = kinds.index("ToolCallDelta")
    assert last_reasoning < first_text < first_call
    assert reasoning_of(evs) == "I need the weather in Paris."
    assert text_of(evs) == "Let me check."

    fragments = [e for e in evs if isinstance(e, ToolCallDelta)]
    head, *pieces = fragments
    assert (head.index, head.id, head.name, head.arguments) == (0, "call_1", "get_weather", "")
    assert len(pieces) >= 3 and all(not p.id and not p.name and p.index == 0 for p in pieces)
    arguments = "".join(p.arguments for p in pieces)
    assert json.loads(arguments) == {"city": "Paris", "unit": "C"}

    finish = finish_of(evs)
    assert finish.reason == "tool_calls"
    assert finish.tool_calls == (ToolCall("call_1", "get_weather", arguments),)
    assert finish.usage is not None and finish.usage.reasoning_tokens > 0
    assert finish.usage.output_tokens == len(split_text(evs)) + len(pieces)


def split_text(evs: Sequence[ProviderEvent]) -> list[str]:
    return [e.text for e in evs if isinstance(e, Delta) and e.text]


async def test_the_follow_up_answers_from_the_tool_result_and_never_calls_again() -> None:
    provider = MockProvider([WEATHER])
    asked = [Message("user", "weather in Oslo")]
    first = finish_of(await events(provider, request(asked)))
    history = [*asked, *results_for(first.tool_calls, "-3 °C and snowing")]

    evs = await events(provider, request(history))
    assert text_of(evs) == "In Oslo it is -3 °C and snowing."
    assert not any(isinstance(e, ToolCallDelta) for e in evs)
    finish = finish_of(evs)
    assert finish.reason == "stop" and finish.tool_calls == ()
    assert reasoning_of(evs) == ""  # the scenario's reasoning goes with the calls

    # a loop that sends results back again still gets text, not another round of calls
    again = [*history, *results_for(first.tool_calls, "still snowing")]
    evs = await events(provider, request(again))
    assert text_of(evs) == "In Oslo it is still snowing." and finish_of(evs).tool_calls == ()


async def test_parallel_calls_and_every_way_to_use_their_results() -> None:
    provider = MockProvider(
        [
            {
                "match": r"compare (?P<a>\w+) and (?P<b>\w+)",
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "{a}"}},
                    {"name": "get_weather", "arguments": {"city": "{b}"}},
                    {"name": "get_time", "arguments": '{"zone": "{a}"}'},
                ],
                "answer": "{a}: {result[0]}; {b}: {result[1]}; time {result[get_time]}; "
                "last weather {result[get_weather]}; latest {result}; unknown {result[nope]}",
                "answer_reasoning": "Got {results}",
            }
        ]
    )
    tools = (GET_WEATHER, {"name": "get_time"})  # specs may also be plain mappings
    asked = [Message("user", "compare Rome and Lima")]
    evs = await events(provider, request(asked, tools))
    heads = [e for e in evs if isinstance(e, ToolCallDelta) and e.name]
    assert [(h.index, h.id, h.name) for h in heads] == [
        (0, "call_1", "get_weather"),
        (1, "call_2", "get_weather"),
        (2, "call_3", "get_time"),
    ]
    calls = finish_of(evs).tool_calls
    for index, call in enumerate(calls):
        pieces = [e.arguments for e in evs if isinstance(e, ToolCallDelta) and e.index == index]
        assert "".join(pieces) == call.arguments
    assert [json.loads(c.arguments) for c in calls] == [
        {"city": "Rome"},
        {"city": "Lima"},
        {"zone": "Rome"},
    ]
    assert text_of(evs) == ""  # no response text: the calls come straight away

    history = [*asked, *results_for(calls, "sunny", "foggy", "14:00")]
    evs = await events(provider, request(history, tools))
    assert text_of(evs) == (
        "Rome: sunny; Lima: foggy; time 14:00; last weather foggy; latest 14:00; "
        "unknown {result[nope]}"
    )
    assert reasoning_of(evs) == "Got sunny\nfoggy\n14:00"


async def test_a_tool_message_without_a_name_is_matched_to_its_call_by_id() -> None:
    provider = MockProvider([WEATHER])
    asked = [Message("user", "weather in Quito")]
    calls = finish_of(await events(provider, request(asked))).tool_calls
    history = [
        *asked,
        Message("assistant", "", tool_calls=tuple(calls)),
        Message("tool", "mild", tool_call_id=calls[0].id),
    ]
    scenario = Scenario(
        tool_calls=(ScriptedCall("get_weather", {"city": "{city}"}),),
        answer="{result[get_weather]}",
    )
    evs = await events(MockProvider([scenario]), request(history))
    assert text_of(evs) == "mild"


@pytest.mark.parametrize(
    ("tools", "tool_choice"),
    [
        pytest.param((), None, id="no-tools-offered"),
        pytest.param((ToolSpec("something_else"),), "auto", id="another-tool-offered"),
        pytest.param((GET_WEATHER,), "none", id="tool-choice-none"),
    ],
)
async def test_without_its_tools_the_scenario_answers_in_text(
    tools: tuple[ToolSpec, ...], tool_choice: str | None
) -> None:
    scenario = {**WEATHER, "without_tools": "No weather tool, no forecast for {city}."}
    provider = MockProvider([scenario])
    evs = await events(provider, request([Message("user", "weather in Lima")], tools, tool_choice))
    assert text_of(evs) == "No weather tool, no forecast for Lima."
    assert finish_of(evs).reason == "stop" and finish_of(evs).tool_calls == ()
    assert not any(isinstance(e, ToolCallDelta) for e in evs)
    assert reasoning_of(evs) == "I need the weather in Lima."

    # without `without_tools`, the response text is the answer
    evs = await events(
        MockProvider([WEATHER]), request([Message("user", "weather in Lima")], tools, tool_choice)
    )
    assert text_of(evs) == "Let me check." and finish_of(evs).tool_calls == ()


async def test_tool_choice_none_after_results_gets_the_answer() -> None:
    """What a pipeline sends after its last allowed round: the results, tool_choice="none"."""
    provider = MockProvider([{**WEATHER, "rounds": 5}])
    asked = [Message("user", "weather in Kyiv")]
    calls = finish_of(await events(provider, request(asked))).tool_calls
    history = [*asked, *results_for(calls, "windy")]
    evs = await events(provider, request(history, tool_choice="none"))
    assert text_of(evs) == "In Kyiv it is windy." and finish_of(evs).tool_calls == ()


async def test_rounds_repeat_the_calls_with_fresh_ids_then_answer() -> None:
    provider = MockProvider([{**WEATHER, "rounds": 3, "answer": "{results}"}])
    history: list[Message] = [Message("user", "weather in Bern")]
    seen_ids = []
    for round_number in range(1, 4):
        evs = await events(provider, request(history))
        finish = finish_of(evs)
        assert finish.reason == "tool_calls", round_number
        assert text_of(evs) == ("Let me check." if round_number == 1 else "")
        seen_ids += [c.id for c in finish.tool_calls]
        history += results_for(finish.tool_calls, f"reading {round_number}")
    assert seen_ids == ["call_1", "call_2", "call_3"]
    evs = await events(provider, request(history))
    assert finish_of(evs).tool_calls == ()
    assert text_of(evs) == "reading 1\nreading 2\nreading 3"


async def test_call_ids_stay_unique_across_the_turns_of_a_conversation() -> None:
    provider = MockProvider([WEATHER])
    history: list[Message] = [Message("user", "weather in Bern")]
    first = finish_of(await events(provider, request(history))).tool_calls
    history += [*results_for(first, "cold"), Message("assistant", "In Bern it is cold.")]
    history.append(Message("user", "and the weather in Rome?"))
    second = finish_of(await events(provider, request(history))).tool_calls
    assert [c.id for c in first] == ["call_1"] and [c.id for c in second] == ["call_2"]
    assert json.loads(second[0].arguments)["city"] == "Rome"


async def test_max_tokens_cuts_the_text_before_the_calls() -> None:
    scenario = {**WEATHER, "response": "one two three four five six"}
    evs = await events(
        MockProvider([scenario]), request([Message("user", "weather in Lima")], max_tokens=3)
    )
    finish = finish_of(evs)
    assert finish.reason == "length" and finish.tool_calls == ()
    assert not any(isinstance(e, ToolCallDelta) for e in evs)


async def test_reasoning_and_calls_are_paced_like_text() -> None:
    provider = MockProvider([WEATHER], chunk_delay=0.01)
    evs = []
    stamps = []
    async for event in provider.stream(request([Message("user", "weather in Lima")])):
        evs.append(event)
        stamps.append(time.monotonic())
    # every event after the first waits one chunk_delay (Finish excepted)
    assert stamps[-2] - stamps[0] >= 0.01 * (len(evs) - 2) * 0.9


def test_tool_scenarios_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(
        """
scenarios:
  - match: 'weather in (?P<city>\\w+)'
    tool_calls:
      - name: get_weather
        arguments: {city: "{city}"}
    answer: "{city}: {result}"
""",
        encoding="utf-8",
    )
    provider = MockProvider.from_file(path)
    (scenario,) = provider.scenarios
    assert scenario.tool_calls[0].name == "get_weather"
    assert scenario.response == "" and scenario.rounds == 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tool_calls": [{"arguments": {}}]}, "needs a 'name'"),
        ({"tool_calls": [{"name": "f", "args": {}}]}, "nothing else"),
        ({"tool_calls": [{"name": "f", "arguments": 3}]}, "mapping or a JSON text"),
        ({"tool_calls": "get_weather"}, "must be a list"),
        ({"tool_calls": [{"name": "f"}], "rounds": 0}, "rounds must be a positive integer"),
        ({"match": "x"}, "has no 'response'"),
        ({"response": "x", "tool_call": []}, "unknown keys"),
    ],
)
def test_bad_tool_scenarios_say_what_is_wrong(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Scenario.from_dict(data)


async def test_the_demo_calls_get_weather_and_answers_from_its_result() -> None:
    provider = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    asked = [Message("user", "Should I take an umbrella in Paris?")]
    evs = await events(provider, request(asked))
    assert "get_weather" in reasoning_of(evs)
    (call,) = finish_of(evs).tool_calls
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}

    history = [*asked, *results_for((call,), "Light rain, 14 °C")]
    evs = await events(provider, request(history))
    assert "Paris" in text_of(evs) and "Light rain, 14 °C" in text_of(evs)
    assert "Light rain, 14 °C" in reasoning_of(evs)
    assert finish_of(evs).tool_calls == ()

    # the same prompt without the tool explains how to give it one
    evs = await events(provider, request(asked, tools=()))
    assert "tools=[get_weather]" in text_of(evs) and finish_of(evs).tool_calls == ()


async def test_the_demo_compares_two_cities_with_parallel_calls() -> None:
    provider = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    asked = [Message("user", "Compare the weather in New York and Tokyo today")]
    calls = finish_of(await events(provider, request(asked))).tool_calls
    assert [json.loads(c.arguments)["city"] for c in calls] == ["New York", "Tokyo"]
    history = [*asked, *results_for(calls, "clear", "humid")]
    text = text_of(await events(provider, request(history)))
    assert "| New York | clear |" in text and "| Tokyo | humid |" in text


@pytest.mark.parametrize(
    ("prompt", "city"),
    [
        ("Should I take an umbrella in Paris?", "Paris"),
        ("What's the weather in New York today?", "New York"),
        ("weather in Rio de Janeiro", "Rio de Janeiro"),
        ("Will I need a raincoat in Lisbon, do you think?", "Lisbon"),
        ("Is it raining in Paris right now?", "Paris"),
        ("What is the forecast in Rio de Janeiro next week?", "Rio de Janeiro"),
    ],
)
async def test_the_demo_weather_prompts_find_the_city(prompt: str, city: str) -> None:
    provider = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    (call,) = finish_of(await events(provider, request([Message("user", prompt)]))).tool_calls
    assert json.loads(call.arguments) == {"city": city}


# --- through the pipeline's tool loop ----------------------------------------------------


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"light rain over {city}, 14 °C"


async def test_the_demo_runs_a_whole_tool_turn_in_the_pipeline() -> None:
    provider = MockProvider.demo(chunk_delay=0, first_chunk_delay=0)
    async with Pipeline(ProviderMiddleware(provider)) as pipe:
        kinds: list[str] = []
        async with pipe.stream(
            "Should I take an umbrella in Paris?", session="trip", tools=[get_weather]
        ) as stream:
            async for chunk in stream:
                if chunk.tool is not None:
                    kinds.append(chunk.tool.kind)
        result = stream.result
        history = await pipe.state_store.load("trip")
    assert result.complete and result.model_calls == 2
    assert "light rain over Paris, 14 °C" in result.text
    assert "get_weather" in result.reasoning
    assert kinds[0] == "start" and kinds.count("arguments") > 1
    assert kinds[-3:] == ["call", "running", "result"]
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[1].tool_calls[0].id == history[2].tool_call_id == "call_1"


async def test_a_scenario_with_many_rounds_reaches_max_tool_rounds() -> None:
    scenario = {
        "match": r"weather in (?P<city>\w+)",
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "{city}"}}],
        "rounds": 10,
        "answer": "Done after {results}",
    }
    provider = MockProvider([scenario])
    async with Pipeline(ProviderMiddleware(provider)) as pipe:
        result = await pipe.execute(
            "user", "weather in Oslo", tools=[get_weather], max_tool_rounds=2
        )
    assert [c.request.tool_choice for c in provider.calls] == [None, None, "none"]
    assert result.complete and len(result.tool_results) == 2
    assert result.text == "Done after light rain over Oslo, 14 °C\nlight rain over Oslo, 14 °C"


@pytest.mark.parametrize(
    "prompt",
    [
        "Write a haiku about autumn rain",
        "Describe autumn rain. Then tell me what is in Paris",
        "Describe autumn rain with this structure: {topic}",
        "Plan a day in Paris",
    ],
)
def test_other_demo_prompts_do_not_call_tools(prompt: str) -> None:
    provider = MockProvider.demo()
    plan = provider.plan(request([Message("user", prompt)]))
    assert plan.tool_calls == ()
    assert plan.scenario is None or not (plan.scenario.name or "").startswith("weather")
