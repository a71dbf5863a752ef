"""Reasoning and tool calls on the web, against a real uvicorn.

The provider is a small scripted one (below): its first model call thinks and
calls a tool, and once the request ends with a tool result it thinks again and
answers from that result. SSE and WebSocket clients see the reasoning and tool
events; the official ``openai`` SDK sees ``reasoning_content`` and, for its own
tools, ``tool_calls`` it runs itself; the server's tools stay the server's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import aconnect_sse
from openai import AsyncOpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from websockets.asyncio.client import connect

from pk_notebook.providers import MockProvider
from pk_notebook.runtime import ConfigurationError
from pk_notebook.runtime.tools import spec_from_dict
from pk_notebook.runtime.types import (
    Delta,
    Finish,
    Message,
    Request,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from pk_notebook.web.cli import build_parser
from pk_notebook.web.tools import ServerTools, load_tools

from .conftest import make_pipeline, wait_for

CALL_ID = "call_abc123"
ARGUMENTS = '{"city": "Paris"}'
THINKING_1 = ["The user asks about rain. ", "I should check the weather."]
THINKING_2 = ["The tool says ", "rain."]


def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: the city's name.
    """
    return f"Rain, 12 C in {city}"


def broken_weather(city: str) -> str:
    """Current weather for a city (always fails)."""
    raise ValueError(f"no weather station in {city}")


LOOKUP: Any = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a city's weather up on the client.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


class ToolScript:
    """Calls ``tool`` on the first model call, answers from the tool's result after.

    Thinking streams as ``Delta(reasoning=...)``, the call as ``ToolCallDelta``
    fragments (the id and name, then the arguments in two pieces) and a
    ``Finish(tool_calls=...)``. Every request is kept for the tests to inspect.
    """

    name = "script"
    model = "script-1"

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.requests: list[Request] = []

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        self.requests.append(request)
        last = request.messages[-1]
        if last.role == "tool":
            for piece in THINKING_2:
                yield Delta(reasoning=piece)
            for piece in ("It says: ", last.content, "."):
                yield Delta(text=piece)
            yield Finish("stop", Usage(20, 6))
            return
        for piece in THINKING_1:
            yield Delta(reasoning=piece)
        yield Delta(text="Let me check. ")
        yield ToolCallDelta(0, id=CALL_ID, name=self.tool)
        yield ToolCallDelta(0, arguments='{"city": ')
        yield ToolCallDelta(0, arguments='"Paris"}')
        yield Finish(
            "tool_calls", Usage(10, 4), tool_calls=[ToolCall(CALL_ID, self.tool, ARGUMENTS)]
        )

    async def aclose(self) -> None:
        return None


def client_for(live: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=10)


def tool_names(request: Request) -> list[str]:
    return [spec.name for spec in request.tools]


# --- SSE and WebSocket ---------------------------------------------------------------------


async def sse_events(live: Any, body: dict[str, Any]) -> list[tuple[str, Any]]:
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        async with aconnect_sse(client, "POST", "/stream", json=body) as source:
            assert source.response.status_code == 200
            return [
                (sse.event, sse.data if sse.data == "[DONE]" else json.loads(sse.data))
                async for sse in source.aiter_sse()
            ]


