"""One round of tool calls inside a turn: run them, report them, account for them.

:class:`~pk_notebook.runtime.stream.Stream` owns the turn; this module holds
what a round of calls needs so the stream stays readable: the calls streaming
in (:class:`Fragments`), and the calls running (:class:`ToolRound`). A round
runs every call in a task of its own, so parallel calls run concurrently and
Stop cancels them all at once. Every call ends with exactly one
:class:`ToolResult`, however it ends, so the history saved for the turn always
pairs each call with its result (providers reject a call without one).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Mapping
from typing import Any

from .errors import redact
from .tools import Approver, ToolArgumentsError, ToolSpec
from .types import Message, ToolCall, ToolCallDelta, ToolEvent, ToolResult, ToolStatus

logger = logging.getLogger("pk_notebook")

DENIED = "The user declined to run this tool call."
STOPPED = "The user stopped the turn before this tool call finished."
ABANDONED = (
    "The user stopped the turn while this tool call ran; its thread was left running "
    "and its result was not used."
)


NOT_ANSWERED = (
    "No result was given for this tool call (the caller that runs it sent none); go on without it."
)

_KEPT_STATUS = frozenset({"stopped", "abandoned", "denied"})


def pair_open_calls(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """``messages`` with an error result after every call that has none.

    A turn can end with calls the caller runs itself (tools without a function);
    the caller is meant to send their results next, but a caller that sends a new
    question instead would leave calls without results, and every provider refuses
    those. The results added here go into the request only, never the session, so
    a result that arrives later still finds its call open.
    """
    out: list[Message] = []
    open_calls: list[ToolCall] = []

    def close_open() -> None:
        for call in open_calls:
            out.append(
                Message("tool", NOT_ANSWERED, tool_call_id=call.id, name=call.name, is_error=True)
            )
        open_calls.clear()

    for message in messages:
        if message.role == "tool":
            open_calls[:] = [c for c in open_calls if c.id != message.tool_call_id]
        else:
            close_open()
        out.append(message)
        if message.role == "assistant" and message.tool_calls:
            open_calls.extend(message.tool_calls)
    close_open()
    if len(out) == len(messages):
        return messages
    return tuple(out)


class Fragments:
    """The calls of one model answer as they stream in, for ``start``/``arguments`` events."""

    __slots__ = ("_calls", "round")

    def __init__(self, round: int) -> None:
        self.round = round
        self._calls: dict[int, list[Any]] = {}  # index -> [id, name, [pieces], started]

    def feed(self, delta: ToolCallDelta) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        slot = self._calls.get(delta.index)
        if slot is None:
            slot = self._calls[delta.index] = ["", "", [], False]
        if delta.id:
            slot[0] = delta.id
        if delta.name:
            slot[1] += delta.name
        if not slot[3] and slot[1]:
            slot[3] = True
            events.append(ToolEvent("start", slot[0], slot[1], index=delta.index, round=self.round))
        if delta.arguments:
            slot[2].append(delta.arguments)
            events.append(
                ToolEvent(
                    "arguments",
                    slot[0],
                    slot[1],
                    index=delta.index,
                    round=self.round,
                    arguments="".join(slot[2]),
                    delta=delta.arguments,
                )
            )
        return events


def with_ids(calls: tuple[ToolCall, ...], round: int) -> tuple[ToolCall, ...]:
    """Calls with an id each: a provider that sends none (Gemini, often) still needs
    results paired with calls."""
    if all(c.id for c in calls):
        return calls
    return tuple(
        c if c.id else ToolCall(f"call_{round}_{i}", c.name, c.arguments, c.signature)
        for i, c in enumerate(calls)
    )


class ToolRound:
    """The calls of one model answer, running. Events go to ``queue`` as they happen."""

    def __init__(
        self,
        calls: tuple[ToolCall, ...],
        tools: Mapping[str, ToolSpec],
        approve: Approver | None,
        round: int,
    ) -> None:
        self.calls = calls
        self.round = round
        self._tools = tools
        self._approve = approve
        self.queue: asyncio.Queue[ToolEvent] = asyncio.Queue()
        self.results: dict[int, ToolResult] = {}
        self._started: dict[int, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        put = self.queue.put_nowait
        for index, call in enumerate(self.calls):
            put(self._event("call", index, call))
        loop = asyncio.get_running_loop()
        for index, call in enumerate(self.calls):
            self._tasks.append(loop.create_task(self._run(index, call)))

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.calls) and self.queue.empty()

    def cancel(self) -> None:
        """Stop every call still running; each gets its ``stopped``/``abandoned`` result.

        Plain code, no awaiting: it runs on the stream's end path.
        """
        now = time.monotonic()
        for index, call in enumerate(self.calls):
            if index in self.results:
                continue
            started = self._started.get(index)
            spec = self._tools.get(call.name)
            function = getattr(spec, "function", None)
            sync = started is not None and function is not None and not _is_async(function)
            status: ToolStatus = "abandoned" if sync else "stopped"
            self._settle(
                index,
                call,
                status,
                ABANDONED if sync else STOPPED,
                now - started if started is not None else 0.0,
            )
        for task in self._tasks:
            if not task.done():
                task.cancel()

    def messages(self) -> list[Message]:
        """One ``tool`` message per call, in the calls' order."""
        out = []
        for index, call in enumerate(self.calls):
            result = self.results[index]
            out.append(
                Message(
                    "tool",
                    result.output,
                    # kept, so a transcript reloaded later can still tell a denied or
                    # stopped call from one whose function failed
                    status=result.status if result.status in _KEPT_STATUS else None,
                    tool_call_id=call.id,
                    name=call.name,
                    is_error=result.status != "ok",
                )
            )
        return out

    def ordered_results(self) -> list[ToolResult]:
        return [self.results[i] for i in range(len(self.calls)) if i in self.results]

    # --- one call ---------------------------------------------------------------------

    async def _run(self, index: int, call: ToolCall) -> None:
        spec = self._tools.get(call.name)
        try:
            if spec is None or not spec.runnable:
                known = ", ".join(sorted(self._tools)) or "none"
                self._settle(
                    index,
                    call,
                    "error",
                    f"Error: there is no tool named {call.name!r}; the tools are: {known}.",
                    0.0,
                )
                return
            if self._approve is not None:
                verdict = self._approve(call)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if not verdict:
                    self._settle(index, call, "denied", DENIED, 0.0)
                    return
            started = self._started[index] = time.monotonic()
            self.queue.put_nowait(self._event("running", index, call))
            value, output = await spec.run(call.arguments)  # type: ignore[attr-defined]
            self._settle(index, call, "ok", output, time.monotonic() - started, value)
        except asyncio.CancelledError:
            raise  # cancel() has recorded the result
        except ToolArgumentsError as exc:
            self._settle(index, call, "error", f"Error: {exc}", self._elapsed(index))
        except Exception as exc:
            logger.debug("tool %s raised", call.name, exc_info=True)
            text = redact(f"Error: {type(exc).__name__}: {exc}")
            self._settle(index, call, "error", text, self._elapsed(index))

    def _elapsed(self, index: int) -> float:
        started = self._started.get(index)
        return time.monotonic() - started if started is not None else 0.0

    def _settle(
        self,
        index: int,
        call: ToolCall,
        status: ToolStatus,
        output: str,
        duration: float,
        value: Any = None,
    ) -> None:
        if index in self.results:
            return
        self.results[index] = ToolResult(call, output, status, duration, value)
        kind = {"ok": "result", "error": "error", "denied": "denied"}.get(status, "stopped")
        self.queue.put_nowait(self._event(kind, index, call, output=output, duration=duration))

    def _event(
        self,
        kind: Any,
        index: int,
        call: ToolCall,
        output: str | None = None,
        duration: float | None = None,
    ) -> ToolEvent:
        return ToolEvent(
            kind,
            call.id,
            call.name,
            index=index,
            round=self.round,
            arguments=call.arguments,
            output=output,
            duration=duration,
        )


def _is_async(function: Any) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004
    )
