"""``<think>...</think>`` from local models on OpenAI-compatible servers becomes reasoning.

The splitter is checked alone (every way of cutting a sample into pieces), inside
the OpenAI parser (every byte at which the stream can be split between reads),
and through a real provider call against the fake server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pk_notebook.providers import OpenAIProvider
from pk_notebook.providers._think import ThinkSplitter
from pk_notebook.providers.openai import OpenAIParser
from pk_notebook.runtime.errors import ConfigurationError
from pk_notebook.runtime.types import Delta, Finish, ProviderConfig, Request
from pk_notebook.testing import FakeProviderServer, Script

from ._parsers import StubProvider

SAMPLE = "\n <think>\nThe user greets <b>me</b>; reply. 3 < 4.\n</think>\n\nHéllo <think> there!"
SAMPLE_REASONING = "\nThe user greets <b>me</b>; reply. 3 < 4.\n"
SAMPLE_TEXT = "Héllo <think> there!"


def split(splitter: ThinkSplitter, pieces: list[str]) -> tuple[str, str]:
    text, reasoning = [], []
    for piece in pieces:
        t, r = splitter.feed(piece)
        text.append(t)
        reasoning.append(r)
    t, r = splitter.flush()
    return "".join(text) + t, "".join(reasoning) + r


# --- the splitter alone -------------------------------------------------------------------


def test_every_two_cuts_give_the_same_split() -> None:
    n = len(SAMPLE)
    for i in range(n + 1):
        for j in range(i, n + 1):
            pieces = [SAMPLE[:i], SAMPLE[i:j], SAMPLE[j:]]
            assert split(ThinkSplitter(), pieces) == (SAMPLE_TEXT, SAMPLE_REASONING), (i, j)


def test_one_character_at_a_time() -> None:
    assert split(ThinkSplitter(), list(SAMPLE)) == (SAMPLE_TEXT, SAMPLE_REASONING)


def test_holds_back_at_most_a_tag_prefix() -> None:
    splitter = ThinkSplitter(opened=True)
    assert splitter.feed("abc</thin") == ("", "abc")  # "</thin" held
    assert splitter.feed("g>") == ("", "</thing>")  # not the tag after all
    assert splitter.feed("x<") == ("", "x")
    assert splitter.feed("/think>  done") == ("done", "")
    assert splitter.off


OPENED = "Okay, the user says hi.</think>\n\nHello!"


@pytest.mark.parametrize("cut", range(len(OPENED) + 1))
def test_missing_opening_tag(cut: int) -> None:
    splitter = ThinkSplitter(opened=True)
    assert split(splitter, [OPENED[:cut], OPENED[cut:]]) == ("Hello!", "Okay, the user says hi.")


def test_opened_model_that_sends_the_tag_anyway() -> None:
    assert split(ThinkSplitter(opened=True), ["<thi", "nk>hm</think>ok"]) == ("ok", "hm")


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["Hello <think>x</think>"], ("Hello <think>x</think>", "")),  # not at the start
        (["<", "div>hi</div>"], ("<div>hi</div>", "")),
        (["  ", "\n", "plain"], ("  \nplain", "")),
        (["<"], ("<", "")),  # held, then flushed as text at the end
        (["   "], ("   ", "")),
        (["<think>never closed <"], ("", "never closed <")),
        (["<think></think>", "answer"], ("answer", "")),
    ],
)
def test_auto_for_a_normal_model(pieces: list[str], expected: tuple[str, str]) -> None:
    assert split(ThinkSplitter(), pieces) == expected


def test_decided_splitter_is_off() -> None:
    splitter = ThinkSplitter()
    assert not splitter.off
    splitter.feed("Hi")
    assert splitter.off
    assert splitter.feed("<think>") == ("<think>", "")


@pytest.mark.parametrize(
    ("mode", "model", "opened"),
    [
        ("auto", "deepseek-r1:8b", True),
        ("auto", "DeepSeek-R1-Distill-Qwen-7B", True),
        ("auto", "lmstudio-community/r1-distill-llama", True),
        ("auto", "qwq:32b", True),
        ("auto", "deepseek-reasoner", False),  # the API model: reasoning_content, no tags
        ("auto", "qwen3:8b", False),
        ("auto", None, False),
        ("open", "llama3", True),
    ],
)
def test_for_model(mode: str, model: str | None, opened: bool) -> None:
    splitter = ThinkSplitter.for_model(mode, model)
    assert splitter is not None and splitter.inside is opened


def test_off_is_no_splitter() -> None:
    assert ThinkSplitter.for_model("off", "deepseek-r1:8b") is None


# --- inside the OpenAI parser ---------------------------------------------------------------


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(p).encode() + b"\n\n" for p in payloads)


def chunk(**delta: Any) -> dict[str, Any]:
    return {"model": "local", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def stream_of(pieces: list[str], *, done: bool = True) -> bytes:
    payloads = [chunk(role="assistant", content="")]
    payloads += [chunk(content=piece) for piece in pieces]
    payloads.append(
        {"model": "local", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    return sse(*payloads) + (b"data: [DONE]\n\n" if done else b"")


def make(model: str | None = None, think_tags: str = "auto") -> OpenAIParser:
    provider: Any = StubProvider("openai")
    provider.think_tags = think_tags
    return OpenAIParser(provider, ProviderConfig(model=model))


def run(parser: OpenAIParser, *reads: bytes) -> tuple[str, str, list[Any]]:
    events: list[Any] = []
    for read in reads:
        events += parser.feed(read)
        if parser.done or parser.error is not None:
            break
    assert parser.error is None
    if not parser.done:
        final = parser.end()
        assert final is not None
        events.append(final)
    assert isinstance(events[-1], Finish)
    deltas = [e for e in events if isinstance(e, Delta)]
    return "".join(d.text for d in deltas), "".join(d.reasoning for d in deltas), events


# the sample cut into 3-character pieces, so both tags are split across chunks
PIECES = [SAMPLE[i : i + 3] for i in range(0, len(SAMPLE), 3)]


def test_every_byte_split_of_the_stream() -> None:
    body = stream_of(PIECES)
    for cut in range(len(body) + 1):
        text, reasoning, _ = run(make(), body[:cut], body[cut:])
        assert (text, reasoning) == (SAMPLE_TEXT, SAMPLE_REASONING), cut


def test_parser_text_is_the_answer_only() -> None:
    parser = make()
    text, _, _ = run(parser, stream_of(PIECES))
    assert parser.text == text == SAMPLE_TEXT


@pytest.mark.parametrize("model", ["deepseek-r1:14b", "DeepSeek-R1-Distill-Llama-8B", "QwQ-32B"])
def test_missing_opening_tag_by_model_name(model: str) -> None:
    body = stream_of(["Okay, ", "the user says hi.<", "/think>", "\n\n", "Hello!"])
    text, reasoning, _ = run(make(model), body)
    assert (text, reasoning) == ("Hello!", "Okay, the user says hi.")


def test_off_leaves_the_text_alone() -> None:
    body = stream_of(PIECES)
    assert run(make(think_tags="off"), body)[:2] == (SAMPLE, "")
    assert run(make("deepseek-r1:8b", think_tags="off"), body)[:2] == (SAMPLE, "")


def test_open_forces_reasoning_first() -> None:
    body = stream_of(["thinking...</think>", "answer"])
    assert run(make("llama3.1", think_tags="open"), body)[:2] == ("answer", "thinking...")
    assert run(make("llama3.1"), body)[:2] == ("thinking...</think>answer", "")


def test_a_reasoning_field_turns_the_splitter_off() -> None:
    """vLLM with a reasoning parser, recent Ollama: the server split it already."""
    body = (
        sse(
            chunk(role="assistant", content=None, reasoning_content="Hmm."),
            chunk(content="Hello"),
            chunk(content="!"),
        )
        + b"data: [DONE]\n\n"
    )
    parser = make("deepseek-r1:8b")
    text, reasoning, _ = run(parser, body)
    assert (text, reasoning) == ("Hello!", "Hmm.")


def test_held_back_characters_flushed_at_the_finish() -> None:
    # no [DONE]: the finish_reason chunk completes the text, end() makes the Finish
    text, reasoning, _ = run(make(), stream_of(["<think>abc</th"], done=False))
    assert (text, reasoning) == ("", "abc</th")
    text, reasoning, _ = run(make(), stream_of(["<thi"]))
    assert (text, reasoning) == ("<thi", "")


def test_held_back_piece_is_still_activity() -> None:
    _, _, events = run(make(), stream_of(["<", "think>", "x"]))
    assert Delta(activity=True) in events  # the idle timer hears of "<" and "think>"


def test_plain_text_bypasses_the_splitter() -> None:
    parser = make()
    parser.feed(sse(chunk(role="assistant", content=""), chunk(content="Hello")))
    assert parser._think is None  # from here on the plain-text fast path


def test_unknown_think_tags_option() -> None:
    with pytest.raises(ConfigurationError, match="think_tags"):
        OpenAIProvider("m", base_url="http://127.0.0.1:9/v1", think_tags="maybe")


# --- through a real call ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "think_tags", "expected"),
    [
        ("deepseek-r1:8b", "auto", ("Hello!", "Okay, the user says hi.")),
        ("llama3.1", "open", ("Hello!", "Okay, the user says hi.")),
        ("deepseek-r1:8b", "off", ("Okay, the user says hi.</think>\n\nHello!", "")),
    ],
)
async def test_through_the_fake_server(
    model: str, think_tags: str, expected: tuple[str, str]
) -> None:
    pieces = ["Okay, the", " user says hi.</", "think>\n", "\nHello", "!"]
    with FakeProviderServer() as server:
        server.enqueue(Script(text=pieces))
        provider = OpenAIProvider(model, base_url=server.base_url, think_tags=think_tags)
        try:
            request = Request(messages=(), config=ProviderConfig())
            events = [e async for e in provider.stream(request)]
        finally:
            await provider.aclose()
    deltas = [e for e in events if isinstance(e, Delta)]
    assert ("".join(d.text for d in deltas), "".join(d.reasoning for d in deltas)) == expected
    assert isinstance(events[-1], Finish)
