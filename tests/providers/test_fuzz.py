"""Property-based fuzzing (hypothesis) of the SSE decoder and of each provider's parser.

Properties: arbitrary bytes, splits and JSON shapes never raise anything from
``feed`` (a parser keeps a typed error in ``.error``; the decoder raises only
:class:`ProtocolError`), never hang (each example has a deadline), and the text
equals the concatenation of the valid deltas, however the bytes are split.
Example counts are kept small so the whole file runs in a few seconds.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pk_notebook.providers.sse import SSEDecoder
from pk_notebook.runtime.errors import ProtocolError, ProviderError, StreamError
from pk_notebook.runtime.types import Delta, Finish, Usage

from ._parsers import DIALECTS, make_parser

FUZZ = settings(
    max_examples=120,
    deadline=2000,  # ms per example: a hang or a quadratic path fails, a slow CI does not
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ----------------------------------------------------------------------

SSE_TOKENS = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"data",
        b"event: ",
        b"event: ping",
        b"id: 7",
        b"id: a\x00b",
        b"retry: 15",
        b"retry: x",
        b": keep-alive",
        b":",
        b"\n",
        b"\n\n",
        b"\r",
        b"\r\n",
        b"\xef\xbb\xbf",
        b"[DONE]",
        b'{"a": 1}',
        "é€😀\u2028".encode(),
        b"\xff\xfe",
    ]
)
SSE_BYTES = st.lists(SSE_TOKENS | st.binary(max_size=6), max_size=40).map(b"".join)

PROTOCOL_KEYS = [
    "choices", "delta", "content", "index", "finish_reason", "usage", "prompt_tokens",
    "completion_tokens", "prompt_tokens_details", "tool_calls", "function", "arguments",
    "name", "id", "refusal", "reasoning_content", "reasoning", "type", "text", "thinking",
    "message", "content_block", "partial_json", "stop_reason", "input", "candidates",
    "parts", "functionCall", "args", "finishReason", "usageMetadata", "promptTokenCount",
    "promptFeedback", "blockReason", "thought", "model", "modelVersion", "error",
]  # fmt: skip
PROTOCOL_STRINGS = [
    "text", "thinking", "text_delta", "thinking_delta", "input_json_delta", "tool_use",
    "message_start", "content_block_start", "content_block_delta", "message_delta",
    "message_stop", "error", "stop", "pause_turn", "refusal", "STOP",
]  # fmt: skip

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(PROTOCOL_STRINGS),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(PROTOCOL_KEYS) | st.text(max_size=4), children, max_size=5
        )
    ),
    max_leaves=25,
)
TEXTS = st.lists(st.text(max_size=12), max_size=8)


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut at arbitrary places (possibly inside a UTF-8 sequence or a CRLF)."""
    cuts = st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12)
    return cuts.map(
        lambda points: [
            data[a:b]
            for a, b in zip([0, *sorted(points)], [*sorted(points), len(data)], strict=True)
        ]
    )


# --- the SSE decoder -----------------------------------------------------------------


def decode(reads: list[bytes]) -> tuple[list[Any], str | None, int | None] | ProtocolError:
    decoder = SSEDecoder(max_line_bytes=64, max_event_bytes=96)
    events: list[Any] = []
    try:
        for read in reads:
            events += decoder.feed(read)
    except ProtocolError as exc:  # the only exception the decoder may raise
        return exc
    return events, decoder.last_event_id, decoder.retry


@FUZZ
@given(st.data())
def test_sse_decoder_is_split_invariant_and_raises_only_protocol_errors(data: Any) -> None:
    body = data.draw(SSE_BYTES)
    reads = data.draw(splits(body))
    whole = decode([body])
    split = decode(reads)
    if isinstance(whole, ProtocolError) or isinstance(split, ProtocolError):
        # a cap was crossed: where the read ended may decide *when*, never *whether*
        assert isinstance(whole, ProtocolError) and isinstance(split, ProtocolError)
        return
    assert whole == split
    for event in whole[0]:
        assert isinstance(event.data, str) and isinstance(event.event, str)


# --- the provider parsers --------------------------------------------------------------


def sse_event(payload: Any, name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(payload).encode() + b"\n\n"


def opening(dialect: str) -> bytes:
    if dialect == "anthropic":
        return sse_event(
            {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 1}}},
            "message_start",
        ) + sse_event(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            "content_block_start",
        )
    return b""


