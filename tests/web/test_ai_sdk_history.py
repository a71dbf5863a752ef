"""``POST /api/chat`` with a history that used tools, and with files: what the provider is sent.

A real uvicorn serves the app; its pipeline talks HTTP to the fake provider
server (:class:`~pk_notebook.testing.FakeProviderServer`), whose recorded
requests show what a real provider would have received: the earlier tool calls
and their results (OpenAI and Anthropic wire formats), and the image of a
``file`` part. Malformed parts are refused with 422 naming the field, before
anything is sent upstream; an ``http:`` file URL is never fetched.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from pk_notebook.providers.anthropic import AnthropicProvider
from pk_notebook.providers.openai import OpenAIProvider
from pk_notebook.runtime.toolrun import DENIED
from pk_notebook.testing import FakeProviderServer, Script
from pk_notebook.web.ai_sdk import NOT_ANSWERED

from .conftest import make_pipeline

#: a 1x1 PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@pytest.fixture
def upstream() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


def openai_for(server: FakeProviderServer) -> OpenAIProvider:
    return OpenAIProvider("gpt-test", base_url=server.base_url, api_key="unused-key")


def user(text: str, *files: dict[str, Any]) -> dict[str, Any]:
    return {"id": "u", "role": "user", "parts": [{"type": "text", "text": text}, *files]}


def weather_turn(*extra: dict[str, Any]) -> dict[str, Any]:
    """An assistant message as ``readUIMessageStream`` assembles a turn with tools."""
    return {
        "id": "a1",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "Check the weather.", "state": "done"},
            {"type": "text", "text": "Let me check. ", "state": "done"},
            {
                "type": "dynamic-tool",
                "toolName": "get_weather",
                "toolCallId": "call_1",
                "state": "output-available",
                "input": {"city": "Paris"},
                "output": "Rain, 12 C in Paris",
            },
            {
                "type": "tool-get_forecast",  # a static tool part: the name is in the type
                "toolCallId": "call_2",
                "state": "output-error",
                "input": {"city": "Paris", "days": 2},
                "errorText": "ValueError: no forecast for Paris",
            },
            *extra,
            {"type": "step-start"},
            {"type": "text", "text": "Rain today; no forecast.", "state": "done"},
        ],
    }


async def post_chat(live: Any, messages: list[dict[str, Any]]) -> str:
    """The answer's text (asserting the stream finished)."""
    body = {"id": "chat1", "messages": messages, "trigger": "submit-message"}
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        async with aconnect_sse(client, "POST", "/api/chat", json=body) as source:
            assert source.response.status_code == 200
            parts = [json.loads(e.data) async for e in source.aiter_sse() if e.data != "[DONE]"]
    assert parts[-1]["type"] == "finish" and parts[-1]["finishReason"] == "stop"
    return "".join(p["delta"] for p in parts if p["type"] == "text-delta")


async def test_earlier_tool_calls_and_results_reach_an_openai_provider(
    serve: Any, upstream: FakeProviderServer
) -> None:
    upstream.enqueue(Script(text=["Tomorrow: ", "unknown."]))
    live = serve(make_pipeline(openai_for(upstream)))
    history = [user("Umbrella in Paris?"), weather_turn(), user("And tomorrow?")]
    assert await post_chat(live, history) == "Tomorrow: unknown."
    sent = upstream.requests[0].json["messages"]
    assert sent == [
        {"role": "user", "content": "Umbrella in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check. ",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {
                        "name": "get_forecast",
                        "arguments": '{"city":"Paris","days":2}',
                    },
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 12 C in Paris"},
        {"role": "tool", "tool_call_id": "call_2", "content": "ValueError: no forecast for Paris"},
        {"role": "assistant", "content": "Rain today; no forecast."},
        {"role": "user", "content": "And tomorrow?"},
    ]


async def test_calls_without_a_result_are_paired_and_failures_marked_for_anthropic(
    serve: Any, upstream: FakeProviderServer
) -> None:
    provider = AnthropicProvider("claude-test", base_url=upstream.base_url, api_key="unused-key")
    live = serve(make_pipeline(provider))
    unanswered = {
        "type": "dynamic-tool",
        "toolName": "get_weather",
        "toolCallId": "call_3",
        "state": "input-available",  # the turn was cut before the result came
        "input": {"city": "Lyon"},
    }
    denied = {
        "type": "tool-delete_files",
        "toolCallId": "call_4",
        "state": "output-denied",
        "input": {},
        "approval": {"id": "ap1", "approved": False},
    }
    history = [user("Umbrella?"), weather_turn(unanswered, denied), user("And tomorrow?")]
    await post_chat(live, history)
    sent = upstream.requests[0].json["messages"]
    uses = [b for b in sent[1]["content"] if b["type"] == "tool_use"]
    assert [(b["id"], b["name"], b["input"]) for b in uses] == [
        ("call_1", "get_weather", {"city": "Paris"}),
        ("call_2", "get_forecast", {"city": "Paris", "days": 2}),
        ("call_3", "get_weather", {"city": "Lyon"}),
        ("call_4", "delete_files", {}),
    ]
    results = [b for b in sent[2]["content"] if b["type"] == "tool_result"]
    assert [(b["tool_use_id"], b.get("is_error", False)) for b in results] == [
        ("call_1", False),
        ("call_2", True),
        ("call_3", True),
        ("call_4", True),
    ]
    texts = [json.dumps(b["content"]) for b in results]
    assert "no forecast for Paris" in texts[1]
    assert NOT_ANSWERED in texts[2] and DENIED in texts[3]
    assert sent[-1]["role"] == "user"


async def test_an_image_as_a_data_url_reaches_the_provider(
    serve: Any, upstream: FakeProviderServer
) -> None:
    live = serve(make_pipeline(openai_for(upstream)))
    image = {"type": "file", "mediaType": "image/png", "filename": "dot.png", "url": PNG_URL}
    await post_chat(live, [user("What is this?", image)])
    assert upstream.requests[0].content_parts() == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "mime_type": "image/png", "data": PNG},
    ]
    # an image alone is a question too; an earlier message's image is sent again
    only = {"id": "u2", "role": "user", "parts": [image]}
    await post_chat(live, [user("What is this?", image), {"role": "assistant", "parts": []}, only])
    first = upstream.requests[1].json["messages"][0]["content"]
    assert [p["type"] for p in first] == ["text", "image_url"]
    assert upstream.requests[1].content_parts() == [
        {"type": "image", "mime_type": "image/png", "data": PNG}
    ]


