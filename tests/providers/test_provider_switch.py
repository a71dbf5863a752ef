"""One session, several providers: a tool turn made with one replays correctly to the others.

The session keeps turns in a provider-neutral form (calls, results, reasoning,
provider-owned signed blocks); each provider writes its own dialect from it and
skips what belongs to another provider.
"""

from __future__ import annotations

import itertools
from typing import Any

from pk_notebook import Pipeline, ProviderMiddleware, RetryPolicy
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.runtime.memory import MemoryStore
from pk_notebook.testing import FakeProviderServer, Script

SIGNATURE = "c2lnbmVkLXRoaW5raW5n"


def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"{city}: light rain, 14 C"


def pipe_for(cls: Any, server: FakeProviderServer, store: MemoryStore) -> Pipeline:
    provider = cls("fake-model", base_url=server.base_url)
    return Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), state_store=store
    )


async def test_a_tool_turn_from_anthropic_replays_to_openai_and_gemini(
    fake_server: FakeProviderServer,
) -> None:
    store = MemoryStore()
    fake_server.enqueue(
        Script(
            "",
            reasoning="Weather question: use the tool.",
            signature=SIGNATURE,
            tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        )
    )
    fake_server.enqueue(Script("Take an umbrella."))
    async with pipe_for(AnthropicProvider, fake_server, store) as pipe:
        await pipe.execute_with_context("trip", "user", "Paris?", tools=[get_weather])
    stored = await store.load("trip")
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1].reasoning_blocks[0]["provider"] == "anthropic"

    # the same session continued with OpenAI: calls and results in its format, no
    # Anthropic signature, no reasoning sent back
    fake_server.enqueue(Script("Still rainy."))
    async with pipe_for(OpenAIProvider, fake_server, store) as pipe:
        await pipe.execute_with_context("trip", "user", "And tomorrow?", tools=[get_weather])
    body = fake_server.requests[-1].json
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]
    call = body["messages"][1]["tool_calls"][0]
    assert body["messages"][2]["tool_call_id"] == call["id"]
    assert call["function"]["name"] == "get_weather"
    assert SIGNATURE not in fake_server.requests[-1].body.decode()

    # and with Gemini: the call and its response, roles alternating user/model
    fake_server.enqueue(Script("Rain all week."))
    async with pipe_for(GeminiProvider, fake_server, store) as pipe:
        await pipe.execute_with_context("trip", "user", "And the week?", tools=[get_weather])
    contents = fake_server.requests[-1].json["contents"]
    roles = [c["role"] for c in contents]
    assert all(a != b for a, b in itertools.pairwise(roles)), roles
    parts = [p for c in contents for p in c["parts"]]
    assert any(p.get("functionCall", {}).get("name") == "get_weather" for p in parts)
    assert any(p.get("functionResponse", {}).get("name") == "get_weather" for p in parts)
    assert SIGNATURE not in fake_server.requests[-1].body.decode()


async def test_a_tool_turn_from_openai_replays_to_anthropic(
    fake_server: FakeProviderServer,
) -> None:
    store = MemoryStore()
    fake_server.enqueue(
        Script("", tool_calls=[{"name": "get_weather", "arguments": {"city": "Oslo"}}])
    )
    fake_server.enqueue(Script("Cold and wet."))
    async with pipe_for(OpenAIProvider, fake_server, store) as pipe:
        await pipe.execute_with_context("s", "user", "Oslo?", tools=[get_weather])

    fake_server.enqueue(Script("Yes."))
    async with pipe_for(AnthropicProvider, fake_server, store) as pipe:
        await pipe.execute_with_context("s", "user", "Coat?", tools=[get_weather])
    messages = fake_server.requests[-1].json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    tool_use = next(b for b in messages[1]["content"] if b["type"] == "tool_use")
    result = next(b for b in messages[2]["content"] if b["type"] == "tool_result")
    assert result["tool_use_id"] == tool_use["id"] and tool_use["input"] == {"city": "Oslo"}
    assert "Oslo: light rain" in str(result["content"])
