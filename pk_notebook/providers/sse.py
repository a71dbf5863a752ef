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
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "ServerSentEvent"]

_BOM = b"\xef\xbb\xbf"


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
    """

    __slots__ = ("_data", "_event", "_partial", "_skip_lf", "_started", "last_event_id", "retry")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of a line whose end has not arrived
        self._data: list[bytes] = []  # data lines of the event being built
        self._event: bytes | None = None
        self._skip_lf = False  # the last read ended in CR: an LF first in the next is its pair
        self._started = False
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode one read; return the events it completed (often none, often several)."""
        return [
            ServerSentEvent(
                data.decode("utf-8", "replace"),
                name.decode("utf-8", "replace") if name else "message",
                self.last_event_id,
                self.retry,
            )
            for data, name in self.feed_raw(chunk)
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
        ):
            return [(chunk[6:-2], None)]
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
        if partial:
            end = chunk.find(b"\n")
            if end < 0:
                partial.append(chunk)
                return []
            partial.append(chunk)
            chunk = b"".join(partial)  # once per completed line: linear overall
            partial.clear()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            partial.append(tail)
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
                continue
            self._field(line)
        return events

    def flush(self) -> list[tuple[bytes, bytes | None]]:
        """At the end of the stream: an unterminated event is *not* dispatched (per spec)."""
        self._partial.clear()
        self._data.clear()
        self._event = None
        return []

    def _dispatch(self) -> tuple[bytes, bytes | None]:
        data = self._data
        raw = data[0] if len(data) == 1 else b"\n".join(data)
        data.clear()
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
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value and value.isdigit():
                self.retry = int(value)
        # any other field name is ignored, as the spec says
