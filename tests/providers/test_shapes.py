"""Valid JSON of the wrong shape, and the less common shapes real providers send.

Every stream body in this file is **constructed** from the providers' documented
shapes (and the shapes listed in the design notes, section 9), not recorded: the
conformance corpus in ``tests/conformance`` holds only real recordings, and none
of these shapes could be recorded offline.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pk_notebook import Pipeline, ProtocolError, ProviderError, ProviderMiddleware, RetryPolicy
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.testing import FakeProviderServer, Script

from ._parsers import parse


def sse(*payloads: Any, event: str | None = None) -> bytes:
    """``data:`` events for payloads (dicts are JSON-encoded, bytes/str sent as they are)."""
    out = b""
    for payload in payloads:
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        if isinstance(payload, str):
            payload = payload.encode()
        out += (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + payload
        out += b"\n\n"
    return out


def anthropic(name: str, payload: Any) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps({"type": name, **payload})
    return f"event: {name}\ndata: {data}\n\n".encode()


OPENAI_HI = sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
ANTHROPIC_HI = (
    anthropic("message_start", {"message": {"model": "claude", "usage": {"input_tokens": 3}}})
    + anthropic("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    + anthropic("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Hi"}})
)
GEMINI_HI = sse({"candidates": [{"content": {"parts": [{"text": "Hi"}]}, "index": 0}]})
HI = {"openai": OPENAI_HI, "anthropic": ANTHROPIC_HI, "gemini": GEMINI_HI}


def choice(**fields: Any) -> str:
    return json.dumps({"choices": [{"index": 0, **fields}]})


def block_delta(delta: Any, index: Any = 0) -> str:
    return json.dumps({"type": "content_block_delta", "index": index, "delta": delta})


def candidate(**fields: Any) -> str:
    return json.dumps({"candidates": [{"index": 0, **fields}]})


WRONG_SHAPES = [
    # OpenAI-compatible
    ("openai", '{"choices": ["x"]}', "choices-of-strings"),
    ("openai", '{"choices": {"0": {"delta": {"content": "x"}}}}', "choices-object"),
    ("openai", choice(delta="str"), "delta-string"),
    ("openai", choice(delta={"content": 123}), "content-number"),
    ("openai", choice(delta={"role": "assistant", "content": 123}), "content-number-with-role"),
    ("openai", choice(delta={"content": ["x"]}), "content-list-of-strings"),
    ("openai", choice(delta={"content": [{"type": "text", "text": 5}]}), "text-part-number"),
    ("openai", choice(delta={"content": [{"type": "thinking", "thinking": 5}]}), "thinking-num"),
    ("openai", choice(delta={"reasoning_content": 5}), "reasoning-number"),
    ("openai", choice(delta={"refusal": ["no"]}), "refusal-list"),
    ("openai", choice(delta={}, finish_reason=7), "finish-reason-number"),
    ("openai", '{"choices": [], "usage": {"prompt_tokens": "many"}}', "usage-count-string"),
    ("openai", '{"choices": [], "usage": "lots"}', "usage-string"),
    (
        "openai",
        '{"choices": [], "usage": {"prompt_tokens": 1, "prompt_tokens_details": 3}}',
        "usage-details-number",
    ),
    ("openai", choice(delta={"tool_calls": {"0": {}}}), "tool-calls-object"),
    ("openai", choice(delta={"tool_calls": ["f"]}), "tool-call-string"),
    ("openai", choice(delta={"tool_calls": [{"index": "0"}]}), "tool-index-string"),
    (
        "openai",
        choice(delta={"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]}),
        "tool-arguments-object",
    ),
    ("openai", choice(delta={"tool_calls": [{"index": 0, "function": "f"}]}), "function-str"),
    ("openai", '{"choices": [{"index": "1", "delta": {"content": "x"}}]}', "index-string"),
    ("openai", '{"choices": [], "model": 5}', "model-number"),
    ("openai", "[1, 2]", "not-an-object"),
    ("openai", "[" * 100_000 + "]" * 100_000, "nested-too-deep"),
    # Anthropic
    ("anthropic", block_delta("str"), "delta-string"),
    ("anthropic", block_delta({"type": "text_delta", "text": 123}), "text-number"),
    ("anthropic", block_delta({"type": "text_delta"}) + "x", "extra-data"),
    ("anthropic", block_delta({"type": "thinking_delta", "thinking": []}), "thinking-list"),
    ("anthropic", block_delta({"type": "input_json_delta", "partial_json": 5}), "json-number"),
    (
        "anthropic",
        block_delta({"type": "input_json_delta", "partial_json": "{"}, index="0"),
        "index-string",
    ),
    ("anthropic", '{"type": "message_start", "message": "x"}', "message-string"),
    (
        "anthropic",
        '{"type": "message_start", "message": {"usage": {"input_tokens": "many"}}}',
        "usage-count-string",
    ),
    ("anthropic", '{"type": "message_delta", "delta": []}', "message-delta-list"),
    ("anthropic", '{"type": "message_delta", "delta": {"stop_reason": 7}}', "stop-reason-number"),
    ("anthropic", '{"type": "message_delta", "usage": 5}', "usage-number"),
    ("anthropic", '{"type": "content_block_start", "content_block": "x"}', "block-string"),
    (
        "anthropic",
        '{"type": "content_block_start", "content_block": {"type": "tool_use", "id": 5}}',
        "tool-id-number",
    ),
    ("anthropic", '{"type": 5}', "type-number"),
    ("anthropic", '"message_stop"', "not-an-object"),
    # Gemini
    ("gemini", '{"candidates": {"0": {}}}', "candidates-object"),
    ("gemini", '{"candidates": ["x"]}', "candidate-string"),
    ("gemini", candidate(content="x"), "content-string"),
    ("gemini", candidate(content={"parts": {"text": "x"}}), "parts-object"),
    ("gemini", candidate(content={"parts": ["x"]}), "part-string"),
    ("gemini", candidate(content={"parts": [{"text": 5}]}), "text-number"),
    ("gemini", candidate(content={"parts": [{"functionCall": "f"}]}), "function-call-string"),
    (
        "gemini",
        candidate(content={"parts": [{"functionCall": {"name": "f", "args": "x"}}]}),
        "args-string",
    ),
    ("gemini", candidate(finishReason=7), "finish-reason-number"),
    ("gemini", '{"usageMetadata": {"promptTokenCount": "many"}}', "usage-count-string"),
    ("gemini", '{"promptFeedback": "x"}', "feedback-string"),
    ("gemini", '{"candidates": [], "modelVersion": 5}', "model-number"),
    ("gemini", '{"candidates": [{"index": "1"}]}', "index-string"),
]


@pytest.mark.parametrize(
    ("dialect", "line"), [pytest.param(d, line, id=f"{d}-{i}") for d, line, i in WRONG_SHAPES]
)
def test_wrong_shape_is_a_protocol_error_with_raw_line_and_partial_text(
    dialect: str, line: str
) -> None:
    body = HI[dialect] + sse(line)  # Anthropic: unnamed, so the payload's type is used
    for reads in ([body], [body[i : i + 7] for i in range(0, len(body), 7)]):
        outcome = parse(dialect, *reads)
        assert isinstance(outcome.error, ProtocolError), outcome.error
        assert outcome.error.partial_text == "Hi" and outcome.text == "Hi"
        assert outcome.error.raw is not None and outcome.error.raw == line[:2000]
        assert outcome.finish is None
        assert f"{dialect} sent a chunk that" in str(outcome.error)


# --- n > 1: the answer is choice 0's, chosen by its index -------------------------


def test_openai_n2_choices_do_not_interleave() -> None:
    """Constructed from the Chat Completions ``n=2`` shape: one choice per chunk, by index."""
    chunks: list[Any] = []
    for zero, one in [("The ", "A "), ("sky ", "cloud "), ("is blue.", "drifts.")]:
        chunks.append({"choices": [{"index": 1, "delta": {"content": one}}]})
        chunks.append({"choices": [{"index": 0, "delta": {"content": zero}}]})
    chunks.append({"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
    outcome = parse("openai", sse(*chunks, "[DONE]"))
    assert outcome.error is None
    assert outcome.text == "The sky is blue."
    assert outcome.finish is not None and outcome.finish.reason == "stop"
    assert outcome.finish.usage is not None and outcome.finish.usage.output_tokens == 9


def test_openai_two_choices_in_one_chunk() -> None:
    chunk: dict[str, Any] = {
        "choices": [
            {"index": 1, "delta": {"content": "no"}, "finish_reason": None},
            {"index": 0, "delta": {"content": "yes"}, "finish_reason": None},
        ]
    }
    outcome = parse("openai", sse(chunk, chunk, "[DONE]"))
    assert outcome.text == "yesyes"


def test_gemini_second_candidate_is_ignored() -> None:
    """Constructed from ``candidateCount=2``: candidates carry their index."""
    body = sse(
        {"candidates": [{"index": 1, "content": {"parts": [{"text": "B"}]}}]},
        {"candidates": [{"content": {"parts": [{"text": "A"}]}, "finishReason": "STOP"}]},
        {"candidates": [{"index": 1, "content": {"parts": [{"text": "B"}]}, "finishReason": "X"}]},
    )
    outcome = parse("gemini", body)
    assert outcome.text == "A" and outcome.finish is not None
    assert outcome.finish.reason == "STOP"


# --- refusals ------------------------------------------------------------------------

REFUSAL = "I'm sorry, I can't help with that."


def refusal_body() -> bytes:
    """Constructed from the documented refusal stream: ``content`` null, ``refusal`` text."""
    chunks: list[Any] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "refusal": ""}}]}
    ]
    for piece in ("I'm sorry, ", "I can't help ", "with that."):
        chunks.append({"choices": [{"index": 0, "delta": {"refusal": piece}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return sse(*chunks, "[DONE]")


def test_openai_refusal_is_visible_with_its_own_finish_reason() -> None:
    outcome = parse("openai", refusal_body())
    assert outcome.error is None and outcome.text == REFUSAL
    assert outcome.finish is not None and outcome.finish.reason == "refusal"


def test_openai_refusal_cut_by_length_keeps_length() -> None:
    body = sse(
        {"choices": [{"index": 0, "delta": {"refusal": "I'm sorry"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        "[DONE]",
    )
    outcome = parse("openai", body)
    assert outcome.text == "I'm sorry" and outcome.finish is not None
    assert outcome.finish.reason == "length"


# --- Anthropic pause_turn --------------------------------------------------------------


def pause_turn_body() -> bytes:
    """Constructed from the Messages API's documented ``pause_turn`` stop reason."""
    return (
        ANTHROPIC_HI
        + anthropic("content_block_stop", {"index": 0})
        + anthropic(
            "message_delta",
            {"delta": {"stop_reason": "pause_turn"}, "usage": {"output_tokens": 2}},
        )
        + anthropic("message_stop", {})
    )