async def test_sse_carries_reasoning_and_tool_events(serve: Any) -> None:
    provider = ToolScript("get_weather")
    live = serve(make_pipeline(provider), tools=[get_weather])
    events = await sse_events(live, {"prompt": "Umbrella in Paris?"})

    names = [name for name, _ in events]
    tools = [data for name, data in events if name == "tool"]
    assert [t["kind"] for t in tools] == [
        "start",
        "arguments",
        "arguments",
        "call",
        "running",
        "result",
    ]
    # Round 1 thinks, says a word, calls; round 2 thinks and answers; then the result.
    first_tool = names.index("tool")
    assert names[:first_tool] == ["start", "reasoning", "reasoning", "chunk"]
    last_tool = len(names) - 1 - names[::-1].index("tool")
    assert names[last_tool + 1 :] == ["reasoning"] * 2 + ["chunk"] * 3 + ["result", "message"]
    assert events[-1][1] == "[DONE]"

    reasoning = "".join(data["text"] for name, data in events if name == "reasoning")
    assert reasoning == "".join(THINKING_1 + THINKING_2)
    text = "".join(data["content"] for name, data in events if name == "chunk")
    assert text == "Let me check. It says: Rain, 12 C in Paris."
    indexes = [data["index"] for name, data in events if name in ("reasoning", "chunk")]
    assert indexes == sorted(indexes)

    start, piece, _, call, running, done = tools
    assert {k: start[k] for k in ("call_id", "name", "index", "round")} == {
        "call_id": CALL_ID,
        "name": "get_weather",
        "index": 0,
        "round": 1,
    }
    assert "output" not in start and "duration" not in start
    assert piece["delta"] == '{"city": ' and piece["arguments"] == '{"city": '
    assert call["arguments"] == ARGUMENTS
    assert running["call_id"] == CALL_ID
    assert done["output"] == "Rain, 12 C in Paris"
    assert isinstance(done["duration"], float) and done["duration"] >= 0

    result = events[-2][1]
    assert result["status"] == "finished" and result["text"] == text
    assert result["reasoning"] == reasoning
    assert result["model_calls"] == 2
    assert result["usage"]["input_tokens"] == 30 and result["usage"]["output_tokens"] == 10
    assert result["tool_calls"] == [{"id": CALL_ID, "name": "get_weather", "arguments": ARGUMENTS}]
    [tool_result] = result["tool_results"]
    assert tool_result["status"] == "ok" and tool_result["output"] == "Rain, 12 C in Paris"
    assert tool_result["call"]["id"] == CALL_ID

    # The server's tool was offered on both calls, and its result went back to the model.
    assert [tool_names(r) for r in provider.requests] == [["get_weather"], ["get_weather"]]
    second = provider.requests[1].messages
    assert [m.role for m in second] == ["user", "assistant", "tool"]
    assert second[1].tool_calls[0].id == CALL_ID
    assert second[2].tool_call_id == CALL_ID and second[2].content == "Rain, 12 C in Paris"


async def test_sse_tool_error_is_an_event_not_a_failure(serve: Any) -> None:
    live = serve(make_pipeline(ToolScript("broken_weather")), tools=[broken_weather])
    events = await sse_events(live, {"prompt": "Umbrella in Paris?"})
    tools = [data for name, data in events if name == "tool"]
    assert tools[-1]["kind"] == "error"
    assert "no weather station in Paris" in tools[-1]["output"]
    result = events[-2][1]
    assert result["status"] == "finished"
    assert result["tool_results"][0]["status"] == "error"
    assert "no weather station in Paris" in result["text"]  # the model was told


async def test_websocket_carries_reasoning_and_tool_messages(serve: Any) -> None:
    live = serve(make_pipeline(ToolScript("get_weather")), tools=[get_weather])
    messages = []
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "Umbrella in Paris?", "session": "tools-ws"}))
        while True:
            message = json.loads(await ws.recv())
            messages.append(message)
            if message["type"] in ("result", "error"):
                break
    assert {k: messages[0][k] for k in ("type", "id")} == {"type": "start", "id": 1}
    assert {m["id"] for m in messages} == {1}
    types = [m["type"] for m in messages]
    assert types[1:4] == ["reasoning", "reasoning", "chunk"]
    assert types[-1] == "result"
    tools = [m for m in messages if m["type"] == "tool"]
    assert [t["kind"] for t in tools] == [
        "start",
        "arguments",
        "arguments",
        "call",
        "running",
        "result",
    ]
    assert tools[0]["call_id"] == CALL_ID and tools[0]["name"] == "get_weather"
    assert tools[-1]["output"] == "Rain, 12 C in Paris"
    reasoning = "".join(m["text"] for m in messages if m["type"] == "reasoning")
    assert reasoning == "".join(THINKING_1 + THINKING_2)
    result = messages[-1]["result"]
    assert result["text"] == "".join(m["content"] for m in messages if m["type"] == "chunk")
    assert result["tool_results"][0]["output"] == "Rain, 12 C in Paris"
    # The session keeps the whole turn, tool messages included.
    history = live.call(live.pipe.state_store.load("tools-ws"))
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]


