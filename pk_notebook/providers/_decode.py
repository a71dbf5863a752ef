"""Decompressing a response body without letting it decide how much memory we use.

A server (or anything between us and it) may compress the event stream. A few
hundred kilobytes of gzip can inflate to gigabytes ("a zip bomb"), and a reader
that inflates whatever arrives in one call would hold all of it at once. Here a
compressed body is inflated in pieces of at most :data:`PIECE` bytes (zlib's
``max_length``; the rest of the input waits in ``unconsumed_tail``), and two caps
from :class:`BodyLimits` end it with a :class:`ProtocolError` that keeps the
partial text:

* ``max_bytes``: decompressed bytes in all;
* ``max_ratio``: decompressed bytes per compressed byte *consumed*, checked once
  :data:`RATIO_GRACE` bytes have come out (small bodies are allowed any ratio).
  Deflate cannot exceed about 1032x, which is what a bomb uses (0.5 MiB of gzip
  for 512 MiB); an event stream repeating one identical chunk, the most
  compressible real answer (a model stuck repeating a token), measured 220-257x.
  The default of 500x ends such a bomb after about a megabyte, long before the
  absolute cap would, and is twice what any stream we measured needed.

Whatever the caps, memory does not follow the body: at most one piece is
inflated at a time. (An uncompressed body is bounded by the parser's own caps,
``limits.StreamLimits``; these caps are about what compression adds.)

Both transports hand the *raw* body here (aiohttp with ``auto_decompress=False``,
httpx through ``Response.stream``), so the caps and the errors are the same
whichever one is used. An uncompressed body is not wrapped at all: the hot path
reads straight from the transport.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ..runtime.errors import ConfigurationError, ProtocolError

#: what providers ask servers for; anything else would arrive undecodable
ACCEPT_ENCODING = "gzip, deflate"
#: the most decompressed bytes returned by one read
PIECE = 256 * 1024
#: decompressed bytes before the ratio cap applies
RATIO_GRACE = 1024 * 1024
#: default caps (see BodyLimits)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_RATIO = 500.0

Reader = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """Caps on a compressed response body once decompressed.

    ``max_bytes``: the most decompressed bytes one response may produce (default
    256 MiB, far above any real answer). ``max_ratio``: the most decompressed bytes
    per compressed byte (default 500; deflate's own maximum is about 1032).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_ratio: float = DEFAULT_MAX_RATIO

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ConfigurationError(f"max_decompressed_bytes must be >= 1, not {self.max_bytes}")
        if not self.max_ratio >= 1:
            raise ConfigurationError(f"max_compression_ratio must be >= 1, not {self.max_ratio}")


class _Decompressor(Protocol):
    """What is used of ``zlib.decompressobj()`` (its class is not public)."""

    @property
    def eof(self) -> bool: ...

    @property
    def unconsumed_tail(self) -> bytes: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = ..., /) -> bytes: ...


def _wbits(encoding: str) -> int | None:
    if encoding in ("gzip", "x-gzip"):
        return 16 + zlib.MAX_WBITS
    if encoding == "deflate":
        return 0  # decided by the first bytes: zlib-wrapped or raw (both are sent as "deflate")
    return None


class _Inflater:
    """A reader giving the decompressed body of ``read``, in bounded pieces."""

    __slots__ = (
        "_decoder",
        "_eof",
        "_error",
        "_finished",
        "_in",
        "_limits",
        "_out",
        "_provider",
        "_read",
        "_tail",
        "_wbits",
    )

    def __init__(self, read: Reader, wbits: int, limits: BodyLimits, provider: str) -> None:
        self._read = read
        self._wbits = wbits
        self._limits = limits
        self._provider = provider
        self._decoder: _Decompressor | None = None
        self._tail = b""
        self._in = 0
        self._out = 0
        self._eof = False
        self._finished = False
        self._error: ProtocolError | None = None

    def _start(self, data: bytes) -> _Decompressor:
        wbits = self._wbits
        if wbits == 0:  # deflate: a zlib header (RFC 1950) or raw deflate (what IIS sends)
            zlib_header = (
                len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            )
            wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
        self._wbits = wbits
        return zlib.decompressobj(wbits)

    async def __call__(self) -> bytes:
        if self._error is not None:
            raise self._error
        while True:
            if self._tail:
                data, self._tail = self._tail, b""
            else:
                if self._eof:
                    return b""
                data = await self._read()
                if not data:
                    self._eof = True
                    return b""
                if self._finished:
                    continue  # bytes after the compressed stream's end: not part of the body
            decoder = self._decoder or self._start(data)
            self._decoder = decoder
            # one byte past the cap tells a body that ends exactly at it from one that goes on
            room = self._limits.max_bytes - self._out
            try:
                out = decoder.decompress(data, min(PIECE, room + 1))
            except zlib.error as exc:
                raise ProtocolError(
                    f"{self._provider} sent a compressed body that could not be decoded ({exc})",
                    raw=None,
                ) from None
            self._tail = decoder.unconsumed_tail
            self._in += len(data) - len(self._tail)
            if decoder.eof:
                self._decoder = None
                rest = decoder.unused_data
                if rest[:2] == b"\x1f\x8b" and self._wbits > zlib.MAX_WBITS:
                    self._tail = rest  # another gzip member (concatenated gzip is still gzip)
                else:
                    self._finished = True
            if out:
                return self._count(out, room)

    def _count(self, out: bytes, room: int) -> bytes:
        """``out``, cut at the absolute cap; past a cap, the next read raises the error
        (so the text that arrived before it reaches the parser first)."""
        limits = self._limits
        if len(out) > room:
            out = out[:room]
            why = f"more than {limits.max_bytes:,} bytes (max_decompressed_bytes)"
        elif self._out + len(out) > RATIO_GRACE and self._out + len(out) > limits.max_ratio * max(
            self._in, 1
        ):
            why = (
                f"{self._out + len(out):,} bytes out of {self._in:,} compressed, more than "
                f"{limits.max_ratio:g}x (max_compression_ratio)"
            )
        else:
            self._out += len(out)
            return out
        self._out += len(out)
        self._tail = b""
        self._error = ProtocolError(
            f"{self._provider} sent a compressed body that inflates to {why}; it was abandoned "
            "as a possible decompression bomb. Raise the limit on the provider if this server "
            "really sends such bodies.",
            raw=None,
        )
        if not out:
            raise self._error
        return out


def decoded(read: Reader, encoding: str | None, limits: BodyLimits, provider: str) -> Reader:
    """``read`` itself for an uncompressed body, else a bounded decompressing reader.

    An encoding we did not ask for (:data:`ACCEPT_ENCODING`) gives a reader that
    raises ProtocolError: feeding compressed bytes to the SSE parser would only
    fail later, less clearly. (A reader, not an error now: an error status with
    such a body is still reported as that status.)
    """
    name = (encoding or "").strip().lower()
    if not name or name == "identity":
        return read
    wbits = _wbits(name)
    if wbits is None:

        async def refuse() -> bytes:
            raise ProtocolError(
                f"{provider} sent a body in content-encoding {encoding!r}, which pk_notebook "
                f"does not decode (it asks for {ACCEPT_ENCODING!r}); remove any "
                "Accept-Encoding header that asks for it",
                raw=None,
            )

        return refuse
    return _Inflater(read, wbits, limits, provider)
