"""``POST /api/chat`` read by the real ``ai`` npm package (and the protocol's details in Python).

``ai_sdk/read_chat.mjs`` uses the package's ``DefaultChatTransport`` (what
``useChat`` posts with) and ``readUIMessageStream`` against the live server and
prints the assembled UIMessage; ``npm ci`` installs the pinned ``ai`` into
``ai_sdk/node_modules`` once (kept between runs). Without node the tests skip,
except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from pk_notebook.providers import Fault

from ..conftest import require_binary
from .conftest import LONG_ANSWER, make_pipeline, scenario_provider, slow_provider
from .test_tools_and_reasoning import (
    ARGUMENTS,
    CALL_ID,
    THINKING_1,
    THINKING_2,
    ToolScript,
    get_weather,
)

HERE = Path(__file__).with_name("ai_sdk")


@pytest.fixture(scope="module")
def node() -> str:
    node = require_binary("node", "install Node.js 18 or later (apt-get install nodejs npm)")
    npm = require_binary("npm", "install npm (apt-get install npm)")
    if not (HERE / "node_modules" / "ai" / "package.json").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return node


def read_chat(node: str, url: str, prompt: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [node, str(HERE / "read_chat.mjs"), url, prompt, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def test_the_ai_package_assembles_text_reasoning_and_tool_parts(node: str, serve: Any) -> None:
    live = serve(make_pipeline(ToolScript("get_weather")), tools=[get_weather])
    out = read_chat(node, live.url, "Umbrella in Paris?")
    assert out["errors"] == []
    message = out["message"]
    assert message["role"] == "assistant"
    parts = message["parts"]
    kinds = [p["type"] for p in parts]
    # Two steps: think, say, call; then think and answer from the tool's result.
    assert kinds == [
        "step-start",
        "reasoning",
        "text",
        "dynamic-tool",
        "step-start",
        "reasoning",
        "text",
    ]
    assert parts[1]["text"] == "".join(THINKING_1) and parts[1]["state"] == "done"
    assert parts[2]["text"] == "Let me check. "
    tool = parts[3]
    assert tool["toolName"] == "get_weather" and tool["state"] == "output-available"
    assert tool["input"] == json.loads(ARGUMENTS)
    assert tool["output"] == "Rain, 12 C in Paris"
    assert parts[5]["text"] == "".join(THINKING_2)
    assert parts[6]["text"] == "It says: Rain, 12 C in Paris." and parts[6]["state"] == "done"
    metadata = message["metadata"]
    assert metadata["status"] == "finished"
    assert metadata["usage"]["inputTokens"] == 30 and metadata["usage"]["outputTokens"] == 10
    assert message["id"] == f"msg-{metadata['answerId']}"


def test_the_ai_package_goes_on_after_a_tool_call_with_an_image(node: str, serve: Any) -> None:
    from .test_ai_sdk_history import PNG, PNG_URL

    script = ToolScript("get_weather")
    live = serve(make_pipeline(script), tools=[get_weather])
    out = read_chat(node, live.url, "Umbrella in Paris?", "again", "And this?", PNG_URL)
    assert out["errors"] == []
    assert [p["type"] for p in out["first"]["parts"]][3] == "dynamic-tool"
    texts = [p["text"] for p in out["message"]["parts"] if p["type"] == "text"]
    assert texts == ["Let me check. ", "It says: Rain, 12 C in Paris."]
    # the second turn's first model call got the first turn whole, then the image
    sent = script.requests[2].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    (call,) = sent[1].tool_calls
    assert (call.id, call.name, json.loads(call.arguments)) == (
        CALL_ID,
        "get_weather",
        json.loads(ARGUMENTS),
    )
    assert sent[1].content == "Let me check. " and sent[1].reasoning == "".join(THINKING_1)
    assert (sent[2].tool_call_id, sent[2].name, sent[2].is_error) == (CALL_ID, "get_weather", False)
    assert sent[2].content == "Rain, 12 C in Paris"
    assert sent[3].content == "It says: Rain, 12 C in Paris."
    assert sent[4].content == "And this?"
    assert [(a.mime_type, a.name, a.data) for a in sent[4].attachments] == [
        ("image/png", "dot.png", PNG)
    ]


def test_the_ai_package_resumes_a_cut_chat(node: str, serve: Any) -> None:
    live = serve(slow_provider(chunk_delay=0.005), resume_grace=3, heartbeat=None)
    out = read_chat(node, live.url, "tell", "cut")
    assert out["errors"] == []
    assert out["cutAt"] and LONG_ANSWER.startswith(out["cutAt"]) and out["cutAt"] != LONG_ANSWER
    texts = [p["text"] for p in out["message"]["parts"] if p["type"] == "text"]
    assert texts == [LONG_ANSWER]
    assert out["message"]["metadata"]["status"] == "finished"


def test_the_ai_package_sees_a_failure_midway(node: str, serve: Any) -> None:
    live = serve(scenario_provider("one two three four", fault=Fault(kind="error", after=2)))
    out = read_chat(node, live.url, "x")
    message = out["message"]
    assert message["metadata"]["status"] == "failed"
    assert out["errors"] and "ProviderError" in out["errors"][0]


# --- the protocol on the wire (no node needed) ----------------------------------------


def ui_body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chat1",
        "messages": [{"id": "u1", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "trigger": "submit-message",
        **extra,
    }


async def test_the_wire_format(serve: Any) -> None:
    live = serve(scenario_provider("Hello, world"))
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        async with aconnect_sse(client, "POST", "/api/chat", json=ui_body("hi")) as source:
            assert source.response.headers["x-vercel-ai-ui-message-stream"] == "v1"
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = [sse async for sse in source.aiter_sse()]
        assert events[-1].data == "[DONE]"
        parts = [json.loads(e.data) for e in events[:-1]]
        assert [p["type"] for p in parts][:3] == ["start", "start-step", "text-start"]
        assert [p["type"] for p in parts][-3:] == ["text-end", "finish-step", "finish"]
        text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
        assert text == "Hello, world"
        assert parts[-1]["finishReason"] == "stop"
        assert (await client.get("/api/chat/nochat/stream")).status_code == 204
        resumed = await client.get("/api/chat/chat1/stream")
        assert resumed.status_code == 200 and resumed.text.endswith("data: [DONE]\n\n")
        assert [e.data for e in events] == [
            line[6:] for line in resumed.text.split("\n") if line.startswith("data: ")
        ]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"messages": []}, "InvalidRequest"),
        ({"messages": [{"role": "assistant", "parts": []}]}, "InvalidRequest"),
        ({"messages": [{"role": "user", "parts": "hi"}]}, "InvalidRequest"),
        ({"messages": [{"role": "system", "parts": [{"type": "text", "text": "x"}]}]}, None),
        (ui_body("hi", tools=[]), "ToolsNotAllowed"),
    ],
)
async def test_bad_requests_are_refused(serve: Any, body: dict[str, Any], kind: str | None) -> None:
    live = serve(scenario_provider("ok"))
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        response = await client.post("/api/chat", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == (kind or "SystemPromptNotAllowed")


def test_each_model_call_is_a_step_even_when_it_starts_with_a_tool_call() -> None:
    from pk_notebook.runtime.types import Chunk, ToolEvent
    from pk_notebook.web.ai_sdk import UIMessageEncoder

    def tool(kind: Any, round: int, **kw: Any) -> Chunk:
        return Chunk("", 0, tool=ToolEvent(kind, f"c{round}", "get_weather", round=round, **kw))

    encoder = UIMessageEncoder()
    parts = [json.loads(p) for p in encoder.start("a1")]
    for chunk in (
        tool("start", 1),
        tool("call", 1, arguments='{"city": "Paris"}'),
        tool("running", 1),
        tool("result", 1, output="rain"),
        tool("start", 2),  # the second model call goes straight to another call
        tool("call", 2, arguments="not json"),
        tool("running", 2),
        tool("error", 2, output="ValueError: no station"),
        Chunk("Done.", 0),
    ):
        parts += [json.loads(p) for p in encoder.chunk(chunk)]
    kinds = [p["type"] for p in parts]
    assert kinds == [
        "start",
        "start-step",
        "tool-input-start",
        "tool-input-available",
        "tool-output-available",
        "finish-step",
        "start-step",
        "tool-input-start",
        "tool-input-available",
        "tool-output-error",
        "finish-step",
        "start-step",
        "text-start",
        "text-delta",
    ]
    assert parts[3]["input"] == {"city": "Paris"} and parts[8]["input"] == "not json"
    assert parts[9]["errorText"] == "ValueError: no station"
