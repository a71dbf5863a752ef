"""The SSE decoder against the spec's corner cases."""

from __future__ import annotations

import time

import pytest

from pk_notebook.providers.sse import ServerSentEvent, SSEDecoder


def decode(*reads: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for read in reads:
        events.extend(decoder.feed(read))
    return events


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    "newline",
    [pytest.param(b"\n", id="lf"), pytest.param(b"\r", id="cr"), pytest.param(b"\r\n", id="crlf")],
)
@pytest.mark.parametrize(
    "size", [pytest.param(1, id="byte-by-byte"), pytest.param(4096, id="one-read")]
)
def test_line_endings(newline: bytes, size: int) -> None:
    body = newline.join([b"event: a", b"data: one", b"data: two", b"", b"data: three", b"", b""])
    events = decode(*split_every(body, size))
    assert [(e.event, e.data) for e in events] == [("a", "one\ntwo"), ("message", "three")]


def test_cr_at_end_of_read_then_lf_is_one_line_ending() -> None:
    events = decode(b"data: x\r", b"\ndata: y\r\n\r\n")
    assert [e.data for e in events] == ["x\ny"]


def test_empty_read_between_cr_and_lf_changes_nothing() -> None:
    # found by the fuzz test (test_fuzz.py): the empty read used to eat the pending LF
    assert decode(b"data: x\r", b"", b"\n") == []
    assert [e.data for e in decode(b"data: x\r", b"", b"\n\n")] == ["x"]


def test_an_event_carries_the_id_in_force_when_it_was_dispatched() -> None:
    # found by the fuzz test: an id after the event, in the same read, is the next one's
    events = decode(b"id: 1\ndata: a\n\nid: 2\nretry: 5\ndata: b\n\nid: 3\n")
    assert [(e.data, e.id, e.retry) for e in events] == [("a", "1", None), ("b", "2", 5)]


def test_comments_produce_nothing() -> None:
    assert decode(b": keep-alive\n\n: OPENROUTER PROCESSING\n\n") == []
    assert [e.data for e in decode(b": c\ndata: a\n: c\n\n")] == ["a"]


def test_fields_id_retry_and_unknown() -> None:
    decoder = SSEDecoder()
    events = decoder.feed(
        b"id: 7\nretry: 1500\nfoo: bar\ndata\n\nid: a\x00b\nretry: x1\ndata:z\n\n"
    )
    assert [(e.data, e.id, e.retry) for e in events] == [("", "7", 1500), ("z", "7", 1500)]
    assert decoder.last_event_id == "7"


def test_event_without_data_is_not_dispatched_and_its_name_is_reset() -> None:
    assert [(e.event, e.data) for e in decode(b"event: ping\n\ndata: x\n\n")] == [("message", "x")]


def test_value_without_space_and_colon_in_value() -> None:
    assert [e.data for e in decode(b"data:a: b\n\n")] == ["a: b"]
    assert [e.data for e in decode(b"data:  two spaces\n\n")] == [" two spaces"]


def test_unterminated_event_at_end_is_dropped() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: partial") == []
    assert decoder.flush() == []


def test_bom_is_dropped_even_when_split() -> None:
    assert [e.data for e in decode(b"\xef\xbb", b"\xbfdata: x\n\n")] == ["x"]


def test_u2028_and_u2029_stay_inside_data() -> None:
    text = "a\u2028b\u2029c\u0085d"
    events = decode(f"data: {text}\n\n".encode())
    assert [e.data for e in events] == [text]


def test_multibyte_utf8_split_across_reads() -> None:
    body = "data: 🕵️‍♀️ é 中文\n\n".encode()
    for size in (1, 2, 3, 5):
        assert [e.data for e in decode(*split_every(body, size))] == ["🕵️‍♀️ é 中文"]


def test_large_event_in_small_reads_is_linear() -> None:
    payload = b"x" * (8 * 1024 * 1024)
    body = b"data: " + payload + b"\n\n"
    reads = split_every(body, 1460)
    started = time.perf_counter()
    events = decode(*reads)
    elapsed = time.perf_counter() - started
    assert len(events) == 1 and len(events[0].data) == len(payload)
    # quadratic joining would copy ~24 GB here and take minutes; linear takes milliseconds
    assert elapsed < 2.0


def test_large_multiline_event_in_small_reads_is_linear() -> None:
    body = b"".join(b"data: " + b"y" * 100 + b"\n" for _ in range(80_000)) + b"\n"
    started = time.perf_counter()
    events = decode(*split_every(body, 1460))
    assert time.perf_counter() - started < 2.0
    assert len(events) == 1 and events[0].data.count("\n") == 79_999
