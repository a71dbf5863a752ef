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
    final status ``completed`` is ``tool_calls`` with calls and ``stop`` without. A refusal
    (``extra.refusal_text``) that the server ends with ``stop`` or ``completed`` finishes
    ``"refusal"``, as the OpenAI parsers document."""
    reason = meta["expected_finish_reason"]
    if (meta.get("extra") or {}).get("refusal_text") and reason in ("stop", "completed"):
        return "refusal"
    if provider == "openai-responses" and reason == "completed":
        return "tool_calls" if meta["expected_tool_calls"] else "stop"
    return reason


def expected_answer(meta: dict[str, Any]) -> str:
    """The text the answer shows: the SDK's text plus, for a refusal, the refusal (the SDKs
    keep it apart, in ``refusal``; pk_notebook's answer text includes it)."""
    return meta["expected_text"] + ((meta.get("extra") or {}).get("refusal_text") or "")


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
        if meta["expected_finish_reason"] == "pause_turn":  # never a complete answer
            with pytest.raises(ProviderError) as paused:
                await stream.collect()
            assert paused.value.code == "pause_turn"
            assert paused.value.partial_text == meta["expected_text"]
            assert stream.reasoning == (meta.get("extra") or {}).get("reasoning_text", "")
            return
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
        assert result.text == expected_answer(meta)
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
    assert len(CASES) == 32
    for name in CASES:
        assert (HERE / f"{name}.json").exists()


# --- shapes our docs promise something specific for ---------------------------------


async def run_recording(server: FakeProviderServer, name: str) -> tuple[Any, Any]:
    """(stream, result) for one recording; result is the ProviderError if the stream
    failed."""
    meta = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    server.enqueue(Script.recorded((HERE / f"{name}.sse").read_bytes()))
    pipe = Pipeline(
        ProviderMiddleware(
            PROVIDERS[meta["provider"]]("recorded", base_url=server.base_url),
            retry=RetryPolicy(max_attempts=1),
        ),
        idle_timeout=10,
    )
    try:
        stream = await pipe.execute_stream("user", "hello")
        try:
            return stream, await stream.collect()
        except ProviderError as exc:
            return stream, exc
    finally:
        await pipe.shutdown()


async def test_openai_chat_refusal_is_answer_text_finishing_refusal(
    server: FakeProviderServer,
) -> None:
    """gpt-4o refusing (``delta.refusal`` only, the server's finish ``stop``): the refusal is
    the answer's text and the finish reason says it was one."""
    _, result = await run_recording(server, "openai_chat_refusal")
    assert result.text == "I'm very sorry, but I can't assist with that request."
    assert result.finish_reason == "refusal"
    assert result.usage == Usage(input_tokens=64, output_tokens=13)
    assert result.tool_calls == ()


async def test_responses_refusal_is_answer_text_finishing_refusal(
    server: FakeProviderServer,
) -> None:
    """``response.refusal.delta`` then ``response.completed``: text, finish ``refusal``."""
    _, result = await run_recording(server, "openai_responses_refusal")
    assert result.text == "I'm sorry, I can't assist with that."
    assert result.finish_reason == "refusal"
    assert result.usage == Usage(input_tokens=54, output_tokens=11)


async def test_responses_incomplete_finishes_with_its_reason(server: FakeProviderServer) -> None:
    """``response.incomplete`` (``max_output_tokens``) is a finish, not an error or a
    truncation: the partial text, ``incomplete_details.reason`` and the usage."""
    stream, result = await run_recording(server, "openai_responses_incomplete_max_output_tokens")
    assert not isinstance(result, ProviderError)
    assert result.text.startswith("Sure! Here is a list of all 50 U.S. states:\n\n1. Alabama")
    assert result.text.endswith("9. Florida")
    assert result.finish_reason == "max_output_tokens"
    assert result.usage == Usage(input_tokens=14, output_tokens=50)
    assert stream.status == "finished"


async def test_anthropic_pause_turn_is_a_provider_error_keeping_partial_text(
    server: FakeProviderServer,
) -> None:
    """``stop_reason: "pause_turn"`` after ten server-side web searches: a ``ProviderError``
    with code ``pause_turn`` that keeps the text and thinking so far; the server tool blocks
    are neither text nor tool calls."""
    stream, error = await run_recording(server, "anthropic_pause_turn_web_search")
    assert isinstance(error, ProviderError)
    assert error.code == "pause_turn"
    assert error.partial_text == (
        "I'll run these searches one at a time as requested. Let me start:"
        "Let me continue with the remaining searches you requested:"
        "Now continuing with the remaining searches:"
    )
    assert stream.reasoning.startswith("The user wants me to run a series of web searches.")
    assert stream.status == "failed"


async def test_mistral_list_content_becomes_reasoning_and_text(server: FakeProviderServer) -> None:
    """magistral: ``delta.content`` lists of ``thinking`` parts are reasoning (one with an
    empty inner list), the later string contents are the text; neither leaks into the
    other."""
    _, result = await run_recording(server, "mistral_magistral_content_parts")
    assert result.reasoning.startswith("Okay, the user is asking how to cross the street.")
    assert result.reasoning.endswith(
        "Let me compile this information into a clear and concise response."
    )
    assert result.text.startswith("To cross the street safely, follow these steps:")
    assert "Okay, the user" not in result.text
    assert "thinking" not in result.text and "[{" not in result.text
    assert result.finish_reason == "stop"
    assert result.usage == Usage(input_tokens=10, output_tokens=232)
