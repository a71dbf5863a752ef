"""Gemini thought signatures: kept on the part they came with, sent back there.

Gemini may put a ``thoughtSignature`` on any part: a call (kept on the ToolCall), the
answer's text, a thought part, or the empty text part that ends a streamed answer
and holds only the signature. The parser keeps the non-call ones in the message's
``reasoning_blocks``; the next request cuts the answer into parts so that each
signature is on its own part again. A call without a signature (made by another
provider) in the current turn gets the documented dummy on the first call of its
step, and nothing else gets one. Bodies are written in the wire form here (served
byte for byte by the fake server); the corpus recordings are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pk_notebook import Pipeline, ProviderMiddleware, RetryPolicy
from pk_notebook.providers import AnthropicProvider, GeminiProvider, OpenAIProvider
from pk_notebook.providers.gemini import DUMMY_SIGNATURE, gemini_contents
from pk_notebook.runtime.memory import MemoryStore
from pk_notebook.runtime.types import Delta, Message, ToolCall
from pk_notebook.sessions.sqlite import SQLiteStore
from pk_notebook.testing import FakeProviderServer, Script

from ._parsers import parse

CORPUS = Path(__file__).parent.parent / "conformance"
SIG_A = "Q2lnQUJ0ZXh0LXBhcnQtc2lnbmF0dXJl"
SIG_B = "Q2lnQkVuZC1vZi1hbnN3ZXItc2lnbmF0dXJl"
SIG_T = "Q2lnVGhvdWdodC1wYXJ0LXNpZ25hdHVyZQ=="
SIG_CALL = "Q2lnQ2FsbC1zaWduYXR1cmU="
WEATHER_SPEC = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def event(*parts: dict[str, Any], finish: str | None = None) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-3-pro-preview"}
    if finish:
        payload["usageMetadata"] = {"promptTokenCount": 9, "candidatesTokenCount": 4}
    return b"data: " + json.dumps(payload).encode() + b"\r\n\r\n"


def body(*events: bytes) -> Script:
    return Script(body=b"".join(events))


#: a streamed answer as Gemini 3 sends one: the first text chunk signed, then plain
#: text, then the signature of the end on a chunk without text
SIGNED_ANSWER = (
    event({"text": "Rain", "thoughtSignature": SIG_A}),
    event({"text": " in Oslo"}),
    event({"text": " today."}),
    event({"text": "", "thoughtSignature": SIG_B}, finish="STOP"),
)

#: two parallel calls as Gemini sends them: only the first carries a signature
PARALLEL_CALLS = event(
    {
        "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
        "thoughtSignature": SIG_CALL,
    },
    {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
    finish="STOP",
)


def pipe_for(cls: Any, server: FakeProviderServer, store: Any) -> Pipeline:
    provider = cls("fake-model", base_url=server.base_url)
    return Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), state_store=store
    )


def model_contents(server: FakeProviderServer, index: int = -1) -> list[dict[str, Any]]:
    return [c for c in server.requests[index].json["contents"] if c["role"] == "model"]


# --- the parser ------------------------------------------------------------------------


def test_text_part_signatures_are_kept_where_they_came() -> None:
    outcome = parse("gemini", *SIGNED_ANSWER)
    assert outcome.error is None and outcome.finish is not None
    assert outcome.text == "Rain in Oslo today."
    # the signature-only chunk gives no empty delta
    assert all(e.text or e.reasoning for e in outcome.events if isinstance(e, Delta))
    assert list(outcome.finish.reasoning_blocks) == [
        {"provider": "gemini", "type": "thought_signature", "signature": SIG_A, "at": 0,
         "text": "Rain"},
        {"provider": "gemini", "type": "thought_signature", "signature": SIG_B, "at": 19,
         "text": ""},
    ]  # fmt: skip


def test_a_signed_thought_part_is_kept_as_a_thought() -> None:
    outcome = parse(
        "gemini",
        event({"text": "Check the sky.", "thought": True, "thoughtSignature": SIG_T}),
        event({"text": "Cloudy."}, finish="STOP"),
    )
    assert outcome.reasoning == "Check the sky." and outcome.text == "Cloudy."
    assert outcome.finish is not None
    (block,) = outcome.finish.reasoning_blocks
    assert block == {
        "provider": "gemini",
        "type": "thought_signature",
        "signature": SIG_T,
        "at": 0,
        "text": "Check the sky.",
        "thought": True,
    }


def test_call_signatures_stay_on_the_call_not_in_blocks() -> None:
    outcome = parse("gemini", PARALLEL_CALLS)
    assert outcome.finish is not None
    assert [c.signature for c in outcome.finish.tool_calls] == [SIG_CALL, ""]
    assert outcome.finish.reasoning_blocks == ()


def test_a_non_string_signature_is_a_protocol_error() -> None:
    outcome = parse("gemini", event({"text": "x", "thoughtSignature": 5}, finish="STOP"))
    assert outcome.error is not None and "thoughtSignature" in str(outcome.error.raw)


@pytest.mark.parametrize("name", sorted(p.stem for p in CORPUS.glob("gemini_*.sse")))
def test_recordings_agree_on_every_signature(name: str) -> None:
    """Every signature of a recorded body, read with plain json.loads, is kept once:
    on its call or in a block at its part's place. (The corpus has none on text
    parts today: its recordings are gemini-2.5-flash; the check holds for any.)"""
    raw = (CORPUS / f"{name}.sse").read_bytes()
    on_calls: list[str] = []
    on_parts: list[tuple[str, str, bool]] = []
    for line in raw.splitlines():
        if not line.startswith(b"data: "):
            continue
        for candidate in json.loads(line[6:])["candidates"]:
            for part in candidate.get("content", {}).get("parts", []):
                if "functionCall" in part:
                    on_calls.append(part.get("thoughtSignature", ""))
                elif part.get("thoughtSignature"):
                    on_parts.append(
                        (part["thoughtSignature"], part.get("text", ""), bool(part.get("thought")))
                    )
    outcome = parse("gemini", raw)
    assert outcome.error is None and outcome.finish is not None
    assert [c.signature for c in outcome.finish.tool_calls] == on_calls
    kept = [
        (b["signature"], b["text"], bool(b.get("thought"))) for b in outcome.finish.reasoning_blocks
    ]
    assert kept == on_parts
    for block in outcome.finish.reasoning_blocks:
        if not block.get("thought"):
            assert outcome.text.startswith(block["text"], block["at"])


# --- the request -----------------------------------------------------------------------


def test_answer_without_blocks_is_one_text_part() -> None:
    contents = gemini_contents([Message("user", "Hi"), Message("assistant", "Hello.")], [])
    assert contents[1] == {"role": "model", "parts": [{"text": "Hello."}]}


def test_a_block_that_no_longer_matches_the_text_is_left_out() -> None:
    block = {"provider": "gemini", "type": "thought_signature", "signature": SIG_A, "at": 0,
             "text": "Rain"}  # fmt: skip
    other = {"provider": "anthropic", "type": "thinking", "thinking": "t", "signature": "s"}
    edited = Message("assistant", "Snow today.", reasoning_blocks=(other, block))
    contents = gemini_contents([Message("user", "Hi"), edited], [])
    assert contents[1]["parts"] == [{"text": "Snow today."}]


async def test_signed_parts_go_back_on_the_same_parts(fake_server: FakeProviderServer) -> None:
    fake_server.enqueue(body(*SIGNED_ANSWER))
    fake_server.enqueue(Script("Take a coat."))
    store = MemoryStore()
    async with pipe_for(GeminiProvider, fake_server, store) as pipe:
        first = await pipe.execute_with_context("s", "user", "Oslo?")
        await pipe.execute_with_context("s", "user", "Coat?")
    assert first.text == "Rain in Oslo today."
    (model,) = model_contents(fake_server)
    assert model["parts"] == [
        {"text": "Rain", "thoughtSignature": SIG_A},
        {"text": " in Oslo today."},
        {"text": "", "thoughtSignature": SIG_B},
    ]
    # the first request had no model content, and nothing was signed by us
    assert model_contents(fake_server, 0) == []


async def test_a_signed_thought_goes_back_before_the_answer(
    fake_server: FakeProviderServer,
) -> None:
    fake_server.enqueue(
        body(
            event({"text": "Sky check.", "thought": True, "thoughtSignature": SIG_T}),
            event({"text": "Cloudy."}, finish="STOP"),
        )
    )
    fake_server.enqueue(Script("Yes."))
    async with pipe_for(GeminiProvider, fake_server, MemoryStore()) as pipe:
        await pipe.execute_with_context("s", "user", "Sky?")
        await pipe.execute_with_context("s", "user", "Sure?")
    (model,) = model_contents(fake_server)
    assert model["parts"] == [
        {"text": "Sky check.", "thought": True, "thoughtSignature": SIG_T},
        {"text": "Cloudy."},
    ]


async def test_signatures_survive_a_sqlite_session(
    fake_server: FakeProviderServer, tmp_path: Path
) -> None:
    path = tmp_path / "sessions.db"
    fake_server.enqueue(body(*SIGNED_ANSWER))
    store = SQLiteStore(path)
    try:
        async with pipe_for(GeminiProvider, fake_server, store) as pipe:
            await pipe.execute_with_context("s", "user", "Oslo?")
    finally:
        await store.aclose()

    store = SQLiteStore(path)  # a new process would open it like this
    try:
        (_, answer) = await store.load("s")
        assert answer.content == "Rain in Oslo today."
        assert [(b["signature"], b["at"], b["text"]) for b in answer.reasoning_blocks] == [
            (SIG_A, 0, "Rain"),
            (SIG_B, 19, ""),
        ]
        fake_server.enqueue(Script("Take a coat."))
        async with pipe_for(GeminiProvider, fake_server, store) as pipe:
            await pipe.execute_with_context("s", "user", "Coat?")
    finally:
        await store.aclose()
    (model,) = model_contents(fake_server)
    assert model["parts"] == [
        {"text": "Rain", "thoughtSignature": SIG_A},
        {"text": " in Oslo today."},
        {"text": "", "thoughtSignature": SIG_B},
    ]


async def test_a_gemini_tool_loop_sends_its_own_signature_and_no_dummy(
    fake_server: FakeProviderServer,
) -> None:
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"{city}: rain"

    fake_server.enqueue(body(PARALLEL_CALLS))
    fake_server.enqueue(body(*SIGNED_ANSWER))
    async with pipe_for(GeminiProvider, fake_server, MemoryStore()) as pipe:
        result = await pipe.execute_with_context("s", "user", "Oslo and Rome?", tools=[get_weather])
    assert result.text == "Rain in Oslo today."
    (model,) = model_contents(fake_server)
    first, second = model["parts"]
    assert first["thoughtSignature"] == SIG_CALL
    assert "thoughtSignature" not in second  # a parallel call never had one
    assert DUMMY_SIGNATURE not in fake_server.requests[-1].body.decode()


async def test_a_foreign_call_in_the_current_turn_gets_the_dummy(
    fake_server: FakeProviderServer, tmp_path: Path
) -> None:
    """OpenAI asked for two calls that the caller runs; the turn so far is in a SQLite
    session, and the caller continues it with Gemini and a tool result: that step's
    first call needs a signature and gets the dummy, the second gets nothing."""
    fake_server.enqueue(
        Script(
            "",
            tool_calls=[
                {"name": "get_weather", "arguments": {"city": "Oslo"}},
                {"name": "get_weather", "arguments": {"city": "Rome"}},
            ],
        )
    )
    async with pipe_for(OpenAIProvider, fake_server, None) as pipe:
        first = await pipe.execute("user", "Oslo and Rome?", tools=[WEATHER_SPEC])
    oslo, rome = first.tool_calls
    assert oslo.signature == rome.signature == ""

    store = SQLiteStore(tmp_path / "s.db")
    try:
        await store.append(
            "s",
            [Message("user", "Oslo and Rome?"), Message("assistant", "", tool_calls=(oslo, rome))],
        )
        fake_server.enqueue(Script("Rain in Oslo."))
        result = Message("tool", "Oslo: rain", tool_call_id=oslo.id, name="get_weather")
        async with pipe_for(GeminiProvider, fake_server, store) as pipe:
            async with pipe.stream(result, session="s", tools=[WEATHER_SPEC]) as stream:
                await stream.collect()
        stored = await store.load("s")
    finally:
        await store.aclose()
    contents = fake_server.requests[-1].json["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user"]
    calls = contents[1]["parts"]
    assert [p["functionCall"]["args"]["city"] for p in calls] == ["Oslo", "Rome"]
    assert calls[0]["thoughtSignature"] == DUMMY_SIGNATURE
    assert "thoughtSignature" not in calls[1]
    # the dummy is for the wire only: the stored calls keep no signature
    assert [c.signature for c in stored[1].tool_calls] == ["", ""]


def test_foreign_calls_of_earlier_turns_get_nothing() -> None:
    """Gemini validates the current turn only: a call before the newest user text is
    sent as it is, a call after it (without a signature) gets the dummy, and a
    signed call keeps its own."""
    history = [
        Message("user", "Oslo?"),
        Message("assistant", "", tool_calls=(ToolCall("a", "get_weather", '{"city": "Oslo"}'),)),
        Message("tool", "rain", tool_call_id="a", name="get_weather"),
        Message("assistant", "Rain."),
        Message("user", "And Rome?"),
        Message("assistant", "", tool_calls=(ToolCall("b", "get_weather", '{"city": "Rome"}'),)),
        Message("tool", "sun", tool_call_id="b", name="get_weather"),
        Message(
            "assistant",
            "",
            tool_calls=(ToolCall("c", "get_weather", '{"city": "Bern"}', SIG_CALL),),
        ),
        Message("tool", "snow", tool_call_id="c", name="get_weather"),
    ]
    contents = gemini_contents(history, [])
    calls = [p for c in contents for p in c["parts"] if "functionCall" in p]
    assert [p.get("thoughtSignature") for p in calls] == [None, DUMMY_SIGNATURE, SIG_CALL]


def test_a_user_text_after_tool_results_starts_a_new_turn() -> None:
    """A result and the user's next words merge into one user content; it holds text,
    so the turn starts after it and the call before it is not validated."""
    history = [
        Message("user", "Oslo?"),
        Message("assistant", "", tool_calls=(ToolCall("a", "get_weather", '{"city": "Oslo"}'),)),
        Message("tool", "rain", tool_call_id="a", name="get_weather"),
        Message("user", "Thanks, and tomorrow?"),
    ]
    contents = gemini_contents(history, [])
    assert DUMMY_SIGNATURE not in json.dumps(contents)


async def test_other_providers_skip_gemini_signatures(fake_server: FakeProviderServer) -> None:
    store = MemoryStore()
    fake_server.enqueue(body(*SIGNED_ANSWER))
    async with pipe_for(GeminiProvider, fake_server, store) as pipe:
        await pipe.execute_with_context("s", "user", "Oslo?")
    for cls in (OpenAIProvider, AnthropicProvider):
        fake_server.enqueue(Script("Yes."))
        async with pipe_for(cls, fake_server, store) as pipe:
            await pipe.execute_with_context("s", "user", "Coat?")
        sent = fake_server.requests[-1].body.decode()
        assert "Rain in Oslo today." in sent
        assert SIG_A not in sent and SIG_B not in sent