async def test_sse_disconnect_during_a_server_tool_cancels_it(serve: Any) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def slow_lookup(city: str) -> str:
        """Takes its time."""
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            cancelled.set()
        return "never"

    # resume_grace=0: leaving stops the answer at once (with a grace, after it).
    live = serve(make_pipeline(ToolScript("slow_lookup")), tools=[slow_lookup], resume_grace=0)
    kinds = []
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        body = {"prompt": "Umbrella in Paris?", "session": "stop-tool"}
        async with aconnect_sse(client, "POST", "/stream", json=body) as source:
            async for sse in source.aiter_sse():
                if sse.event == "tool":
                    kinds.append(json.loads(sse.data)["kind"])
                    if kinds[-1] == "running":
                        break  # the client leaves while the tool runs
    assert kinds[-2:] == ["call", "running"] and started.is_set()
    assert wait_for(cancelled.is_set, 5.0)
    assert wait_for(lambda: live.pipe.active_streams == 0, 5.0)
    history = live.call(live.pipe.state_store.load("stop-tool"))
    tool_messages = [m for m in history if m.role == "tool"]
    assert tool_messages and tool_messages[-1].status == "stopped"


# --- server tools are the server's --------------------------------------------------------


async def test_clients_cannot_choose_server_tools(serve: Any) -> None:
    provider = ToolScript("get_weather")
    live = serve(make_pipeline(provider), tools=[get_weather])
    evil = [{"type": "function", "function": {"name": "run_shell", "parameters": {}}}]
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        for body in (
            {"prompt": "x", "tools": evil},
            {"prompt": "x", "tools": []},  # removing the server's tools: refused too
            {"prompt": "x", "tool_choice": "none"},
            {"prompt": "x", "max_tool_rounds": 100},
        ):
            response = await client.post("/stream", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"]["type"] == "ToolsNotAllowed"
        response = await client.get("/stream", params={"prompt": "x", "tools": "run_shell"})
        assert response.status_code == 422
        assert response.json()["error"]["type"] == "ToolsNotAllowed"
        response = await client.post("/stream", json={"prompt": "x", "options": {"tools": evil}})
        assert response.status_code == 422
    async with connect(live.ws_url) as ws:
        await ws.send(json.dumps({"prompt": "x", "tools": evil}))
        message = json.loads(await ws.recv())
    assert message["type"] == "error" and message["final"] is True
    assert message["error"]["type"] == "ToolsNotAllowed"
    async with client_for(live) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as raised:
            await sdk.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "x"}],
                tools=[{**LOOKUP, "function": {**LOOKUP["function"], "name": "get_weather"}}],
            )
        assert raised.value.body["code"] == "ToolsNotAllowed"
        with pytest.raises(openai.UnprocessableEntityError):
            await sdk.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "x"}],
                tools=[LOOKUP],
                tool_choice="required",
            )
    assert provider.requests == []  # nothing refused ever reached the model


# --- /v1/chat/completions with the official SDK ----------------------------------------


