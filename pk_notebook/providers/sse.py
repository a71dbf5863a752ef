"""A Server-Sent Events decoder that works on raw bytes, as they come off the socket.

It follows the WHATWG "event stream interpretation" rules: lines end with LF, CR
or CRLF (a CR at the end of one read and an LF at the start of the next are one
line ending); lines starting with ``:`` are comments; ``data`` lines of one event
are joined with LF; ``event``, ``id`` (ignored if it contains NUL) and ``retry``
(digits only) are honoured; a leading byte-order mark is dropped; a blank line
dispatches the event, and an event without data is not dispatched.

Why not httpx-sse? It sits on ``Response.aiter_lines()``, which decodes every
read to text, splits it into lines in Python and then hands each line to the
SSE parser one at a time: two generator hops and several string copies per
line. Here a read is split once, at the byte level, and only complete lines are
ever decoded, which is also what keeps a multi-byte UTF-8 sequence split across
reads intact and U+2028 inside data (it is neither CR nor LF). A line that
arrives in many reads is kept as a list of pieces and joined once, so an 8 MiB
event in 1460-byte reads costs linear time.

Measured with ``python -m benchmarks.providers`` (2 shared cores, Python 3.11,
httpx 0.28.1; the fake server in another process sends each event as its own
HTTP chunk, as real servers do), CPU per chunk of a 100k-chunk burst::

    httpx aiter_raw, no parsing                        9.4 us
    httpx-sse (aiter_lines) + json.loads              15.0 us   <- the bar
    OpenAIProvider through the whole Pipeline/Stream  14.3 us   (0.95x the bar)
    openai SDK AsyncStream                            94.8 us

httpx-sse alone already costs the whole bar, leaving nothing for the provider
and the pipeline; with this decoder (one split per read, a fast path for the
usual one-``data:``-line read, JSON scanned straight from it) the whole pipeline
stays under it. Figures: ``benchmarks/RESULTS-providers.md``.

Sizes are capped, because the bytes come from a server we do not control: a line
longer than ``max_line_bytes`` or an event whose data exceeds ``max_event_bytes``
raises :class:`~pk_notebook.runtime.errors.ProtocolError` as soon as the cap is
crossed, so one endless line costs at most about twice the cap (the pieces and
their join), never the whole stream. The defaults (16 MiB each) are twice the
largest event the test suite parses (8 MiB) and far above any real event: a chat
chunk is under 1 KiB, a Gemini event carrying an inline image a few MiB. The
decoder is dead after raising; the caller abandons the stream.
"""

from __future__ import annotations

from typing import NamedTuple, NoReturn

from ..runtime.errors import ProtocolError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "DEFAULT_MAX_LINE_BYTES", "SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"

#: default caps; see the module docstring for why these values
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
#: longest ``retry`` value read: int() of thousands of digits is slow or refused
_MAX_RETRY_DIGITS = 18


