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

Measured on the 2-core reference machine, a burst of 100k OpenAI-style chunks
over loopback, CPU per chunk (``python -m benchmarks.providers``; see
``benchmarks/RESULTS-providers.md`` for the current figures)::

    httpx aiter_bytes, no parsing                     ~6.6 us
    httpx-sse (aiter_lines) + json.loads              ~13.5 us
    this decoder + json.loads                         ~8.5 us
    OpenAIProvider through the whole Pipeline/Stream  ~11.5 us

so the decoder leaves room for the pipeline under the httpx-sse + json bar,
which httpx-sse itself (at the bar by definition) would not.
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
        events: list[ServerSentEvent] = []
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

    def flush(self) -> list[ServerSentEvent]:
        """At the end of the stream: an unterminated event is *not* dispatched (per spec)."""
        self._partial.clear()
        self._data.clear()
        self._event = None
        return []

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        if len(data) == 1:
            raw = data[0]
        else:
            raw = b"\n".join(data)
        data.clear()
        name = self._event
        self._event = None
        return ServerSentEvent(
            raw.decode("utf-8", "replace"),
            name.decode("utf-8", "replace") if name else "message",
            self.last_event_id,
            self.retry,
        )

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