def test_anthropic_pause_turn_is_not_a_finish() -> None:
    outcome = parse("anthropic", pause_turn_body())
    assert outcome.finish is None
    assert type(outcome.error) is ProviderError and outcome.error.code == "pause_turn"
    assert outcome.error.partial_text == "Hi" and "continue" in str(outcome.error)


def test_anthropic_pause_turn_without_message_stop_is_not_complete() -> None:
    body = pause_turn_body().rsplit(b"event: message_stop", 1)[0]
    outcome = parse("anthropic", body)
    assert outcome.finish is None and outcome.error is None  # the stream reports truncated


def test_anthropic_refusal_stays_refusal() -> None:
    body = (
        ANTHROPIC_HI
        + anthropic("message_delta", {"delta": {"stop_reason": "refusal"}, "usage": {}})
        + anthropic("message_stop", {})
    )
    outcome = parse("anthropic", body)
    assert outcome.finish is not None and outcome.finish.reason == "refusal"


# --- list-valued content (Mistral reasoning models) -------------------------------------


def mistral_body() -> bytes:
    """Constructed from Mistral's documented reasoning (magistral) chunk shape."""
    thinking = {
        "type": "thinking",
        "thinking": [
            {"type": "text", "text": "The user greets; "},
            {"type": "text", "text": "reply."},
        ],
    }
    return sse(
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": [thinking]}}]},
        {"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Hello"}]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "content": [
                            {"type": "thinking", "thinking": "(done)"},
                            {"type": "text", "text": "!"},
                            {"type": "reference", "reference_ids": [1]},
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"content": " Bye."}, "finish_reason": "stop"}]},
        "[DONE]",
    )


