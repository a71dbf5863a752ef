"""Chunk-processing helpers (lines, batches, throttled display), done so that no text is lost.

- :func:`iter_lines`: complete lines as they arrive, the last partial line at the end.
- :func:`coalesce`: batches of text for a slow consumer (a UI), never dropping any.
- :class:`Throttle`: push text, get at most one flush per interval, the first at once
  and a trailing flush for whatever is left. The notebook renderer is built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable

from .types import Chunk


def _text(item: Chunk | str) -> str:
    return item if isinstance(item, str) else item.content


async def iter_lines(chunks: AsyncIterable[Chunk | str]) -> AsyncIterator[str]:
    """Yield each complete line (without its newline) as soon as it is complete."""
    buffer = ""
    async for item in chunks:
        buffer += _text(item)
        if "\n" in buffer:
            *lines, buffer = buffer.split("\n")
            for line in lines:
                yield line
    if buffer:
        yield buffer


async def coalesce(
    chunks: AsyncIterable[Chunk | str], interval: float = 0.05
) -> AsyncIterator[str]:
    """Yield the text that arrived since the last yield, at most once per ``interval``.

    The source is read by a background task while the consumer is busy, so a slow
    consumer gets bigger batches, never missing text. The first batch is yielded as
    soon as it arrives; the concatenation of all batches is the whole text.
    """
    pending: list[str] = []
    arrived = asyncio.Event()
    done = False
    failure: BaseException | None = None

    async def read() -> None:
        nonlocal done, failure
        try:
            async for item in chunks:
                text = _text(item)
                if text:
                    pending.append(text)
                    arrived.set()
        except BaseException as exc:
            failure = exc
        finally:
            done = True
            arrived.set()

    reader = asyncio.ensure_future(read())
    loop = asyncio.get_running_loop()
    last = None
    try:
        while True:
            await arrived.wait()
            if last is not None and not done:
                wait = last + interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            arrived.clear()
            if pending:
                batch = "".join(pending)
                pending.clear()
                last = loop.time()
                yield batch
            if done and not pending:
                if failure is not None and not isinstance(failure, asyncio.CancelledError):
                    raise failure
                return
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None and failure is None and not done:
            await aclose()


class Throttle:
    """Rate-limit a display: ``push(text)`` often, ``flush(all_text)`` runs at most
    once per ``interval`` seconds.

    The first push flushes at once (the first words matter most); later pushes
    within the interval schedule one trailing flush; :meth:`close` flushes what is
    left. ``flush`` always receives the whole text so far, so a skipped update never
    loses anything.
    """

    def __init__(self, flush: Callable[[str], None], interval: float = 0.05) -> None:
        self._flush = flush
        self.interval = interval
        self._parts: list[str] = []
        self._text = ""
        self._dirty = False
        self._last: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.flushes = 0

    @property
    def text(self) -> str:
        if self._parts:
            self._text += "".join(self._parts)
            self._parts.clear()
        return self._text

    def push(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        self._dirty = True
        now = self._loop.time()
        if self._last is None or now - self._last >= self.interval:
            self._emit(now)
        elif self._handle is None:
            self._handle = self._loop.call_at(self._last + self.interval, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        if self._dirty:
            self._emit(self._loop.time())

    def _emit(self, now: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._dirty = False
        self._last = now
        self.flushes += 1
        self._flush(self.text)

    def close(self) -> str:
        """Cancel the timer and flush any text not shown yet; returns the whole text."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._dirty:
            self._emit(self._loop.time())
        return self.text
