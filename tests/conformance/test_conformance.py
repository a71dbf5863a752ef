"""Every recorded stream in this folder, served from a loopback server and parsed by
the real provider classes through the real Pipeline, gives the values the official
SDKs got (see README.md for provenance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pk_notebook import Pipeline, ProviderError, ProviderMiddleware, RetryPolicy, Usage
from pk_notebook.providers import (
    AnthropicProvider,
    GeminiProvider,
    OpenAIProvider,
    OpenAIResponsesProvider,
)
from pk_notebook.testing import FakeProviderServer, Script

HERE = Path(__file__).parent
CASES = sorted(p.stem for p in HERE.glob("*.sse"))

PROVIDERS = {
    "openai-chat": OpenAIProvider,
    "openai-compatible": OpenAIProvider,
    "anthropic-messages": AnthropicProvider,
    "gemini-sse": GeminiProvider,
    "openai-responses": OpenAIResponsesProvider,
}


def expected_usage(provider: str, wire: dict[str, Any] | None) -> Usage | None:
    """The wire usage, mapped independently of the providers' own mapping code."""
    if wire is None:
        return None
    if provider == "openai-responses":
        return Usage(
            input_tokens=wire["input_tokens"],
            output_tokens=wire["output_tokens"],
            reasoning_tokens=(wire.get("output_tokens_details") or {}).get("reasoning_tokens", 0),
            cached_tokens=(wire.get("input_tokens_details") or {}).get("cached_tokens", 0),
        )
    if provider.startswith("openai"):
        return Usage(
            input_tokens=wire["prompt_tokens"],
            output_tokens=wire["completion_tokens"],
            reasoning_tokens=(wire.get("completion_tokens_details") or {}).get(
                "reasoning_tokens", 0
            ),
            cached_tokens=(wire.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
        )
    if provider == "anthropic-messages":
        cached = wire.get("cache_read_input_tokens", 0)
        return Usage(
            input_tokens=wire["input_tokens"] + cached + wire.get("cache_creation_input_tokens", 0),
            output_tokens=wire["output_tokens"],
            cached_tokens=cached,
        )
    thoughts = wire.get("thoughtsTokenCount", 0)
    return Usage(
        input_tokens=wire["promptTokenCount"],
        output_tokens=wire.get("candidatesTokenCount", 0) + thoughts,
        reasoning_tokens=thoughts,
    )


def expected_finish(provider: str, meta: dict[str, Any]) -> str | None:
    """The finish reason: the wire's own, except for the Responses API, which has none: its
    final status ``completed`` is ``tool_calls`` with calls and ``stop`` without."""
    reason = meta["expected_finish_reason"]
    if provider == "openai-responses" and reason == "completed":
        return "tool_calls" if meta["expected_tool_calls"] else "stop"
    return reason


def expected_tools(provider: str, tools: list[dict[str, Any]] | None) -> list[tuple[str, Any]]:
    """(name, parsed arguments) pairs, plus ids where the wire has them."""
    if not tools:
        return []
    if provider == "openai-responses":
        return [(t["call_id"], t["name"], json.loads(t["arguments"])) for t in tools]
    if provider.startswith("openai"):
        return [
            (t["id"], t["function"]["name"], json.loads(t["function"]["arguments"])) for t in tools
        ]
    if provider == "anthropic-messages":
        return [(t["id"], t["name"], t["input"]) for t in tools]
    return [(None, t["name"], t["args"]) for t in tools]


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeProviderServer() as running:
        yield running


@pytest.mark.parametrize("pace", [pytest.param(0.0, id="burst"), pytest.param(0.001, id="paced")])
@pytest.mark.parametrize("name", CASES)
async def test_recorded_stream(server: FakeProviderServer, name: str, pace: float) -> None:
    meta = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    body = (HERE / f"{name}.sse").read_bytes()
    server.enqueue(Script.recorded(body, pace=pace))
    provider_cls = PROVIDERS[meta["provider"]]
    pipe = Pipeline(
        ProviderMiddleware(
            provider_cls("recorded", base_url=server.base_url), retry=RetryPolicy(max_attempts=1)
        ),
        idle_timeout=10,
    )
    try:
        sdk_error = (meta.get("extra") or {}).get("sdk_error")
        stream = await pipe.execute_stream("user", "hello")
        if sdk_error:
            with pytest.raises(ProviderError) as caught:
                await stream.collect()
            assert caught.value.partial_text == meta["expected_text"]
            assert sdk_error.split(": ", 1)[1] in str(caught.value)
            reasoning = (meta.get("extra") or {}).get("reasoning_text")
            if reasoning:
                assert stream.reasoning == reasoning
            return
        result = await stream.collect()
        assert result.text == meta["expected_text"]
        assert result.finish_reason == expected_finish(meta["provider"], meta)
        if meta["expected_usage"] is None:  # none on the wire: estimated, and labelled so
            assert result.usage is not None and result.usage.estimated == "chars/4"
            assert result.usage.output_tokens >= len(result.text) // 4
        else:
            assert result.usage == expected_usage(meta["provider"], meta["expected_usage"])
        assert result.model == meta["recorded_model"] or (
            meta["provider"] == "openai-chat" and not result.model
        )
        got = [(t.id, t.name, json.loads(t.arguments)) for t in result.tool_calls]
        want = expected_tools(meta["provider"], meta["expected_tool_calls"])
        if meta["provider"] == "gemini-sse":
            got = [(None, name, args) for _, name, args in got]
        assert got == want
        reasoning = (meta.get("extra") or {}).get("reasoning_text")
        assert result.reasoning == (reasoning or "")
    finally:
        await pipe.shutdown()


def test_corpus_is_complete() -> None:
    assert len(CASES) == 27
    for name in CASES:
        assert (HERE / f"{name}.json").exists()
