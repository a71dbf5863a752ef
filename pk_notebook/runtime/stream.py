"""A streamed answer: iterate it, stop it, read what arrived.

One :class:`Stream` per call. It pulls wire events from the middleware chain,
hands out :class:`Chunk` objects, keeps the accumulated text, and decides, once,
how the stream ended. Whatever ends it (the last event, an error, a timeout,
``stop()``, ``aclose()``, a cancelled task, a ``break``) goes through
:meth:`Stream._end`, which closes the chain (and so the HTTP response), builds
the :class:`Result` and runs the end callbacks (the pipeline saves the session
turn there).

Timeouts cost almost nothing per chunk: one watchdog timer per stream checks,
when it fires, whether the stream has been idle (no content while the consumer
was waiting) for ``idle_timeout`` seconds or has outlived ``timeout``; if not,
it re-arms itself. A firing watchdog cancels the waiting task with a marker,
and :meth:`next` turns that cancellation into :class:`StreamTimeout`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from .errors import (
    PkNotebookError,
    StreamError,
    StreamTimeout,
    TruncatedStream,
    UsageError,
)
from .types import Chunk, Delta, Finish, Message, ProviderEvent, Request, Result, StreamStatus

logger = logging.getLogger("pk_notebook")

EndCallback = Callable[["Stream", Result], Awaitable[list[str] | None]]

_STREAMING = StreamStatus.STREAMING
_STOP = "stop"


class Stream:
    """An answer as it arrives. Created by ``Pipeline.execute_stream``; not directly.

    Use it as ``async with stream: async for chunk in stream: ...``. ``stream.text``
    is the accumulated text at any moment; ``stream.result`` is available once it
    has ended.
    """

    def __init__(
        self,
        events: AsyncIterator[ProviderEvent],
        *,
        request: Request,
        closers: list[AsyncGenerator[Any, None]],
        timeout: float | None,
        idle_timeout: float | None,
        on_end: EndCallback | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._anext = events.__anext__
        self._closers = closers
        self._request = request
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._on_end = on_end

        self._parts: list[str] = []
        self._text_cache: str | None = ""
        self._reasoning: list[str] = []
        self._count = 0
        self._status = _STREAMING
        self._finish: Finish | None = None
        self._error: BaseException | None = None
        self._result: Result | None = None
        self._buffered: Chunk | None = None
        self._final_sent = False
        self._error_raised = False

        self._started = time.monotonic()
        self._loop_started = self._loop.time()
        self._first_chunk_at: float | None = None
        self._deadline = self._loop_started + timeout if timeout is not None else None
        self._idle_since = self._loop_started
        self._waiter: asyncio.Task[Any] | None = None
        self._cancel_reason: str | None = None
        self._expired: str | None = None
        self._stop_requested = False
        self._timer: asyncio.TimerHandle | None = None
        self._ended = asyncio.Event()
        self._ending = False
        self._callbacks: list[Callable[[Result], Any]] = []
        self._arm_timer()

    # --- what users read ------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text received so far (the whole answer once the stream has ended)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._parts)
        return self._text_cache

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    @property
    def status(self) -> StreamStatus:
        return self._status

    @property
    def chunk_count(self) -> int:
        return self._count

    @property
    def session_id(self) -> str | None:
        return self._request.session_id

    @property
    def request(self) -> Request:
        return self._request

    @property
    def elapsed(self) -> float:
        if self._result is not None:
            return self._result.duration
        return time.monotonic() - self._started

    @property
    def time_to_first_chunk(self) -> float | None:
        if self._first_chunk_at is None:
            return None
        return self._first_chunk_at - self._started

    @property
    def ended(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> Result:
        """The final result; an error to ask for it before the stream has ended."""
        if self._result is None:
            raise UsageError(
                "the stream has not ended yet: iterate it to the end, or call "
                "'await stream.aclose()' to stop it, before reading .result"
            )
        return self._result

    def add_done_callback(self, callback: Callable[[Result], Any]) -> None:
        """Call ``callback(result)`` once the stream has ended (at once if it already has)."""
        if self._result is not None:
            callback(self._result)
        else:
            self._callbacks.append(callback)

    def __repr__(self) -> str:
        return (
            f"<Stream status={self._status.value} chunks={self._count} "
            f"chars={len(self.text)} session={self._request.session_id!r}>"
        )

    # --- iteration ------------------------------------------------------------------

    async def next(self) -> Chunk:
        """The next chunk; ``StopAsyncIteration`` at the end (the seed's ``Next()``/``io.EOF``).

        A stream that ends badly raises its error (with ``partial_text``) once,
        then ``StopAsyncIteration``. A stream stopped by the caller simply ends.
        """
        buffered = self._buffered
        if buffered is not None:
            self._buffered = None
            return buffered
        if self._status is not _STREAMING:
            return await self._after_end()
        if self._stop_requested or self._expired:
            await self._end_from_flags()
            return await self._after_end()

        task = asyncio.current_task()
        self._waiter = task
        self._idle_since = self._loop.time()
        try:
            while True:
                event = await self._anext()
                if type(event) is Delta:
                    if event.text or event.reasoning:
                        break
                    if event.activity:
                        self._idle_since = self._loop.time()
                    continue
                if isinstance(event, Finish):
                    self._finish = event
                    # Let every link run to its natural end, so code a middleware has
                    # after its loop (logging, accounting) runs instead of GeneratorExit.
                    try:
                        await self._anext()
                    except StopAsyncIteration:
                        pass
                    self._waiter = None
                    await self._end(StreamStatus.FINISHED, None)
                    return await self._after_end()
                if isinstance(event, Delta):  # a subclass of Delta
                    if event.text or event.reasoning:
                        break
                    continue
                raise TypeError(f"a provider yielded {type(event).__name__}, not Delta/Finish")
        except StopAsyncIteration:
            self._waiter = None
            error = TruncatedStream(
                "the stream ended before the provider's end marker: the answer is "
                "incomplete (the connection was closed early). Retry the request.",
                partial_text=self.text,
            )
            await self._end(StreamStatus.TRUNCATED, error)
            return await self._after_end()
        except asyncio.CancelledError:
            self._waiter = None
            reason = self._take_cancel_reason(task)
            if reason is not None and self._finish is not None:
                # The answer was complete; only the drain after it was cut short.
                await self._end(StreamStatus.FINISHED, None)
                return await self._after_end()
            if reason is None:
                # Someone cancelled the consuming task (Interrupt, an outer timeout):
                # keep the text, end the stream as stopped, let the cancellation go on.
                await self._end(StreamStatus.STOPPED, None)
                raise
            await self._end_for_reason(reason)
            return await self._after_end()
        except PkNotebookError as exc:
            self._waiter = None
            if isinstance(exc, StreamError) and not exc.partial_text:
                exc.partial_text = self.text
            await self._end(StreamStatus.FAILED, exc)
            return await self._after_end()
        except BaseException as exc:
            self._waiter = None
            await self._end(StreamStatus.FAILED, exc)
            raise
        self._waiter = None
        text = event.text
        index = self._count
        self._count = index + 1
        if index == 0:
            self._first_chunk_at = time.monotonic()
        if text:
            self._parts.append(text)
            self._text_cache = None
        if event.reasoning:
            self._reasoning.append(event.reasoning)
        return Chunk(text, index, event.reasoning)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        # An async generator, so that a ``break`` out of ``async for`` (which drops the
        # generator) closes the stream at once instead of when the stream is collected.
        try:
            while True:
                try:
                    chunk = await self.next()
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            if self._status is _STREAMING:
                await self.aclose()

    async def collect(self) -> Result:
        """Read to the end and return the result; raise if the stream did not finish.

        A stream stopped by the caller raises :class:`StreamCancelled` with the partial text.
        """
        async for _ in self:
            pass
        return self.result.raise_for_status()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- stopping -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the stream to stop as soon as possible. Safe from any thread.

        The provider's response is closed, the text so far is kept, and iteration
        ends normally with ``status == STOPPED``.
        """
        if self._status is not _STREAMING:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._request_stop()
        else:
            self._loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        if self._status is not _STREAMING:
            return
        self._stop_requested = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._cancel_reason = _STOP
            waiter.cancel()
        elif not self._ending:
            # Nobody is reading: close the provider now rather than at the next read.
            self._loop.create_task(self._end_from_flags())

    async def aclose(self) -> None:
        """Stop the stream (if it is still running) and wait until it has ended."""
        if self._result is not None:
            return
        if self._ending or (
            self._waiter is not None and self._waiter is not asyncio.current_task()
        ):
            self._request_stop()
            await self._ended.wait()
            return
        self._stop_requested = True
        await self._end_from_flags()

    async def wait_closed(self) -> Result:
        """Wait until the stream has ended, however that happens, and return the result."""
        await self._ended.wait()
        return self.result

    # --- internals ------------------------------------------------------------------

    async def _start(self) -> None:
        """Pull the first chunk so that errors before it surface from ``execute_stream``."""
        try:
            self._buffered = await self.next()
        except StopAsyncIteration:
            self._buffered = None

    async def _after_end(self) -> Chunk:
        if not self._final_sent and self._status is StreamStatus.FINISHED:
            self._final_sent = True
            finish = self._finish
            return Chunk(
                "",
                self._count,
                finish_reason=finish.reason if finish else None,
                usage=finish.usage if finish else None,
                final=True,
            )
        error = self._error
        if error is not None and not self._error_raised:
            self._error_raised = True
            raise error
        raise StopAsyncIteration

    def _take_cancel_reason(self, task: asyncio.Task[Any] | None) -> str | None:
        reason = self._cancel_reason
        if reason is None:
            return None
        self._cancel_reason = None
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None and uncancel() > 0:
            return None  # cancelled by someone else as well: theirs wins
        return reason

    async def _end_from_flags(self) -> None:
        if self._result is not None or self._ending:
            if not self._ended.is_set():
                await self._ended.wait()
            return
        if self._expired:
            await self._end_for_reason(self._expired)
        else:
            await self._end(StreamStatus.STOPPED, None)

    async def _end_for_reason(self, reason: str) -> None:
        if reason == _STOP:
            await self._end(StreamStatus.STOPPED, None)
            return
        seconds = self._timeout if reason == "total" else self._idle_timeout
        if reason == "total":
            message = (
                f"the stream did not finish within its {seconds:g} s deadline; "
                "the partial text is kept. Raise 'timeout' for long answers."
            )
        else:
            message = (
                f"no content arrived for {seconds:g} s (idle timeout); the provider "
                "may be stalled. The partial text is kept; retry, or raise 'idle_timeout'."
            )
        error = StreamTimeout(message, kind=reason, seconds=seconds or 0.0, partial_text=self.text)
        await self._end(StreamStatus.TIMED_OUT, error)

    async def _end(self, status: StreamStatus, error: BaseException | None) -> None:
        if self._result is not None or self._ending:
            return
        self._ending = True
        self._status = status
        self._error = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        duration = time.monotonic() - self._started
        # Close the chain outermost first; the provider's generator last, explicitly,
        # because a middleware's ``async for`` does not close what it iterates.
        for gen in self._closers:
            try:
                await gen.aclose()
            except RuntimeError:
                # "already running": a generator that is mid-step in another task.
                logger.debug("could not close %r: it is running", gen)
            except Exception:
                logger.debug("error while closing %r", gen, exc_info=True)
        result = self._build_result(status, error, duration)
        warnings: list[str] = []
        if self._on_end is not None:
            try:
                warnings = list(await self._on_end(self, result) or ())
            except Exception as exc:
                logger.warning("could not finish the stream's turn: %s", exc)
                warnings = [f"the turn was not saved: {exc}"]
        if warnings:
            result = _with_warnings(result, warnings)
        self._result = result
        self._ended.set()
        for callback in self._callbacks:
            try:
                callback(result)
            except Exception:
                logger.exception("a stream done-callback failed")
        self._callbacks.clear()

    def _build_result(
        self, status: StreamStatus, error: BaseException | None, duration: float
    ) -> Result:
        finish = self._finish
        state = self._request.state
        text = self.text
        model = (finish.model if finish and finish.model else None) or state.get("model")
        # What is known about the answer travels with it into the session store, so a
        # later reader (the chat footer, an export) can total a session's tokens and cost.
        meta: dict[str, Any] = {}
        if finish is not None:
            if finish.reason:
                meta["finish_reason"] = finish.reason
            if finish.usage is not None:
                meta["usage"] = finish.usage.to_dict()
            if finish.cost is not None:
                meta["cost"] = finish.cost
        if model:
            meta["model"] = model
        answer = Message(
            "assistant",
            text,
            status=None if status is StreamStatus.FINISHED else status.value,
            meta=meta,
        )
        return Result(
            text=text,
            status=status,
            messages=(*self._request.messages, answer),
            usage=finish.usage if finish else None,
            cost=finish.cost if finish else None,
            finish_reason=finish.reason if finish else None,
            model=model,
            provider=state.get("provider"),
            reasoning=self.reasoning,
            tool_calls=tuple(finish.tool_calls) if finish else (),
            chunks=self._count,
            attempts=state.get("attempts", 1),
            time_to_first_chunk=self.time_to_first_chunk,
            duration=duration,
            session_id=self._request.session_id,
            error=error,
        )

    # --- the watchdog ---------------------------------------------------------------

    def _arm_timer(self) -> None:
        due: float | None = self._deadline
        if self._idle_timeout is not None:
            idle_due = self._idle_since + self._idle_timeout
            due = idle_due if due is None else min(due, idle_due)
        if due is not None:
            self._timer = self._loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._status is not _STREAMING:
            return
        now = self._loop.time()
        reason: str | None = None
        if self._deadline is not None and now >= self._deadline:
            reason = "total"
        elif (
            self._idle_timeout is not None
            and self._waiter is not None
            and now >= self._idle_since + self._idle_timeout
        ):
            reason = "idle"
        if reason is None:
            if self._waiter is None and self._idle_timeout is not None:
                # The consumer is busy; idle time counts only while it waits.
                self._idle_since = max(self._idle_since, now)
            self._arm_timer()
            return
        self._expired = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._cancel_reason = reason
            waiter.cancel()


def _with_warnings(result: Result, warnings: list[str]) -> Result:
    from dataclasses import replace

    return replace(result, warnings=(*result.warnings, *warnings))
