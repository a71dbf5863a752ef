"""The tool loop inside one turn: rounds, concurrency, errors, Stop, history, usage.

A small scripted provider plays the model here (what it is sent is recorded), so
each test controls exactly which calls come back; the HTTP dialects are tested
against the fake server in tests/providers/test_tool_loop_dialects.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Literal

import pytest

from pk_notebook import (
    ConfigurationError,
    Delta,
    Finish,
    HistoryLimit,
    Message,
    Pipeline,
    StreamStatus,
    ToolCall,
    ToolCallDelta,
    Usage,
    tool,
)
from pk_notebook.runtime.tools import ToolSpec


class Model:
    """Answers from a script: each step is text, or a list of (name, arguments) calls."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, *steps: Any, reasoning: str = "") -> None:
        self.steps = list(steps)
        self.requests: list[Any] = []
        self.reasoning = reasoning

    async def stream(self, request: Any):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        step = self.steps.pop(0) if self.steps else "done"
        if self.reasoning:
            yield Delta(reasoning=self.reasoning)
        if isinstance(step, str):
            for word in step.split(" "):
                yield Delta(word + " ")
            yield Finish("stop", Usage(10, 5))
            return
        calls = []
        for i, (name, arguments) in enumerate(step):
            text = json.dumps(arguments)
            call_id = f"c{len(self.requests)}_{i}"
            yield ToolCallDelta(i, call_id, name)
            yield ToolCallDelta(i, arguments=text[: len(text) // 2])
            yield ToolCallDelta(i, arguments=text[len(text) // 2 :])
            calls.append(ToolCall(call_id, name, text))
        yield Finish("tool_calls", Usage(10, 5), tuple(calls))

    async def aclose(self) -> None:
        pass


def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """Current weather for a city."""
    return f"{city}: rain, 12 {unit}"


async def test_a_tool_round_runs_the_function_and_sends_its_result_back() -> None:
    model = Model([("get_weather", {"city": "Paris"})], "Take an umbrella.")
    async with Pipeline(model) as pipe:
        kinds: list[str] = []
        async with pipe.stream("Umbrella in Paris?", tools=[get_weather]) as stream:
            async for chunk in stream:
                if chunk.tool is not None:
                    kinds.append(chunk.tool.kind)
        result = stream.result
    assert result.status is StreamStatus.FINISHED
    assert kinds == ["start", "arguments", "arguments", "call", "running", "result"]
    assert result.text == "Take an umbrella. "
    assert [r.output for r in result.tool_results] == ["Paris: rain, 12 C"]
    assert result.tool_results[0].status == "ok"
    assert result.model_calls == 2
    assert result.usage == Usage(20, 10)  # both model calls
    second = model.requests[1]
    assistant, tool_message = second.messages[-2:]
    assert assistant.tool_calls[0].name == "get_weather"
    assert tool_message.role == "tool" and tool_message.tool_call_id == "c1_0"
    assert tool_message.content == "Paris: rain, 12 C" and not tool_message.is_error
    assert second.tools[0].name == "get_weather"
    assert second.tools[0].parameters["properties"]["unit"]["enum"] == ["C", "F"]


async def test_parallel_calls_run_concurrently() -> None:
    async def slow(n: int) -> int:
        await asyncio.sleep(0.3)
        return n * 2

    model = Model([("slow", {"n": 1}), ("slow", {"n": 2}), ("slow", {"n": 3})], "ok")
    async with Pipeline(model) as pipe:
        started = time.monotonic()
        result = await pipe.execute("user", "go", tools=[slow])
        elapsed = time.monotonic() - started
    assert [r.output for r in result.tool_results] == ["2", "4", "6"]
    assert elapsed < 0.8  # three 0.3 s calls, concurrently


async def test_a_raising_tool_goes_back_to_the_model_as_an_error() -> None:
    def broken(x: int) -> str:
        raise ValueError("the sensor is offline")

    model = Model([("broken", {"x": 1})], "Sorry, the sensor is offline.")
    async with Pipeline(model) as pipe:
        result = await pipe.execute("user", "read it", tools=[broken])
    assert result.complete
    assert result.tool_results[0].status == "error"
    sent = model.requests[1].messages[-1]
    assert sent.is_error and "ValueError: the sensor is offline" in sent.content


async def test_invalid_arguments_are_a_tool_error_the_model_can_correct() -> None:
    model = Model([("get_weather", {"town": "Paris"})], [("get_weather", {"city": "Paris"})], "ok")
    async with Pipeline(model) as pipe:
        result = await pipe.execute("user", "weather", tools=[get_weather])
    first, second = result.tool_results
    assert first.status == "error" and "city: Field required" in first.output
    assert second.status == "ok"
    assert result.model_calls == 3


async def test_max_tool_rounds_asks_for_text_then_stops_running_tools() -> None:
    loop_forever = [("get_weather", {"city": "Paris"})]
    model = Model(loop_forever, loop_forever, loop_forever)
    async with Pipeline(model) as pipe:
        result = await pipe.execute("user", "weather", tools=[get_weather], max_tool_rounds=2)
    assert [r.tool_choice for r in model.requests] == [None, None, "none"]
    assert len(result.tool_results) == 2  # the third answer's calls were not run
    assert result.finish_reason == "tool_calls"
    assert any("max_tool_rounds" in w for w in result.warnings)


async def test_denied_calls_are_reported_to_the_model() -> None:
    seen: list[ToolCall] = []

    async def approve(call: ToolCall) -> bool:
        seen.append(call)
        return False

    model = Model([("get_weather", {"city": "Paris"})], "I could not check.")
    async with Pipeline(model) as pipe:
        result = await pipe.execute_with_context(
            "d", "user", "weather", tools=[get_weather], approve=approve
        )
        stored = await pipe.state_store.load("d")
    assert seen[0].name == "get_weather"
    assert result.tool_results[0].status == "denied"
    assert model.requests[1].messages[-1].is_error
    assert stored[2].status == "denied"  # a reloaded transcript still says denied


async def test_unknown_tool_name_is_a_tool_error() -> None:
    model = Model([("get_wether", {"city": "Paris"})], "ok")
    async with Pipeline(model) as pipe:
        result = await pipe.execute("user", "weather", tools=[get_weather])
    assert result.tool_results[0].status == "error"
    assert "no tool named 'get_wether'" in result.tool_results[0].output


async def test_a_call_to_a_tool_without_a_function_ends_the_turn_for_the_caller() -> None:
    spec = ToolSpec("lookup", "Look something up", {"type": "object", "properties": {}})
    model = Model([("lookup", {})])
    async with Pipeline(model) as pipe:
        result = await pipe.execute("user", "find it", tools=[spec])
    assert result.finish_reason == "tool_calls"
    assert [c.name for c in result.tool_calls] == ["lookup"]
    assert result.tool_results == () and len(model.requests) == 1


async def test_the_caller_sends_its_tool_result_and_the_session_goes_on() -> None:
    spec = ToolSpec("lookup", "Look something up", {"type": "object", "properties": {}})
    model = Model([("lookup", {})], "Found: 42.", "Still 42.")
    async with Pipeline(model) as pipe:
        first = await pipe.execute_with_context("s1", "user", "find it", tools=[spec])
        call = first.tool_calls[0]
        saved = await pipe.state_store.load("s1")
        # the session holds the call its result will answer
        assert saved[-1].role == "assistant" and saved[-1].tool_calls == (call,)
        reply = Message("tool", "42", tool_call_id=call.id, name="lookup")
        async with pipe.stream(reply, session="s1", tools=[spec]) as stream:
            second = await stream.collect()
        third = await pipe.execute_with_context("s1", "user", "and now?", tools=[spec])
    assert second.text.strip() == "Found: 42." and third.text.strip() == "Still 42."
    sent = model.requests[1].messages
    assert [(m.role, m.tool_call_id) for m in sent[-2:]] == [("assistant", None), ("tool", call.id)]
    assert sent[-2].tool_calls == (call,)
    # nothing made up: the real result, once, and no stand-in in the next request
    assert [m.content for m in model.requests[2].messages if m.role == "tool"] == ["42"]


async def test_a_call_left_without_a_result_gets_one_in_the_request_not_the_session() -> None:
    spec = ToolSpec("lookup", "Look something up", {"type": "object", "properties": {}})
    model = Model([("lookup", {})], "Fine, without it.")
    async with Pipeline(model) as pipe:
        first = await pipe.execute_with_context("s1", "user", "find it", tools=[spec])
        # the caller never runs the call and asks something else
        await pipe.execute_with_context("s1", "user", "never mind", tools=[spec])
        saved = await pipe.state_store.load("s1")
    sent = model.requests[1].messages
    roles = [m.role for m in sent]
    assert roles == ["user", "assistant", "tool", "user"]
    stand_in = sent[2]
    assert stand_in.tool_call_id == first.tool_calls[0].id and stand_in.is_error
    assert "No result was given" in stand_in.content
    assert [m.role for m in saved] == ["user", "assistant", "user", "assistant"]


async def test_stop_during_an_async_tool_cancels_it_and_saves_a_consistent_turn() -> None:
    cancelled = asyncio.Event()

    async def slow_search(query: str) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    model = Model([("slow_search", {"query": "x"})], "unused")
    async with Pipeline(model) as pipe:
        stream = pipe.stream("search", session="s1", tools=[slow_search])
        async with stream:
            async for chunk in stream:
                if chunk.tool is not None and chunk.tool.kind == "running":
                    stream.stop()
        result = stream.result
        await asyncio.wait_for(cancelled.wait(), 2)
        history = await pipe.state_store.load("s1")
    assert result.status is StreamStatus.STOPPED
    assert result.tool_results[0].status == "stopped"
    assert [m.role for m in history] == ["user", "assistant", "tool"]
    assert history[1].tool_calls[0].id == history[2].tool_call_id
    assert history[2].is_error and history[2].status == "stopped"


async def test_stop_during_a_sync_tool_abandons_its_thread_at_once() -> None:
    release = threading.Event()

    def blocking(seconds: float) -> str:
        release.wait(seconds)
        return "late"

    model = Model([("blocking", {"seconds": 10})], "unused")
    async with Pipeline(model) as pipe:
        stream = pipe.stream("block", tools=[blocking])
        async with stream:
            async for chunk in stream:
                if chunk.tool is not None and chunk.tool.kind == "running":
                    stopped_at = time.monotonic()
                    stream.stop()
        assert time.monotonic() - stopped_at < 0.5  # the loop did not wait for the thread
        release.set()
    result = stream.result
    assert result.status is StreamStatus.STOPPED
    assert result.tool_results[0].status == "abandoned"


async def test_a_slow_tool_is_not_an_idle_timeout_but_the_total_timeout_holds() -> None:
    async def slow() -> str:
        await asyncio.sleep(0.4)
        return "ok"

    model = Model([("slow", {})], "fine")
    async with Pipeline(model, idle_timeout=0.2) as pipe:
        result = await pipe.execute("user", "go", tools=[slow])
        assert result.complete

        async def slower() -> str:
            await asyncio.sleep(5)
            return "no"

        model.steps = [[("slower", {})]]
        stream = pipe.stream("go", tools=[slower], timeout=0.5)
        with pytest.raises(Exception) as info:
            await stream.collect()
    assert stream.result.status is StreamStatus.TIMED_OUT
    assert "deadline" in str(info.value)
    assert stream.result.tool_results[0].status == "stopped"


async def test_session_history_replays_tool_rounds_and_limits_never_split_them() -> None:
    model = Model([("get_weather", {"city": "Paris"})], "Umbrella.", "Second.", "Third.")
    async with Pipeline(model) as pipe:
        await pipe.execute_with_context("trip", "user", "Paris?", tools=[get_weather])
        stored = await pipe.state_store.load("trip")
        assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
        await pipe.execute_with_context("trip", "user", "And now?")
        # the whole first turn is replayed, calls and results included
        assert [m.role for m in model.requests[-1].messages] == [
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
        ]
    # A window of 3 of the stored messages would open on the call (or its result):
    # it opens on the next user message instead.
    limit = HistoryLimit(max_messages=4)
    window = limit.apply([*stored, Message("user", "And now?"), Message("assistant", "x")])
    assert [m.role for m in window] == ["user", "assistant"]
    window = HistoryLimit(max_messages=3).apply(stored)
    assert window == []
    window = HistoryLimit(max_messages=5).apply([Message("system", "s"), *stored])
    assert [m.role for m in window] == ["system", "user", "assistant", "tool", "assistant"]


async def test_reasoning_is_kept_per_round_in_the_history() -> None:
    model = Model([("get_weather", {"city": "Oslo"})], "Cold.", reasoning="thinking...")
    async with Pipeline(model) as pipe:
        async with pipe.stream("Oslo?", session="r", tools=[get_weather]) as stream:
            reasoning = [c.reasoning async for c in stream if c.reasoning]
        stored = await pipe.state_store.load("r")
    assert reasoning == ["thinking...", "thinking..."]
    assert stream.result.reasoning == "thinking...thinking..."
    assert stored[1].reasoning == "thinking..." and stored[-1].reasoning == "thinking..."
    assert stored[-1].content == "Cold. "


def test_a_function_that_cannot_be_described_is_refused_when_the_turn_is_built() -> None:
    def bad(lock: threading.Lock) -> None: ...

    pipe = Pipeline(Model())
    with pytest.raises(ConfigurationError, match="parameter 'lock'"):
        pipe.stream("x", tools=[bad])
    with pytest.raises(ConfigurationError, match="max_tool_rounds"):
        pipe.stream("x", tools=[get_weather], max_tool_rounds=0)


def test_tool_schema_and_description_come_from_hints_and_docstring() -> None:
    def search(query: str, limit: int = 5) -> list[str]:
        """Search the docs.

        Args:
            query: words to look for.
            limit: how many hits at most.
        """
        return []

    made = tool(search)
    assert made.description == "Search the docs."
    props = made.parameters["properties"]
    assert props["query"] == {"type": "string", "description": "words to look for."}
    assert props["limit"]["default"] == 5 and props["limit"]["type"] == "integer"
    assert made.parameters["required"] == ["query"]


def test_messages_with_tool_parts_survive_a_dict_round_trip() -> None:
    message = Message(
        "assistant",
        "",
        tool_calls=(ToolCall("1", "f", '{"a": 1}', signature="sig"),),
        reasoning="hm",
        reasoning_blocks=({"provider": "anthropic", "type": "thinking", "signature": "s"},),
    )
    again = Message.from_dict(json.loads(json.dumps(message.to_dict())))
    assert again == message
    assert again.tool_calls[0].signature == "sig"
    assert again.reasoning_blocks[0]["signature"] == "s"
