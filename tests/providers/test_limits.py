"""Nothing a server sends grows memory without bound: SSE line and event size, answer
size and tool-call size are capped, each with a typed error that keeps the partial text.

Memory is measured with tracemalloc and bounded generously (a few times the cap):
without the caps, each case grows until the test's guard stops it.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pk_notebook import Pipeline, ProtocolError, ProviderMiddleware, RetryPolicy
from pk_notebook.providers import OpenAIProvider
from pk_notebook.providers.limits import DEFAULT_LIMITS, StreamLimits
from pk_notebook.providers.sse import DEFAULT_MAX_LINE_BYTES, SSEDecoder
from pk_notebook.runtime.errors import ConfigurationError
from pk_notebook.testing import FakeProviderServer, Script

from ._parsers import make_parser

MiB = 1024 * 1024
READ = 64 * 1024


def fresh(size: int, byte: bytes = b"x") -> bytes:
    """A new bytes object each call (a repeated object would not allocate)."""
    return byte * size


def grow_until_error(feed: Callable[[bytes], Any], reads: Iterator[bytes], bound: int) -> Any:
    """Feed reads until ``feed`` raises or returns an error; fail if memory passes ``bound``.

    ``feed`` is a decoder's ``feed_raw`` (raises) or :func:`parser_feed` (returns the error).

    Returns (error, traced peak growth, bytes fed).
    """
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fed = 0
        for read in reads:
            fed += len(read)
            try:
                error = feed(read)
            except ProtocolError as exc:
                error = exc
            if isinstance(error, BaseException):
                return error, tracemalloc.get_traced_memory()[1] - base, fed
            current = tracemalloc.get_traced_memory()[0] - base
            assert current < bound, f"memory grew by {current / MiB:.0f} MiB without an error"
        raise AssertionError("the reads ended without an error")
    finally:
        tracemalloc.stop()


def endless(first: bytes, size: int = READ, total: int = 256 * MiB) -> Iterator[bytes]:
    yield first
    for _ in range(total // size):
        yield fresh(size)


# --- the SSE decoder -----------------------------------------------------------------


def test_defaults_are_documented_values() -> None:
    assert DEFAULT_MAX_LINE_BYTES == 16 * MiB == DEFAULT_LIMITS.max_event_bytes
    assert DEFAULT_LIMITS.max_answer_chars == 8 * MiB == DEFAULT_LIMITS.max_tool_chars


def test_endless_line_of_256_mib_stops_at_the_line_cap() -> None:
    decoder = SSEDecoder()
    error, peak, fed = grow_until_error(
        decoder.feed_raw, endless(b"data: {"), bound=3 * DEFAULT_MAX_LINE_BYTES
    )
    assert isinstance(error, ProtocolError) and "max_line_bytes" in str(error)
    assert error.raw is not None and error.raw.startswith("data: {")
    assert fed <= DEFAULT_MAX_LINE_BYTES + 2 * READ
    assert peak < 3 * DEFAULT_MAX_LINE_BYTES
    assert decoder._partial == [] and decoder._data == []  # the pieces were let go at once


def test_endless_line_in_one_huge_read() -> None:
    decoder = SSEDecoder(max_line_bytes=MiB, max_event_bytes=MiB)
    with pytest.raises(ProtocolError, match="max_line_bytes"):
        decoder.feed_raw(b"data: " + fresh(2 * MiB) + b"\n\n")
    decoder = SSEDecoder(max_line_bytes=MiB, max_event_bytes=MiB)
    with pytest.raises(ProtocolError, match="max_line_bytes"):
        decoder.feed_raw(b"data: a\n\ndata: " + fresh(2 * MiB))


def test_endless_event_of_short_lines_stops_at_the_event_cap() -> None:
    decoder = SSEDecoder(max_event_bytes=4 * MiB)
    line = b"data: " + b"y" * 100 + b"\n"

    def reads() -> Iterator[bytes]:
        for _ in range(256 * MiB // READ):
            yield line * (READ // len(line))

    error, peak, fed = grow_until_error(decoder.feed_raw, reads(), bound=12 * MiB)
    assert isinstance(error, ProtocolError) and "max_event_bytes" in str(error)
    assert fed < 5 * MiB and peak < 12 * MiB  # 4 MiB of data is 4.3 MiB of lines


def test_events_up_to_the_cap_still_parse() -> None:
    decoder = SSEDecoder(max_line_bytes=MiB, max_event_bytes=MiB)
    payload = b"z" * (MiB - 6)
    body = b"data: " + payload + b"\n\n"
    events = []
    for i in range(0, len(body), 1460):
        events += decoder.feed_raw(body[i : i + 1460])
    assert events == [(payload, None)]
    assert SSEDecoder(max_line_bytes=MiB).feed_raw(b"data: " + payload + b"\n\n") == [
        (payload, None)
    ]


def test_retry_field_with_thousands_of_digits_is_ignored() -> None:
    decoder = SSEDecoder()
    assert [e.data for e in decoder.feed(b"retry: " + b"9" * 5000 + b"\ndata: x\n\n")] == ["x"]
    assert decoder.retry is None


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_answer_chars"):
        StreamLimits(max_answer_chars=0)
    with pytest.raises(ValueError):
        SSEDecoder(max_line_bytes=0)


# --- the parsers: answer size, tool calls, events -------------------------------------


def openai_chunks(delta: Callable[[int], dict[str, Any]]) -> Iterator[bytes]:
    for i in range(10_000):  # several times what any cap below needs
        payload = {"choices": [{"index": 0, "delta": delta(i)}]}
        yield b"data: " + json.dumps(payload).encode() + b"\n\n"


def anthropic_events(delta: Callable[[int], dict[str, Any]], opening: bytes) -> Iterator[bytes]:
    yield opening
    for i in range(10_000):  # several times what any cap below needs
        payload = {"type": "content_block_delta", "index": 0, "delta": delta(i)}
        yield b"event: content_block_delta\ndata: " + json.dumps(payload).encode() + b"\n\n"


def gemini_events(part: Callable[[int], dict[str, Any]]) -> Iterator[bytes]:
    for i in range(10_000):  # several times what any cap below needs
        payload = {"candidates": [{"index": 0, "content": {"parts": [part(i)]}}]}
        yield b"data: " + json.dumps(payload).encode() + b"\n\n"


PIECE = "w" * 1000
ANTHROPIC_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"model":"m"}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"tool_use","id":"t1","name":"f","input":{}}}\n\n'
)

ANSWER_CASES = {
    "openai-text": ("openai", lambda: openai_chunks(lambda i: {"content": PIECE})),
    "openai-reasoning": (
        "openai",
        lambda: openai_chunks(lambda i: {"reasoning_content": PIECE, "content": None}),
    ),
    "anthropic-text": (
        "anthropic",
        lambda: anthropic_events(lambda i: {"type": "text_delta", "text": PIECE}, b""),
    ),
    "anthropic-thinking": (
        "anthropic",
        lambda: anthropic_events(lambda i: {"type": "thinking_delta", "thinking": PIECE}, b""),
    ),
    "gemini-text": ("gemini", lambda: gemini_events(lambda i: {"text": PIECE})),
}

TOOL_CASES = {
    "openai-arguments": (
        "openai",
        lambda: openai_chunks(
            lambda i: {"tool_calls": [{"index": 0, "id": "c", "function": {"arguments": PIECE}}]}
        ),
    ),
    "openai-many-empty-calls": (
        "openai",
        lambda: openai_chunks(lambda i: {"tool_calls": [{"index": i, "function": {"name": "f"}}]}),
    ),
    "anthropic-partial-json": (
        "anthropic",
        lambda: anthropic_events(
            lambda i: {"type": "input_json_delta", "partial_json": PIECE}, ANTHROPIC_START
        ),
    ),
    "gemini-function-calls": (
        "gemini",
        lambda: gemini_events(lambda i: {"functionCall": {"name": "f", "args": {"a": PIECE}}}),
    ),
}


def parser_feed(parser: Any) -> Callable[[bytes], Any]:
    def feed(read: bytes) -> Any:
        parser.feed(read)
        return parser.error

    return feed


@pytest.mark.parametrize("case", list(ANSWER_CASES))
def test_answer_size_cap(case: str) -> None:
    dialect, reads = ANSWER_CASES[case]
    limits = StreamLimits(max_answer_chars=2 * MiB)
    parser = make_parser(dialect, limits=limits)
    error, peak, _ = grow_until_error(parser_feed(parser), reads(), bound=16 * MiB)
    assert isinstance(error, ProtocolError) and "max_answer_chars" in str(error)
    assert error.raw is not None and PIECE in error.raw
    assert error.partial_text == parser.text
    assert len(error.partial_text) <= 2 * MiB
    if "text" in case:
        assert len(error.partial_text) > 2 * MiB - 2 * len(PIECE)
    assert peak < 16 * MiB


@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_tool_call_size_cap(case: str) -> None:
    dialect, reads = TOOL_CASES[case]
    parser = make_parser(dialect, limits=StreamLimits(max_tool_chars=MiB // 4))
    error, peak, _ = grow_until_error(parser_feed(parser), reads(), bound=16 * MiB)
    assert isinstance(error, ProtocolError) and "max_tool_chars" in str(error)
    assert peak < 16 * MiB


def test_event_cap_comes_from_the_limits() -> None:
    parser = make_parser("openai", limits=StreamLimits(max_event_bytes=64 * 1024))
    parser.feed(b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n')
    events = parser.feed(b'data: {"choices":[{"delta":{"content":"' + fresh(100 * 1024))
    assert events == [] and isinstance(parser.error, ProtocolError)
    assert parser.error.partial_text == "ok"


def test_default_limits_accept_a_long_real_answer() -> None:
    """128k tokens of output (~0.5 M characters) is far below the default caps."""
    parser = make_parser("openai")
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"word " * 20 + b'"}}]}\n\n'
    for _ in range(6000):  # 600k characters
        parser.feed(chunk)
    parser.feed(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    finish = parser.feed(b"data: [DONE]\n\n")
    assert parser.error is None and len(parser.text) == 600_000 and finish


# --- through a real server: an endless line --------------------------------------------


async def test_endless_line_from_a_server_is_cut_at_the_cap() -> None:
    with FakeProviderServer() as server:
        server.enqueue(Script("one two", fault="endless_line", after=2))
        provider = OpenAIProvider("m", base_url=server.base_url)
        pipe = Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)))
        bound = 4 * DEFAULT_MAX_LINE_BYTES
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            stream = await pipe.execute_stream("user", "hi")
            reader = asyncio.ensure_future(stream.collect())
            while not reader.done():  # a guard: without the cap this grows until stopped
                grown = tracemalloc.get_traced_memory()[0] - base
                if grown > bound:
                    reader.cancel()
                    break
                await asyncio.sleep(0.005)
            with pytest.raises((ProtocolError, asyncio.CancelledError)) as caught:
                await reader
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
            await pipe.shutdown()
        assert isinstance(caught.value, ProtocolError), f"grew past {bound / MiB:.0f} MiB"
        assert "max_line_bytes" in str(caught.value)
        assert caught.value.partial_text == "one two" and stream.text == "one two"
        assert peak < bound
        assert await server.requests[-1].until_ended(5)
        assert server.requests[-1].disconnected
