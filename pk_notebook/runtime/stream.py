"""A streamed answer, and the one object that owns a turn's whole life.

``pipe.stream(...)`` returns a :class:`Stream` at once, without I/O. Opening it
(``async with``, :meth:`Stream.open`, or simply iterating) runs the turn's
phases in the caller's task: take the session's lock, load its history, call
the provider through the middleware chain, and wait for the first chunk.
Whatever ends it (the last event, an error, a timeout, :meth:`Stream.stop`,
:meth:`Stream.aclose`, a cancelled task, a ``break``) goes through
:meth:`Stream._end`, which closes the chain (and so the HTTP response), saves the
turn, releases the lock and sets the :class:`Result`, once.

Why it is built this way:

- Every surface (cell, chat, SSE, WebSocket, the OpenAI endpoint) needs to stop
  a turn in any phase, including before the provider has answered. With the
  stream existing from the start, ``stop()`` always has something to act on, and
  no caller carries its own "stop before the stream exists" bookkeeping.
- An end path cannot fail. Saving a turn and releasing its lock run in a task
  of their own, shielded from the caller's cancellation (a Stop, an Interrupt or
  an outer timeout that lands during the save cannot leave the lock held or the
  turn half-saved), each step guarded on its own, and the result is set in a
  ``finally``. Text pieces are checked where the stream reads them, so the end
  never meets a non-string.
- Timeouts cost almost nothing per chunk: one watchdog timer per stream checks,
  when it fires, whether the stream has been idle (no content while the consumer
  was waiting) for ``idle_timeout`` seconds or has outlived ``timeout``; if not,
  it re-arms itself. A firing watchdog cancels the waiting task with a marker,
  and :meth:`Stream.next` turns that cancellation into :class:`StreamTimeout`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .attachments import for_history
from .errors import (
    PkNotebookError,
    ProtocolError,
    StreamError,
    StreamTimeout,
    TruncatedStream,
    UsageError,
)
from .pricing import lookup_price
from .schema import OutputSchema
from .tokens import estimate_usage
from .toolrun import Fragments, ToolRound, pair_open_calls, with_ids
from .tools import DEFAULT_MAX_TOOL_ROUNDS, Approver, ToolSpec
from .types import (
    Chunk,
    Delta,
    Finish,
    Message,
    ProviderConfig,
    ProviderEvent,
    Request,
    Result,
    StreamStatus,
    ToolCall,
    ToolCallDelta,
    ToolEvent,
    ToolResult,
    Usage,
)

if TYPE_CHECKING:
    from .pipeline import Pipeline

logger = logging.getLogger("pk_notebook")

_STOP = "stop"

# Phases of a turn. Only the owner of the stream's loop changes them.
_NEW = 0  # built, nothing done yet
_OPENING = 1  # waiting for the session lock, loading history
_OPEN = 2  # the provider call runs; chunks flow
_ENDING = 3  # closing the chain, saving the turn, releasing the lock
_ENDED = 4  # result set


def bad_piece(event: Delta) -> ProtocolError:
    """The typed error for a text or reasoning piece that is not a string."""
    text, reasoning = event.text, event.reasoning
    which, value = ("text", text) if type(text) is not str else ("reasoning", reasoning)
    return ProtocolError(
        f"the provider sent a {which} piece of type {type(value).__name__}, not a string; "
        "the server does not speak the expected protocol. The partial text is kept.",
        raw=repr(value)[:500],
    )


class _StoppedEarly(Exception):
    """stop() came before the provider was called: end without calling it."""


# Bounds on the end path: a store that does not answer must not keep a stream from
# ending (and a web server's slot from being freed).
RELEASE_TIMEOUT = 10.0
SAVE_TIMEOUT = 60.0


class Stream:
    """One turn: an answer as it arrives. Made by :meth:`Pipeline.stream`.

    ::

        stream = pipe.stream("Plan a day in Lisbon", session="trip")  # no I/O yet
        async with stream:               # lock, history, provider call, first chunk
            async for chunk in stream:
                print(chunk.content, end="")
        print(stream.result.status)      # turn saved, lock released

    ``stream.text`` is the accumulated text at any moment; ``stream.result`` is
    available once it has ended. :meth:`stop` is valid in every phase, from any
    thread.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        message: Message,
        *,
        session_id: str | None = None,
        history: tuple[Message, ...] = (),
        config: ProviderConfig | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = None,
        tools: tuple[ToolSpec, ...] = (),
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
        approve: Approver | None = None,
        schema: OutputSchema | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._message = message
        self._session_id = session_id
        self._history = history
        self._config = config or ProviderConfig()
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._request = Request(
            pair_open_calls((*history, message)),
            self._config,
            session_id,
            tools=tools,
            schema=schema,
        )
        self._schema = schema
        self._parsed: Any = None
        self._partial_at = -1
        self._partial: Any = None

        # A turn with tools spans several model calls ("rounds"): what came before
        # the current one is kept here, and each round's answer starts at these marks.
        self._tools = {t.name: t for t in tools}
        self._caller_calls: tuple[ToolCall, ...] = ()  # the calls the turn ended with
        self._max_tool_rounds = max_tool_rounds
        self._approve = approve
        self._round = 1
        self._turn: list[Message] = []  # assistant tool-call and tool messages so far
        self._calls: list[ToolCall] = []
        self._tool_results: list[ToolResult] = []
        self._fragments: Fragments | None = None
        self._tool_round: ToolRound | None = None
        self._pending: deque[Chunk] = deque()
        self._round_text = 0  # index into _parts where this round's text starts
        self._round_reasoning = 0
        self._prior_usage: Usage | None = None
        self._prior_cost: float | None = None
        self._warnings: list[str] = []
        self._base_messages: tuple[Message, ...] = ()
        self._added = 1  # messages the turn adds after the user's (set with the result)

        self._phase = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._anext: Callable[[], Awaitable[ProviderEvent]] | None = None
        self._closers: list[AsyncGenerator[Any, None]] = []
        self._lock: AbstractAsyncContextManager[None] | None = None
        self._locked = False

        self._parts: list[str] = []
        self._text_cache: str | None = ""
        self._reasoning: list[str] = []
        self._count = 0
        self._status = StreamStatus.STREAMING
        self._finish: Finish | None = None
        self._error: BaseException | None = None
        self._result: Result | None = None
        self._buffered: Chunk | None = None
        self._final_sent = False
        self._error_raised = False

        self._started = time.monotonic()
        self._first_chunk_at: float | None = None
        self._deadline: float | None = None
        self._idle_since = 0.0
        self._waiter: asyncio.Task[Any] | None = None
        self._cancel_reason: str | None = None
        self._expired: str | None = None
        self._stop_requested = False
        self._timer: asyncio.TimerHandle | None = None
        self._ended: asyncio.Event | None = None
        self._background: asyncio.Task[Any] | None = None
        self._finishing: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[Result], Any]] = []

    # --- what users read ------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text received so far (the whole answer once the stream has ended)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._parts)
        return self._text_cache

    @property
    def reasoning(self) -> str:
        """The reasoning ("thinking") received so far, kept apart from the answer."""
        return "".join(self._reasoning)

    @property
    def partial(self) -> Any:
        """With ``schema=``: the answer parsed so far (dicts and lists; ``None`` before it
        begins). Parsed when read, so it costs nothing unless someone looks."""
        if self._schema is None:
            return None
        text = self.text
        if len(text) != self._partial_at:
            self._partial_at = len(text)
            self._partial = self._schema.partial(text)
        return self._partial

    @property
    def tool_results(self) -> tuple[ToolResult, ...]:
        """The tool calls of this turn that have ended so far, and how."""
        running = self._tool_round.ordered_results() if self._tool_round else []
        return (*self._tool_results, *running)

    @property
    def round(self) -> int:
        """The model call the turn is at: 1, then one more after each round of tool calls."""
        return self._round

    @property
    def status(self) -> StreamStatus:
        """``STREAMING`` until the stream has ended, then how it ended."""
        return self._status

    @property
    def chunk_count(self) -> int:
        return self._count

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def request(self) -> Request:
        """What is (or will be) sent; includes the session's history once opened."""
        return self._request

    @property
    def opened(self) -> bool:
        """True once the stream has started opening (``async with``, ``open()``, iteration)."""
        return self._phase is not _NEW

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
            f"chars={len(self.text)} session={self._session_id!r}>"
        )

    # --- opening --------------------------------------------------------------------

    async def open(self) -> Stream:
        """Run the turn up to its first chunk; ``async with`` calls this for you.

        Errors before the first chunk (a bad key, an unreachable server, a busy
        session, a rate limit after retries) are raised here, after the stream
        has ended with them. A stream stopped before any text simply ends as
        ``STOPPED``: nothing is raised. Opening an opened stream does nothing.
        """
        if self._phase is not _NEW:
            if self._phase is _OPENING and self._opening is not None:
                await asyncio.shield(self._opening)  # another task is opening it
            return self
        self._phase = _OPENING
        loop = self._loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()
        self._opening = loop.create_future()
        try:
            await self._run_open(loop)
        finally:
            if not self._opening.done():
                self._opening.set_result(None)
        return self

    async def _run_open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._started = time.monotonic()
        pipeline = self._pipeline
        pipeline._streams.add(self)
        task = asyncio.current_task()
        self._waiter = task
        try:
            if self._stop_requested:
                raise _StoppedEarly
            pipeline._check_open()
            if self._session_id is not None:
                await self._enter_session()
            if self._stop_requested:
                raise _StoppedEarly
            self._anext = pipeline._chain(0, self._closers)(self._request).__anext__
        except _StoppedEarly:
            self._waiter = None
            await self._end(StreamStatus.STOPPED, None)
            return
        except asyncio.CancelledError:
            self._waiter = None
            reason = self._take_cancel_reason(task)
            await self._end(StreamStatus.STOPPED, None)
            if reason is None:
                raise  # not our stop: an Interrupt or an outer timeout goes on
            return
        except BaseException as exc:
            self._waiter = None
            await self._end(StreamStatus.FAILED, exc)
            raise
        self._waiter = None
        self._phase = _OPEN
        self._idle_since = loop.time()
        if self._timeout is not None:
            self._deadline = self._idle_since + self._timeout
        self._arm_timer()
        try:
            self._buffered = await self.next()
        except StopAsyncIteration:
            self._buffered = None

    async def _enter_session(self) -> None:
        pipeline = self._pipeline
        store = pipeline.state_store
        session_id = self._session_id
        assert session_id is not None
        lock = store.lock(session_id, timeout=pipeline.lock_timeout)
        await lock.__aenter__()
        # Held from here: _finish_turn releases it, whatever happens next.
        self._lock = lock
        self._locked = True
        past = await store.load(session_id)
        if pipeline.history is not None:
            past = pipeline.history.apply(past)
        self._request = self._request.replace(messages=pair_open_calls((*past, self._message)))

    async def __aenter__(self) -> Stream:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- iteration ------------------------------------------------------------------

    async def next(self) -> Chunk:
        """The next chunk; ``StopAsyncIteration`` at the end (Go's ``Next()`` / ``io.EOF``).

        A stream that ends badly raises its error (with ``partial_text``) once,
        then ``StopAsyncIteration``. A stream stopped by the caller simply ends.
        An unopened stream opens first.
        """
        buffered = self._buffered
        if buffered is not None:
            self._buffered = None
            return buffered
        if self._pending:
            return self._pending.popleft()
        if self._phase is not _OPEN:
            if self._phase is _NEW or self._phase is _OPENING:
                await self.open()
                if self._phase is _OPEN or self._buffered is not None:
                    return await self.next()
            return await self._after_end()
        if self._stop_requested or self._expired:
            await self._end_from_flags()
            return await self._after_end()
        if self._tool_round is not None:
            return await self._next_tool_event()

        task = asyncio.current_task()
        self._waiter = task
        self._idle_since = self._loop.time()  # type: ignore[union-attr]
        anext = self._anext
        try:
            while True:
                event = await anext()  # type: ignore[misc]
                # (isinstance only for what is not exactly a Delta: subclasses, Finish)
                if type(event) is Delta or isinstance(event, Delta):
                    text, reasoning = event.text, event.reasoning
                    if type(text) is not str or type(reasoning) is not str:
                        raise bad_piece(event)
                    if text or reasoning:
                        break
                    if event.activity:
                        self._idle_since = self._loop.time()  # type: ignore[union-attr]
                    continue
                if type(event) is ToolCallDelta:
                    self._idle_since = self._loop.time()  # type: ignore[union-attr]
                    fragments = self._fragments
                    if fragments is None:
                        fragments = self._fragments = Fragments(self._round)
                    shown = fragments.feed(event)
                    if shown:
                        self._waiter = None
                        self._pending.extend(self._tool_chunk(e) for e in shown[1:])
                        return self._tool_chunk(shown[0])
                    continue
                if isinstance(event, Finish):
                    self._finish = event
                    # Let every link run to its natural end, so code a middleware has
                    # after its loop (logging, accounting) runs instead of GeneratorExit.
                    try:
                        await anext()  # type: ignore[misc]
                    except StopAsyncIteration:
                        pass
                    calls = self._runnable_calls(event)
                    if calls:
                        await self._start_tools(event, calls)
                        self._waiter = None
                        return await self.next()
                    self._waiter = None
                    if self._schema is not None and not event.tool_calls:
                        # Validated here, so a bad answer ends the stream with its error
                        # like any other failure: raised once, the text kept.
                        answer = "".join(self._parts[self._round_text :])
                        self._parsed = self._schema.parse(answer, event.reason)
                    await self._end(StreamStatus.FINISHED, None)
                    return await self._after_end()
                raise ProtocolError(
                    f"a middleware or provider yielded {type(event).__name__}, not Delta "
                    "or Finish; fix the middleware (it must pass events through).",
                    raw=repr(event)[:500],
                )
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
        index = self._count
        self._count = index + 1
        if index == 0:
            self._first_chunk_at = time.monotonic()
        if text:
            self._parts.append(text)
            self._text_cache = None
        if reasoning:
            self._reasoning.append(reasoning)
        return Chunk(text, index, reasoning)

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return _Chunks(self)

    # --- tool rounds ----------------------------------------------------------------

    def _tool_chunk(self, event: ToolEvent) -> Chunk:
        index = self._count
        self._count = index + 1
        if index == 0:
            self._first_chunk_at = time.monotonic()
        return Chunk("", index, tool=event)

    def _runnable_calls(self, finish: Finish) -> tuple[ToolCall, ...]:
        """The calls of ``finish`` the turn runs itself; empty when the turn ends here.

        It ends here when the answer has no calls, when the turn has no tools, when
        a call names a tool without a function (the caller runs those: all the calls
        go back to it), and when the rounds are used up.
        """
        calls = tuple(finish.tool_calls or ())
        if not calls or not self._tools:
            return ()
        if any(not getattr(self._tools.get(c.name), "runnable", True) for c in calls):
            # The caller runs these: the answer keeps them (so the session holds the
            # calls its results will answer) and the turn ends here.
            self._caller_calls = with_ids(calls, self._round)
            return ()
        if self._round > self._max_tool_rounds:
            self._warnings.append(
                f"the model asked for tools after max_tool_rounds ({self._max_tool_rounds}) "
                "rounds; those calls were not run"
            )
            return ()
        return with_ids(calls, self._round)

    async def _start_tools(self, finish: Finish, calls: tuple[ToolCall, ...]) -> None:
        """End this model call and start running its tool calls."""
        await self._close_chain()
        if not self._turn:
            self._base_messages = self._request.messages  # history + the user's message
        self._add_usage(finish)
        self._turn.append(
            Message(
                "assistant",
                "".join(self._parts[self._round_text :]),
                tool_calls=calls,
                reasoning="".join(self._reasoning[self._round_reasoning :]),
                reasoning_blocks=tuple(finish.reasoning_blocks or ()),
                meta=_answer_meta(finish, self._request.call.model),
            )
        )
        self._calls.extend(calls)
        self._finish = None
        self._fragments = None
        tool_round = self._tool_round = ToolRound(calls, self._tools, self._approve, self._round)
        tool_round.start()

    async def _next_tool_event(self) -> Chunk:
        """The next event of the running calls; the next model call once they have all ended."""
        tool_round = self._tool_round
        assert tool_round is not None
        task = asyncio.current_task()
        self._waiter = task
        try:
            if not tool_round.done:
                event = await tool_round.queue.get()
                self._waiter = None
                return self._tool_chunk(event)
            self._waiter = None
            self._next_round(tool_round)
        except asyncio.CancelledError:
            self._waiter = None
            reason = self._take_cancel_reason(task)
            if reason is None:
                await self._end(StreamStatus.STOPPED, None)
                raise
            await self._end_for_reason(reason)
            return await self._after_end()
        return await self.next()

    def _next_round(self, tool_round: ToolRound) -> None:
        self._tool_results.extend(tool_round.ordered_results())
        self._turn.extend(tool_round.messages())
        self._tool_round = None
        self._round += 1
        request = self._request
        choice = "none" if self._round > self._max_tool_rounds else request.tool_choice
        self._request = request.replace(
            messages=(*self._base_messages, *self._turn), tool_choice=choice
        )
        self._round_text = len(self._parts)
        self._round_reasoning = len(self._reasoning)
        self._idle_since = self._loop.time()  # type: ignore[union-attr]
        self._anext = self._pipeline._chain(0, self._closers)(self._request).__anext__

    def _add_usage(self, finish: Finish) -> None:
        if finish.usage is not None:
            prior = self._prior_usage
            self._prior_usage = finish.usage if prior is None else prior + finish.usage
        if finish.cost is not None:
            self._prior_cost = (self._prior_cost or 0.0) + finish.cost

    async def collect(self) -> Result:
        """Read to the end and return the result; raise if the stream did not finish.

        A stream stopped by the caller raises :class:`StreamCancelled` with the partial text.
        """
        async for _ in self:
            pass
        if self._result is None:  # ended by another task that is still saving
            await self.wait_closed()
        return self.result.raise_for_status()

    # --- stopping -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the turn to stop as soon as possible. Safe from any thread, in any phase.

        Before the provider answered, nothing more is sent (a waiting lock or
        call is abandoned). While streaming, the provider's response is closed and
        the text so far is kept. Iteration then ends normally with
        ``status == STOPPED``; ``open()`` and ``async with`` raise nothing.
        """
        if self._phase >= _ENDING:
            return
        loop = self._loop
        if loop is None:
            # Not opened yet: there is nothing to cancel, only a decision to record.
            self._stop_requested = True
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._request_stop()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._request_stop)

    def _request_stop(self) -> None:
        if self._phase >= _ENDING:
            return
        self._stop_requested = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._cancel_reason = _STOP
            waiter.cancel()
        elif self._phase is _OPEN and self._background is None:
            # Nobody is reading: close the provider now rather than at the next read.
            self._background = self._loop.create_task(self._end_from_flags())  # type: ignore[union-attr]

    async def aclose(self) -> None:
        """Stop the stream (if it is still running) and wait until it has ended."""
        if self._result is not None:
            return
        if self._phase is _NEW:
            self._stop_requested = True
            self._loop = asyncio.get_running_loop()
            self._ended = asyncio.Event()
            await self._end(StreamStatus.STOPPED, None)
            return
        current = asyncio.current_task()
        if self._phase >= _ENDING or (self._waiter is not None and self._waiter is not current):
            self._request_stop()
            await self.wait_closed()
            return
        self._stop_requested = True
        await self._end_from_flags()

    async def wait_closed(self) -> Result:
        """Wait until the stream has ended, however that happens, and return the result."""
        if self._result is None:
            if self._ended is None:
                raise UsageError("the stream was never opened: use 'async with stream:' first")
            await self._ended.wait()
        return self.result

    # --- internals ------------------------------------------------------------------

    async def _after_end(self) -> Chunk:
        if not self._final_sent and self._status is StreamStatus.FINISHED:
            self._final_sent = True
            finish = self._finish
            return Chunk(
                "",
                self._count,
                finish_reason=finish.reason if finish else None,
                usage=self._result.usage if self._result else self._total_usage(),
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
        if self._phase >= _ENDING:
            await self.wait_closed()
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
        """Decide how the stream ended (once) and run the end path to completion.

        Closing the chain runs inline (it only closes generators, and redoing it is
        harmless). Saving and releasing a session run in a task of their own: a
        cancellation of the caller (an Interrupt during the save, say) goes on to
        the caller at once, while the turn is saved and the lock released behind
        it, never half-saved. A stream without a session needs no task at all,
        which keeps the end of a call cheap for servers running thousands of them.
        """
        if self._phase >= _ENDING:
            return
        self._phase = _ENDING
        self._status = status
        self._error = error
        if self._tool_round is not None:
            self._tool_round.cancel()  # plain code: every running call gets its result
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = self._loop or asyncio.get_running_loop()
        if self._ended is None:
            self._ended = asyncio.Event()
        ended_at = time.monotonic()
        try:
            await self._close_chain()
        except asyncio.CancelledError:
            # Cancelled while closing: finish the end behind the caller, and let it go on.
            self._finishing = loop.create_task(self._finish_turn(status, error, ended_at))
            raise
        if not self._locked:
            self._complete(status, error, ended_at, [])
            return
        finishing = loop.create_task(self._finish_turn(status, error, ended_at))
        self._finishing = finishing  # a task that is not referenced may be collected
        await asyncio.shield(finishing)

    async def _finish_turn(
        self, status: StreamStatus, error: BaseException | None, ended_at: float
    ) -> None:
        warnings: list[str] = []
        result: Result | None = None
        try:
            await self._close_chain()  # a no-op when it already ran
            result = self._build_result(status, error, ended_at)
            if self._locked:
                warnings += await self._save(result)
        except asyncio.CancelledError:
            # Only a loop shutting down cancels this task; finish the bookkeeping anyway.
            warnings.append("the stream's end was cancelled; the turn may not be saved")
        except BaseException as exc:  # only a bug gets here; the end must still happen
            logger.exception("error while ending a stream")
            warnings.append(f"the stream did not end cleanly: {type(exc).__name__}: {exc}")
        finally:
            if self._locked:
                warnings += await self._release()
            self._complete(status, error, ended_at, warnings, result)

    def _complete(
        self,
        status: StreamStatus,
        error: BaseException | None,
        ended_at: float,
        warnings: list[str],
        result: Result | None = None,
    ) -> None:
        """Set the result and tell everyone; plain code, so nothing can interrupt it."""
        if result is None:
            try:
                result = self._build_result(status, error, ended_at)
            except Exception:  # only a bug gets here; a smaller result still ends the stream
                logger.exception("could not build the stream's result")
                result = self._fallback_result(status, error, ended_at - self._started)
        if warnings:
            result = replace(result, warnings=(*result.warnings, *warnings))
        self._pipeline._streams.discard(self)
        self._result = result
        self._phase = _ENDED
        self._background = None
        self._ended.set()  # type: ignore[union-attr]
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(result)
            except Exception:
                logger.exception("a stream done-callback failed")

    async def _close_chain(self) -> None:
        # Outermost first; the provider's generator last, explicitly, because a
        # middleware's ``async for`` does not close what it iterates. Each is closed
        # once; one that fails to close is logged and left to the garbage collector.
        closers, self._closers = self._closers, []
        for gen in closers:
            try:
                await gen.aclose()
            except RuntimeError:
                # "already running": a generator that is mid-step in another task.
                logger.debug("could not close %r: it is running", gen)
            except Exception:
                logger.debug("error while closing %r", gen, exc_info=True)

    async def _save(self, result: Result) -> list[str]:
        """Append the turn to the session, or leave the history as it was."""
        pipeline = self._pipeline
        added = result.messages[self._turn_start(result) :]
        if result.status is not StreamStatus.FINISHED and not (
            (result.text or len(added) > 1) and pipeline.interrupted == "keep"
        ):
            # Nothing to keep: the history never holds a question without an answer.
            return []
        session_id = self._session_id
        try:
            await asyncio.wait_for(
                pipeline.state_store.append(session_id, [for_history(self._message), *added]),  # type: ignore[arg-type]
                SAVE_TIMEOUT,
            )
        except asyncio.TimeoutError:
            logger.warning("the turn of session %r was not saved: the store timed out", session_id)
            return [
                f"the turn was not saved: the session store did not answer in {SAVE_TIMEOUT:g} s"
            ]
        except Exception as exc:
            logger.warning("the turn of session %r was not saved: %s", session_id, exc)
            return [f"the turn was not saved to the session store: {exc}"]
        return []

    def _turn_start(self, result: Result) -> int:
        """Where the messages this turn added (after the user's) start in ``result.messages``."""
        return len(result.messages) - self._added

    async def _release(self) -> list[str]:
        # A release that fails (the store went away) must neither hide the save's
        # own outcome nor raise over the answer the user has seen.
        lock, self._lock, self._locked = self._lock, None, False
        try:
            await asyncio.wait_for(lock.__aexit__(None, None, None), RELEASE_TIMEOUT)  # type: ignore[union-attr]
        except Exception as exc:
            logger.warning("could not release session %r: %s", self._session_id, exc)
            return [f"the session lock was not released cleanly: {exc}"]
        return []

    def _build_result(
        self, status: StreamStatus, error: BaseException | None, ended_at: float
    ) -> Result:
        duration = ended_at - self._started
        finish = self._finish
        call = self._request.call
        text = self.text
        model = (finish.model if finish and finish.model else None) or call.model
        # The messages this turn adds after the user's: each tool round's call and
        # result messages, then the answer. A round stopped while its tools ran has
        # every call paired with a (stopped) result, so the history stays valid.
        usage, cost = self._usage_and_cost(status, model)
        turn = list(self._turn)
        results = list(self._tool_results)
        if self._tool_round is not None:
            turn += self._tool_round.messages()
            results += self._tool_round.ordered_results()
        round_text = "".join(self._parts[self._round_text :])
        caller_calls = self._caller_calls if status is StreamStatus.FINISHED else ()
        if round_text or caller_calls or not turn:
            # What is known about the answer travels with it into the session store, so
            # a later reader (the chat footer, an export) can total tokens and cost.
            meta = _answer_meta(finish, call.model)
            if usage is not None:
                meta["usage"] = usage.to_dict()
            if cost is not None:
                meta["cost"] = cost
            answer = Message(
                "assistant",
                round_text,
                status=None if status is StreamStatus.FINISHED else status.value,
                meta=meta,
                reasoning="".join(self._reasoning[self._round_reasoning :]),
                reasoning_blocks=tuple(finish.reasoning_blocks or ()) if finish else (),
                tool_calls=caller_calls,
            )
            turn.append(answer)
        self._added = len(turn)
        base = self._base_messages if self._turn else self._request.messages
        calls = [*self._calls]
        if caller_calls:
            calls += caller_calls
        elif finish is not None and finish.tool_calls and not self._tool_round:
            calls += finish.tool_calls  # past max_tool_rounds, or with no tools: not kept
        return Result(
            text=text,
            status=status,
            messages=(*base, *turn),
            usage=usage,
            cost=cost,
            finish_reason=finish.reason if finish else None,
            model=model,
            provider=call.provider,
            reasoning=self.reasoning,
            tool_calls=tuple(calls),
            tool_results=tuple(results),
            model_calls=self._round,
            parsed=self._parsed,
            schema_mode=call.schema_mode,
            chunks=self._count,
            attempts=max(call.attempts, 1),
            time_to_first_chunk=self.time_to_first_chunk,
            duration=duration,
            session_id=self._session_id,
            warnings=tuple(self._warnings),
            error=error,
        )

    def _usage_and_cost(
        self, status: StreamStatus, model: str | None
    ) -> tuple[Usage | None, float | None]:
        """The turn's usage and cost; estimated (and labelled) for a model call that
        produced output but reported no usage (Ollama, a stopped stream)."""
        usage, cost = self._total_usage(), self._total_cost()
        finish = self._finish
        reported = finish is not None and finish.usage is not None
        round_text = "".join(self._parts[self._round_text :])
        round_reasoning = "".join(self._reasoning[self._round_reasoning :])
        calls = tuple(finish.tool_calls or ()) if finish is not None else ()
        if reported or not (round_text or round_reasoning or calls):
            return usage, cost
        guess = estimate_usage(
            self._request.messages, round_text, model, reasoning=round_reasoning, calls=calls
        )
        prices = getattr(self._pipeline.provider, "prices", None)
        price = lookup_price(prices, model) if prices else None
        if price is not None:
            cost = (cost or 0.0) + price.cost(guess)
        return (guess if usage is None else usage + guess), cost

    def _total_usage(self) -> Usage | None:
        finish = self._finish
        usage = finish.usage if finish is not None else None
        prior = self._prior_usage
        if prior is None:
            return usage
        return prior if usage is None else prior + usage

    def _total_cost(self) -> float | None:
        finish = self._finish
        cost = finish.cost if finish is not None else None
        prior = self._prior_cost
        if prior is None:
            return cost
        return prior if cost is None else prior + cost

    def _fallback_result(
        self, status: StreamStatus, error: BaseException | None, duration: float
    ) -> Result:
        # Built from plain fields only, so it cannot fail the way a full result might.
        parts = [p for p in self._parts if type(p) is str]
        return Result(
            text="".join(parts),
            status=status,
            chunks=self._count,
            duration=duration,
            session_id=self._session_id,
            error=error,
        )

    # --- the watchdog ---------------------------------------------------------------

    def _arm_timer(self) -> None:
        due: float | None = self._deadline
        if self._idle_timeout is not None:
            idle_due = self._idle_since + self._idle_timeout
            due = idle_due if due is None else min(due, idle_due)
        if due is not None:
            self._timer = self._loop.call_at(due, self._on_timer)  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        self._timer = None
        if self._phase is not _OPEN:
            return
        now = self._loop.time()  # type: ignore[union-attr]
        reason: str | None = None
        if self._deadline is not None and now >= self._deadline:
            reason = "total"
        elif (
            self._idle_timeout is not None
            and self._waiter is not None
            and self._tool_round is None
            and now >= self._idle_since + self._idle_timeout
        ):
            reason = "idle"
        if reason is None:
            if (
                self._waiter is None or self._tool_round is not None
            ) and self._idle_timeout is not None:
                # The consumer is busy, or tools run (the provider is not stalled):
                # idle time counts only while the provider is awaited.
                self._idle_since = max(self._idle_since, now)
            self._arm_timer()
            return
        self._expired = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._cancel_reason = reason
            waiter.cancel()


def _answer_meta(finish: Finish | None, model: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if finish is not None:
        if finish.reason:
            meta["finish_reason"] = finish.reason
        if finish.usage is not None:
            meta["usage"] = finish.usage.to_dict()
        if finish.cost is not None:
            meta["cost"] = finish.cost
        model = finish.model or model
    if model:
        meta["model"] = model
    return meta


class _Chunks:
    """What ``async for chunk in stream`` iterates.

    A plain iterator rather than an async generator: no generator frame to resume
    per chunk. A ``break`` out of the loop (or an exception in its body) drops
    it, and dropping it stops the stream at once, as closing a generator would:
    the provider's response is closed and the text so far is kept.
    """

    __slots__ = ("_next", "_stream")

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._next = stream.next

    def __aiter__(self) -> _Chunks:
        return self

    def __anext__(self) -> Awaitable[Chunk]:
        return self._next()

    def __del__(self) -> None:
        stream = self._stream
        if stream._phase is _OPEN or stream._phase is _OPENING:
            try:
                stream.stop()
            except Exception:  # a loop already closed at interpreter exit: nothing to stop
                pass