def test_mistral_content_parts_become_reasoning_and_text() -> None:
    outcome = parse("openai", mistral_body())
    assert outcome.error is None
    assert outcome.text == "Hello! Bye."
    assert outcome.reasoning == "The user greets; reply.(done)"
    assert outcome.finish is not None and outcome.finish.reason == "stop"


# --- the same through a real server and the whole pipeline --------------------------


@pytest.fixture(scope="module")
def server() -> Any:
    with FakeProviderServer() as running:
        yield running


async def run(server: FakeProviderServer, cls: type, body: bytes) -> tuple[Any, Any]:
    server.enqueue(Script.recorded(body))
    provider = cls("constructed", base_url=server.base_url)
    pipe = Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))
    try:
        stream = await pipe.execute_stream("user", "hi")
        try:
            await stream.collect()
        except Exception as exc:
            return stream.result, exc
        return stream.result, None
    finally:
        await pipe.shutdown()


@pytest.mark.parametrize(
    ("cls", "body", "text", "reason", "reasoning"),
    [
        pytest.param(OpenAIProvider, refusal_body(), REFUSAL, "refusal", "", id="refusal"),
        pytest.param(
            OpenAIProvider,
            mistral_body(),
            "Hello! Bye.",
            "stop",
            "The user greets; reply.(done)",
            id="mistral-parts",
        ),
    ],
)
async def test_shapes_end_to_end(
    server: FakeProviderServer, cls: type, body: bytes, text: str, reason: str, reasoning: str
) -> None:
    result, error = await run(server, cls, body)
    assert error is None and result.complete
    assert result.text == text and result.finish_reason == reason
    assert result.reasoning == reasoning


async def test_wrong_shape_end_to_end(server: FakeProviderServer) -> None:
    line = choice(delta={"content": 123})
    result, error = await run(server, OpenAIProvider, OPENAI_HI + sse(line))
    assert isinstance(error, ProtocolError) and error.raw == line
    assert error.partial_text == "Hi" and result.text == "Hi" and not result.complete


async def test_pause_turn_end_to_end(server: FakeProviderServer) -> None:
    result, error = await run(server, AnthropicProvider, pause_turn_body())
    assert isinstance(error, ProviderError) and error.code == "pause_turn"
    assert result.text == "Hi" and not result.complete


async def test_gemini_wrong_shape_end_to_end(server: FakeProviderServer) -> None:
    line = candidate(finishReason=7)
    result, error = await run(server, GeminiProvider, GEMINI_HI + sse(line))
    assert isinstance(error, ProtocolError) and error.raw == line and result.text == "Hi"