def tool_part(**fields: Any) -> dict[str, Any]:
    part = {
        "type": "dynamic-tool",
        "toolName": "get_weather",
        "toolCallId": "c1",
        "state": "output-available",
        "input": {},
        "output": "ok",
    }
    part.update(fields)
    return {k: v for k, v in part.items() if v is not None}


def file_part(url: str, media: str = "image/png") -> dict[str, Any]:
    return {"type": "file", "mediaType": media, "url": url}


def in_history(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [user("hi"), {"role": "assistant", "parts": list(parts)}, user("and?")]


BAD = [
    (in_history(tool_part(toolCallId=None)), "messages[1].parts[0].toolCallId must be"),
    (in_history(tool_part(state="done")), "messages[1].parts[0].state must be one of"),
    (in_history(tool_part(output=None)), "state 'output-available' needs 'output'"),
    (in_history(tool_part(state="output-error")), "messages[1].parts[0].errorText must be"),
    (in_history(tool_part(toolName=None)), "messages[1].parts[0].toolName must name the tool"),
    (in_history(tool_part(type="tool-")), "parts[0].type (tool-NAME) must name the tool"),
    (in_history(tool_part(), tool_part()), "toolCallId 'c1' is already used"),
    (in_history("text"), "messages[1].parts[0] must be an object with a string 'type'"),
    ([{"role": "user", "parts": [tool_part()]}], "tool parts belong to assistant messages"),
    ([user("x", file_part("data:image/png;base64,@@@"))], "is not valid base64"),
    ([user("x", file_part("data:image/png;base64"))], "not a valid data: URL"),
    ([user("x", file_part(PNG_URL, "text/html"))], "'text/html' are not supported"),
    ([user("x", file_part("/etc/passwd"))], "parts[1].url is not a data: URL"),
    ([user("x", {"type": "file", "url": 3})], "parts[1].url must be a data: URL"),
]


@pytest.mark.parametrize(("messages", "says"), BAD)
async def test_malformed_parts_are_refused_saying_what_is_wrong(
    serve: Any, upstream: FakeProviderServer, messages: list[Any], says: str
) -> None:
    live = serve(make_pipeline(openai_for(upstream)))
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        response = await client.post("/api/chat", json={"id": "c", "messages": messages})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "InvalidRequest" and says in error["message"]
    assert upstream.requests == []  # nothing reached the provider


async def test_a_file_url_is_never_fetched(serve: Any, upstream: FakeProviderServer) -> None:
    live = serve(make_pipeline(openai_for(upstream)))
    for url in (f"{upstream.url}/private/chart.png", f"https://127.0.0.1:{upstream.port}/x"):
        body = {"id": "c", "messages": [user("look", file_part(url))]}
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
            response = await client.post("/api/chat", json=body)
        assert response.status_code == 422
        message = response.json()["error"]["message"]
        assert "is an http(s) URL" in message and "does not fetch URLs" in message
    assert upstream.requests == []  # neither the URL nor the provider was requested


async def test_a_file_the_provider_does_not_take_is_refused_before_streaming(
    serve: Any, upstream: FakeProviderServer
) -> None:
    # an OpenAI-compatible server other than api.openai.com takes images, not PDFs
    live = serve(make_pipeline(openai_for(upstream)))
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 tiny").decode()
    body = {"id": "c", "messages": [user("summarise", file_part(pdf, "application/pdf"))]}
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        response = await client.post("/api/chat", json=body)
    assert response.status_code == 422
    assert "PDF" in response.json()["error"]["message"]
    assert upstream.requests == []