async def test_openai_sdk_runs_its_own_tool_over_a_stream(serve: Any) -> None:
    provider = ToolScript("lookup")
    live = serve(make_pipeline(provider))
    question: Any = {"role": "user", "content": "Umbrella in Paris?"}
    async with client_for(live) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[question],
            tools=[LOOKUP],
            stream=True,
        )
        state = ChatCompletionStreamState()
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            state.handle_chunk(chunk)
        completion = state.get_final_completion()

        assert chunks[0].choices[0].delta.role == "assistant"
        reasoning = "".join(
            (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
            for c in chunks
            if c.choices
        )
        assert reasoning == "".join(THINKING_1)
        fragments = [
            c.choices[0].delta.tool_calls
            for c in chunks
            if c.choices and c.choices[0].delta.tool_calls
        ]
        assert len(fragments) == 3  # the name first, then two pieces of arguments
        first = fragments[0][0]
        assert (first.index, first.id, first.type) == (0, CALL_ID, "function")
        assert first.function is not None and first.function.name == "lookup"

        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me check. "
        [call] = choice.message.tool_calls or []
        assert call.id == CALL_ID and call.function.name == "lookup"
        assert json.loads(call.function.arguments) == {"city": "Paris"}

        # The client runs its tool and sends the result back.
        follow_up = [
            question,
            choice.message.model_dump(include={"role", "content", "tool_calls"}),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 25 C"},
        ]
        stream = await client.chat.completions.create(
            model="m",
            messages=follow_up,
            tools=[LOOKUP],
            stream=True,
        )
        state = ChatCompletionStreamState()
        async for chunk in stream:
            state.handle_chunk(chunk)
        final = state.get_final_completion().choices[0]
    assert final.finish_reason == "stop"
    assert final.message.content == "It says: Sunny, 25 C."
    assert not final.message.tool_calls

    # The client's tool was offered, never run here; its history reached the model whole.
    assert [tool_names(r) for r in provider.requests] == [["lookup"], ["lookup"]]
    sent = provider.requests[1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].content == "Let me check. "
    assert sent[1].tool_calls == (ToolCall(CALL_ID, "lookup", ARGUMENTS),)
    assert sent[2] == Message("tool", "Sunny, 25 C", tool_call_id=CALL_ID, name="lookup")


async def test_openai_sdk_with_the_mock_demo_weather_scenario(serve: Any) -> None:
    live = serve(MockProvider.demo(chunk_delay=0, first_chunk_delay=0))
    weather: Any = {**LOOKUP, "function": {**LOOKUP["function"], "name": "get_weather"}}
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Lisbon right now?"}]
    async with client_for(live) as client:
        async with client.chat.completions.stream(
            model="m", messages=messages, tools=[weather]
        ) as stream:
            first = await stream.get_final_completion()
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Lisbon"}
        messages += [
            choice.message.model_dump(include={"role", "content", "tool_calls"}),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 25 C"},
        ]
        async with client.chat.completions.stream(
            model="m", messages=messages, tools=[weather]
        ) as stream:
            final = (await stream.get_final_completion()).choices[0]
    assert final.finish_reason == "stop" and not final.message.tool_calls
    assert "Sunny, 25 C" in (final.message.content or "")


async def test_openai_sdk_tool_calls_without_streaming(serve: Any) -> None:
    provider = ToolScript("lookup")
    live = serve(make_pipeline(provider))
    question: Any = {"role": "user", "content": "Umbrella in Paris?"}
    async with client_for(live) as client:
        completion = await client.chat.completions.create(
            model="m",
            messages=[question],
            tools=[LOOKUP],
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        [call] = choice.message.tool_calls or []
        assert (call.id, call.type, call.function.name) == (CALL_ID, "function", "lookup")
        assert call.function.arguments == ARGUMENTS
        assert (choice.message.model_extra or {})["reasoning_content"] == "".join(THINKING_1)
        answer = await client.chat.completions.create(
            model="m",
            messages=[
                question,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": CALL_ID, "content": "Snow"},
            ],
            tools=[LOOKUP],
        )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == "It says: Snow."
    assert answer.choices[0].message.tool_calls is None
    assert (answer.choices[0].message.model_extra or {})["reasoning_content"] == "".join(THINKING_2)
    assert answer.usage is not None and answer.usage.prompt_tokens == 20


async def test_openai_server_tools_run_inside_the_turn_unseen(serve: Any) -> None:
    provider = ToolScript("get_weather")
    live = serve(make_pipeline(provider), tools=[get_weather])
    async with client_for(live) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "Umbrella in Paris?"}],
            tools=[LOOKUP],
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check. It says: Rain, 12 C in Paris."
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )
    assert reasoning == "".join(THINKING_1 + THINKING_2)
    # Both kinds were offered to the model; the server ran its own.
    assert tool_names(provider.requests[0]) == ["get_weather", "lookup"]
    assert provider.requests[1].messages[-1].content == "Rain, 12 C in Paris"


async def test_openai_history_is_checked(serve: Any) -> None:
    live = serve(make_pipeline(ToolScript("lookup")))
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        for messages in (
            [{"role": "tool", "content": "no call id"}],
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]},
            ],
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "last"}],
        ):
            response = await client.post(
                "/v1/chat/completions", json={"model": "m", "messages": messages}
            )
            assert response.status_code == 422, messages
            assert response.json()["error"]["type"] == "invalid_request_error"