class ServerSentEvent(NamedTuple):
    """One dispatched event. ``event`` is ``"message"`` when the stream named none."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed it bytes with :meth:`feed`; it returns the events those bytes completed.

    ``last_event_id`` and ``retry`` keep the stream's current values, as the spec
    asks a client to (for reconnecting; pk_notebook does not reconnect streams).
    ``max_line_bytes`` and ``max_event_bytes`` bound what one line and one event's
    data may hold (:class:`ProtocolError` beyond them).
    """

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_fast_max",
        "_ids",
        "_max_event",
        "_max_line",
        "_partial",
        "_partial_size",
        "_skip_lf",
        "_started",
        "last_event_id",
        "retry",
    )

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if max_line_bytes < 1 or max_event_bytes < 1:
            raise ValueError("max_line_bytes and max_event_bytes must be positive")
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        # the fast path's read is one line holding one event's data: both caps apply
        self._fast_max = min(max_line_bytes, max_event_bytes)
        self._partial: list[bytes] = []  # pieces of a line whose end has not arrived
        self._partial_size = 0  # their total length
        self._data: list[bytes] = []  # data lines of the event being built
        self._data_size = 0  # their total length
        self._ids: list[tuple[str | None, int | None]] | None = None  # feed(): id, retry per event
        self._event: bytes | None = None
        self._skip_lf = False  # the last read ended in CR: an LF first in the next is its pair
        self._started = False
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one read; return the events it completed (often none, often several).

        Each event carries the ``id``/``retry`` in force when it was dispatched, not
        at the end of the read (an ``id:`` line after an event in the same read
        belongs to the next one; found by the fuzz test).
        """
        ids: list[tuple[str | None, int | None]] = []
        self._ids = ids
        try:
            raw = self.feed_raw(chunk)
        finally:
            self._ids = None
        if len(ids) != len(raw):  # the fast path: one event, no field lines in the read
            ids = [(self.last_event_id, self.retry)] * len(raw)
        return [
            ServerSentEvent(
                data.decode("utf-8", "replace"),
                name.decode("utf-8", "replace") if name else "message",
                event_id,
                retry,
            )
            for (data, name), (event_id, retry) in zip(raw, ids, strict=True)
        ]

    def feed_raw(self, chunk: bytes) -> list[tuple[bytes, bytes | None]]:
        """Like :meth:`feed`, but ``(data, event name or None)`` as undecoded bytes.

        The providers' hot path: ``json.loads`` takes bytes, so the data is never
        decoded twice, and the common read, exactly one ``data: ...`` line and
        its blank line, is recognised without splitting anything.
        """
        if (
            chunk[:6] == b"data: "
            and chunk[-2:] == b"\n\n"
            and chunk.find(b"\n") == len(chunk) - 2
            and self._started
            and not (self._partial or self._data or self._skip_lf or self._event)
            and b"\r" not in chunk
            and len(chunk) <= self._fast_max
        ):
            return [(chunk[6:-2], None)]
        if not chunk:
            return []  # an empty read must not consume a pending CR's LF (found by fuzzing)
        if not self._started:
            if self._partial:
                chunk = b"".join(self._partial) + chunk
                self._partial.clear()
            if len(chunk) < 3 and _BOM.startswith(chunk):
                self._partial.append(chunk)  # maybe a BOM split across reads
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        partial = self._partial
        max_line = self._max_line
        if partial:
            end = chunk.find(b"\n")
            if end < 0:
                partial.append(chunk)
                self._partial_size += len(chunk)
                if self._partial_size > max_line:
                    self._too_long(partial[0])
                return []
            if self._partial_size + end > max_line:
                self._too_long(partial[0])
            partial.append(chunk)
            chunk = b"".join(partial)  # once per completed line: linear overall
            partial.clear()
            self._partial_size = 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if len(chunk) > max_line and (
            len(tail) > max_line or any(len(line) > max_line for line in lines)
        ):
            self._too_long(chunk)
        if tail:
            partial.append(tail)
            self._partial_size = len(tail)
        events: list[tuple[bytes, bytes | None]] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(self._dispatch())
                else:
                    self._event = None
                continue
            if line[:6] == b"data: ":
                data.append(line[6:])
                if len(data) > 1:  # one line is bounded by the line cap; several add up
                    self._count_data()
                continue
            self._field(line)
        return events

    def _count_data(self) -> None:
        data = self._data
        if len(data) == 2:
            self._data_size = len(data[0]) + len(data[1])
        else:
            self._data_size += len(data[-1])
        if self._data_size > self._max_event:
            self._too_big()

    def flush(self) -> list[tuple[bytes, bytes | None]]:
        """At the end of the stream: an unterminated event is *not* dispatched (per spec)."""
        self._partial.clear()
        self._data.clear()
        self._partial_size = self._data_size = 0
        self._event = None
        return []

    def _too_long(self, line: bytes) -> NoReturn:
        head = line[:200]
        self.flush()  # free the pieces at once: the stream is abandoned
        raise ProtocolError(
            f"the server sent an SSE line longer than {self._max_line} bytes "
            "(max_line_bytes); the stream was abandoned. Raise StreamLimits.max_event_bytes "
            "if such lines are expected.",
            raw=head.decode("utf-8", "replace"),
        )

    def _too_big(self) -> NoReturn:
        head = (self._data[0] if self._data else b"")[:200]
        self.flush()
        raise ProtocolError(
            f"the server sent an SSE event with more than {self._max_event} bytes of data "
            "(max_event_bytes); the stream was abandoned. Raise StreamLimits.max_event_bytes "
            "if such events are expected.",
            raw=head.decode("utf-8", "replace"),
        )

    def _dispatch(self) -> tuple[bytes, bytes | None]:
        data = self._data
        if len(data) == 1:
            raw = data[0]
        else:
            raw = b"\n".join(data)
            self._data_size = 0
        data.clear()
        if self._ids is not None:
            self._ids.append((self.last_event_id, self.retry))
        name = self._event
        self._event = None
        return raw, name

    def _field(self, line: bytes) -> None:
        if line[:1] == b":":
            return  # a comment, e.g. a keep-alive
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            if len(self._data) > 1:
                self._count_data()
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
                self.retry = int(value)
        # any other field name is ignored, as the spec says
