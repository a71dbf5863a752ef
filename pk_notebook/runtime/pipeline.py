"""The pipeline: one object that runs calls through middleware to a provider.

::

    pipe = Pipeline(ProviderMiddleware(MockProvider.demo()))
    stream = await pipe.execute_stream("user", "Write a story")
    async with stream:
        async for chunk in stream:
            print(chunk.content, end="")

Calls ``*_with_context`` belong to a session: the pipeline holds the session's
lock from reading its history to saving the new turn, so concurrent turns on
one session queue up instead of interleaving. What is saved when a turn does
not finish is decided by ``interrupted`` (see :class:`Pipeline`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigurationError, UsageError
from .middleware import CallNext, Middleware, ProviderMiddleware
from .store import HistoryLimit, StateStore, check_session_id
from .stream import Stream
from .types import UNSET, Message, ProviderConfig, ProviderEvent, Request, Result, StreamStatus

if TYPE_CHECKING:
    from .sync import SyncPipeline

logger = logging.getLogger("pk_notebook")

DEFAULT_IDLE_TIMEOUT = 30.0


class Pipeline:
    """Runs calls through ``middleware``; the last one must be a :class:`ProviderMiddleware`.

    Parameters:
        state_store: where sessions live; an in-memory store if not given.
        timeout: total seconds a call may take (None: no limit).
        idle_timeout: seconds without content before a stream is abandoned (None: never).
        history: how much of a session's history is sent with each turn.
        interrupted: ``"keep"`` stores a stopped or failed turn's partial answer marked
            with its status; ``"drop"`` stores nothing for it.
        lock_timeout: seconds a turn waits for another turn on the same session.
        shutdown_grace: seconds ``shutdown()`` lets running streams finish.
    """

    def __init__(
        self,
        *middleware: Middleware,
        state_store: StateStore | None = None,
        timeout: float | None = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        history: HistoryLimit | None = None,
        interrupted: Literal["keep", "drop"] = "keep",
        lock_timeout: float | None = 120.0,
        shutdown_grace: float = 10.0,
    ) -> None:
        if not middleware:
            raise ConfigurationError(
                "a Pipeline needs at least a ProviderMiddleware(provider), e.g. "
                "Pipeline(ProviderMiddleware(MockProvider.demo()))"
            )
        if not getattr(middleware[-1], "terminal", False):
            raise ConfigurationError(
                "the last middleware of a Pipeline must be ProviderMiddleware(provider); "
                f"got {middleware[-1]!r}"
            )
        for link in middleware[:-1]:
            if getattr(link, "terminal", False):
                raise ConfigurationError("only the last middleware may be a ProviderMiddleware")
            if not callable(link):
                raise ConfigurationError(f"middleware {link!r} is not callable")
        if interrupted not in ("keep", "drop"):
            raise ConfigurationError("interrupted must be 'keep' or 'drop'")
        _check_seconds("timeout", timeout)
        _check_seconds("idle_timeout", idle_timeout)
        _check_seconds("lock_timeout", lock_timeout)
        self.middleware: tuple[Middleware, ...] = middleware
        self._owns_store = state_store is None
        if state_store is None:
            from ..sessions.memory import MemoryStore

            state_store = MemoryStore()
        self.state_store: StateStore = state_store
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.history = history
        self.interrupted = interrupted
        self.lock_timeout = lock_timeout
        self.shutdown_grace = shutdown_grace
        self._streams: set[Stream] = set()
        self._closed = False
        self._sync: SyncPipeline | None = None

    def __repr__(self) -> str:
        links = ", ".join(
            type(m).__name__ if not hasattr(m, "__name__") else m.__name__ for m in self.middleware
        )
        return f"<Pipeline [{links}] store={type(self.state_store).__name__}>"

    @property
    def provider_middleware(self) -> ProviderMiddleware:
        return self.middleware[-1]  # type: ignore[return-value]

    @property
    def provider(self) -> Any:
        return self.provider_middleware.provider

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    # --- calls ----------------------------------------------------------------------

    async def execute_stream(
        self,
        role: str,
        content: str,
        *,
        config: ProviderConfig | None = None,
        timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
        history: list[Message] | None = None,
    ) -> Stream:
        """Start a call and return its stream once the first chunk has arrived.

        Errors before the first chunk (bad key, unreachable server, rate limit after
        retries) are raised here. ``history`` is a list of earlier messages to send
        along without any session.
        """
        messages = (*(history or ()), Message(role, content))  # type: ignore[arg-type]
        return await self._open(messages, None, config, timeout, idle_timeout, None)

    async def execute_stream_with_context(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        config: ProviderConfig | None = None,
        timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
    ) -> Stream:
        """Like :meth:`execute_stream`, with the session's history sent and the turn saved."""
        check_session_id(session_id)
        new = Message(role, content)  # type: ignore[arg-type]
        self._check_open()
        lock = self.state_store.lock(session_id, timeout=self.lock_timeout)
        await lock.__aenter__()
        try:
            past = await self.state_store.load(session_id)
            if self.history is not None:
                past = self.history.apply(past)
        except BaseException as exc:
            await lock.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return await self._open(
            (*past, new), session_id, config, timeout, idle_timeout, (new, lock)
        )

    async def execute(self, role: str, content: str, **options: Any) -> Result:
        """Run a call to the end and return its result; raise its error if it did not finish."""
        stream = await self.execute_stream(role, content, **options)
        return await stream.collect()

    async def execute_with_context(
        self, session_id: str, role: str, content: str, **options: Any
    ) -> Result:
        """Run a session turn to the end and return its result."""
        stream = await self.execute_stream_with_context(session_id, role, content, **options)
        return await stream.collect()

    # --- lifecycle ------------------------------------------------------------------

    async def shutdown(self, grace: float | None = None) -> None:
        """Refuse new calls, let running streams finish for ``grace`` seconds, stop the
        rest, and close the providers. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        grace = self.shutdown_grace if grace is None else grace
        running = list(self._streams)
        if running:
            waits = [asyncio.ensure_future(s.wait_closed()) for s in running]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for task in pending:
                task.cancel()
            for stream in running:
                if not stream.ended:
                    await stream.aclose()
        for link in self.middleware:
            provider = getattr(link, "provider", None)
            if provider is not None and hasattr(provider, "aclose"):
                await provider.aclose()
        if self._owns_store:
            await self.state_store.aclose()
        if self._sync is not None:
            self._sync._detach()

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    @property
    def sync(self) -> SyncPipeline:
        """A blocking facade for scripts and non-async notebook cells."""
        if self._sync is None:
            from .sync import SyncPipeline

            self._sync = SyncPipeline(self)
        return self._sync

    # --- internals ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError("this pipeline has been shut down; create a new Pipeline")

    async def _open(
        self,
        messages: tuple[Message, ...],
        session_id: str | None,
        config: ProviderConfig | None,
        timeout: float | None,
        idle_timeout: float | None,
        turn: tuple[Message, AbstractAsyncContextManager[None]] | None,
    ) -> Stream:
        try:
            self._check_open()
            if config is not None and not isinstance(config, ProviderConfig):
                raise ConfigurationError("config must be a ProviderConfig")
            timeout = self.timeout if timeout is UNSET else timeout
            idle_timeout = self.idle_timeout if idle_timeout is UNSET else idle_timeout
            _check_seconds("timeout", timeout)
            _check_seconds("idle_timeout", idle_timeout)
            request = Request(messages, config or ProviderConfig(), session_id)
            closers: list[AsyncGenerator[Any, None]] = []
            events = self._chain(0, closers)(request)
        except BaseException as exc:
            if turn is not None:
                await turn[1].__aexit__(type(exc), exc, exc.__traceback__)
            raise

        async def on_end(stream: Stream, result: Result) -> list[str] | None:
            self._streams.discard(stream)
            if turn is None:
                return None
            user_message, lock = turn
            try:
                warnings = await self._save_turn(session_id, user_message, result)  # type: ignore[arg-type]
            finally:
                # A release that fails (the store went away) must neither hide the
                # save's own outcome nor raise over the answer the user has seen.
                release_warning: str | None
                try:
                    await lock.__aexit__(None, None, None)
                except Exception as exc:
                    logger.warning("could not release session %r: %s", session_id, exc)
                    release_warning = f"the session lock was not released cleanly: {exc}"
                else:
                    release_warning = None
            if release_warning:
                warnings = [*(warnings or []), release_warning]
            return warnings

        stream = Stream(
            events,
            request=request,
            closers=closers,
            timeout=timeout,
            idle_timeout=idle_timeout,
            on_end=on_end,
        )
        self._streams.add(stream)
        await stream._start()
        return stream

    def _chain(self, index: int, closers: list[AsyncGenerator[Any, None]]) -> CallNext:
        link = self.middleware[index]
        if index == len(self.middleware) - 1:
            next_link: CallNext | None = None
        else:
            next_link = self._chain(index + 1, closers)

        def call(request: Request) -> AsyncIterator[ProviderEvent]:
            events = link(request, next_link)  # type: ignore[arg-type]
            if hasattr(events, "aclose"):
                closers.append(events)  # type: ignore[arg-type]
            return events

        return call

    async def _save_turn(
        self, session_id: str, user_message: Message, result: Result
    ) -> list[str] | None:
        if result.status is StreamStatus.FINISHED:
            answer = result.messages[-1]
        elif result.text and self.interrupted == "keep":
            answer = result.messages[-1]
        else:
            # Nothing to keep: leave the history as it was, so it never holds a
            # question without an answer.
            return None
        try:
            await self.state_store.append(session_id, [user_message, answer])
        except Exception as exc:
            logger.warning("the turn of session %r was not saved: %s", session_id, exc)
            return [f"the turn was not saved to the session store: {exc}"]
        return None


def _check_seconds(name: str, value: Any) -> None:
    if value is None or value is UNSET:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds or None, got {value!r}"
        )