async def test_openai_tool_choice_none_leaves_the_client_tools_out(serve: Any) -> None:
    provider = ToolScript("lookup")  # it calls "lookup" whatever it is offered
    live = serve(make_pipeline(provider))
    async with client_for(live) as client:
        completion = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            tools=[LOOKUP],
            tool_choice="none",
        )
    assert tool_names(provider.requests[0]) == []
    # A call to a tool nobody offered is not handed to the client as one to run.
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls is None


# --- configuring the server's tools ---------------------------------------------------------


def test_server_tools_are_checked_at_start_up() -> None:
    assert ServerTools.build(None, None).stream_options() == {}
    tools = ServerTools.build([get_weather], 3)
    assert tools.names == {"get_weather"}
    options = tools.stream_options((spec_from_dict(LOOKUP),))
    assert [t.name for t in options["tools"]] == ["get_weather", "lookup"]
    assert options["max_tool_rounds"] == 3
    with pytest.raises(ConfigurationError, match="has no function"):
        ServerTools.build([LOOKUP], None)
    with pytest.raises(ConfigurationError, match="max_tool_rounds"):
        ServerTools.build([get_weather], 0)


def test_serve_tools_option_imports_functions() -> None:
    here = __name__
    args = build_parser().parse_args(
        ["serve", "--tools", f"{here}:get_weather,{here}:broken_weather", "--max-tool-rounds", "2"]
    )
    assert load_tools(args.tools) == [get_weather, broken_weather]
    assert args.max_tool_rounds == 2
    with pytest.raises(ConfigurationError, match="module:function"):
        load_tools(["get_weather"])
    with pytest.raises(ConfigurationError, match="cannot import"):
        load_tools(["no_such_module_here:f"])
    with pytest.raises(ConfigurationError, match="has no 'nope'"):
        load_tools([f"{here}:nope"])


def test_serve_with_a_missing_tool_is_a_one_line_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pk_notebook.web.cli", "serve", "--tools", "no_such_mod:f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "pk-notebook: error: --tools 'no_such_mod:f': cannot import 'no_such_mod' "
        "(No module named 'no_such_mod')"
    )


# --- the demo page ------------------------------------------------------------------------

PANEL = """(which) => {
  const thinking = document.getElementById(which + '-thinking');
  const tools = Array.from(document.getElementById(which + '-tools').children);
  return {
    thinkingShown: !thinking.hidden,
    thinkingOpen: thinking.open,
    thinking: thinking.querySelector('pre').textContent,
    tools: tools.map((li) => [li.dataset.kind, li.textContent]),
    answer: document.getElementById(which + '-output').textContent,
  };
}"""


@pytest.mark.browser
def test_demo_page_shows_thinking_and_tool_calls(serve: Any, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from ..browser.jupyterlab import CHROMIUM, CHROMIUM_ARGS
    from ..conftest import require_binary

    executable = require_binary(CHROMIUM, "apt-get install chromium")
    live = serve(make_pipeline(ToolScript("get_weather")), tools=[get_weather])
    problems: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--disk-cache-dir={tmp_path / 'cache'}"],
        )
        try:
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(live.url + "/")
            page.fill("#prompt", "Umbrella in Paris?")
            page.click("#sse-start")
            page.wait_for_selector('#sse-status[data-state="finished"]')
            page.click("#ws-start")
            page.wait_for_selector('#ws-status[data-state="finished"]')
            panels = [page.evaluate(PANEL, which) for which in ("sse", "ws")]
        finally:
            context.close()
    assert problems == []
    for panel in panels:
        [(kind, line)] = panel.pop("tools")
        assert kind == "result"
        assert line.startswith(f"get_weather({ARGUMENTS})→ Rain, 12 C in Paris  (")
        assert line.endswith(" s)")
        assert panel == {
            "thinkingShown": True,
            "thinkingOpen": False,  # collapsed once the answer started
            "thinking": "".join(THINKING_1 + THINKING_2),
            "answer": "Let me check. It says: Rain, 12 C in Paris.",
        }