def text_event(dialect: str, text: str) -> bytes:
    if dialect == "openai":
        return sse_event({"choices": [{"index": 0, "delta": {"content": text}}]})
    if dialect == "anthropic":
        payload = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
        payload["delta"]["text"] = text  # type: ignore[index]
        return sse_event(payload, "content_block_delta")
    return sse_event({"candidates": [{"index": 0, "content": {"parts": [{"text": text}]}}]})


def closing(dialect: str) -> bytes:
    if dialect == "openai":
        return (
            sse_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            + b"data: [DONE]\n\n"
        )
    if dialect == "anthropic":
        return sse_event(
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {}},
            "message_delta",
        ) + sse_event({"type": "message_stop"}, "message_stop")
    return sse_event({"candidates": [{"index": 0, "finishReason": "STOP"}]})


def run(dialect: str, reads: list[bytes]) -> tuple[Any, list[Any]]:
    """Feed like the provider loop; every exception out of ``feed``/``end`` fails the test."""
    parser = make_parser(dialect)
    events: list[Any] = []
    for read in reads:
        events += parser.feed(read)
        if parser.done or parser.error is not None:
            break
    if parser.error is None and not parser.done:
        final = parser.end()
        if final is not None:
            events.append(final)
    return parser, events


def check_events(parser: Any, events: list[Any]) -> str:
    """The events are well typed; return their text."""
    text = ""
    for event in events:
        if isinstance(event, Delta):
            assert type(event.text) is str and type(event.reasoning) is str
            text += event.text
        else:
            assert isinstance(event, Finish)
            assert event.reason is None or type(event.reason) is str
            assert event.usage is None or isinstance(event.usage, Usage)
            for call in event.tool_calls:
                assert type(call.arguments) is str and type(call.name) is str
    if parser.error is not None:
        assert isinstance(parser.error, (ProtocolError, ProviderError))
        assert isinstance(parser.error, StreamError)
        assert parser.error.partial_text == text
    assert parser.text == text
    return text


@FUZZ
@given(st.sampled_from(DIALECTS), TEXTS, st.data())
def test_valid_stream_text_is_the_concatenation_of_its_deltas(
    dialect: str, texts: list[str], data: Any
) -> None:
    body = opening(dialect) + b"".join(text_event(dialect, t) for t in texts) + closing(dialect)
    parser, events = run(dialect, data.draw(splits(body)))
    assert parser.error is None
    assert check_events(parser, events) == "".join(texts)
    assert isinstance(events[-1], Finish)


EVENT_NAMES = st.none() | st.sampled_from([*PROTOCOL_STRINGS[5:10], "ping", "error"])


@FUZZ
@given(
    st.sampled_from(DIALECTS),
    TEXTS,
    JSON_VALUES,
    EVENT_NAMES,
    st.sampled_from(["top", "choice", "delta", "candidate", "part", "block-delta"]),
    TEXTS,
    st.data(),
)
def test_arbitrary_json_shapes_give_typed_errors_and_keep_the_valid_text(
    dialect: str,
    before: list[str],
    value: Any,
    name: str | None,
    where: str,
    after: list[str],
    data: Any,
) -> None:
    """An arbitrary JSON value, placed where the protocol expects an object, a delta..."""
    payload: Any = {
        "top": value,
        "choice": {"choices": [value]},
        "delta": {"choices": [{"index": 0, "delta": value}]},
        "candidate": {"candidates": [value]},
        "part": {"candidates": [{"content": {"parts": [value]}}]},
        "block-delta": {"type": "content_block_delta", "index": 0, "delta": value},
    }[where]
    head = opening(dialect) + b"".join(text_event(dialect, t) for t in before)
    odd = sse_event(payload, name if dialect == "anthropic" else None)
    tail = b"".join(text_event(dialect, t) for t in after) + closing(dialect)

    prefix, prefix_events = run(dialect, [head + odd])
    prefix_text = check_events(prefix, [e for e in prefix_events if isinstance(e, Delta)])
    assert prefix_text.startswith("".join(before))

    parser, events = run(dialect, data.draw(splits(head + odd + tail)))
    text = check_events(parser, events)
    if prefix.error is not None or prefix.done:
        assert text == prefix_text  # the stream ended at the odd event
    else:
        assert text == prefix_text + "".join(after)


@FUZZ
@given(st.sampled_from(DIALECTS), SSE_BYTES, st.binary(max_size=64), st.data())
def test_arbitrary_bytes_never_raise_from_a_parser(
    dialect: str, noise: bytes, raw: bytes, data: Any
) -> None:
    body = opening(dialect) + text_event(dialect, "ok") + noise + b"data: " + raw + b"\n\n"
    parser, events = run(dialect, data.draw(splits(body)))
    check_events(parser, events)
