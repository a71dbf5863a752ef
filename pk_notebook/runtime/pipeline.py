"""The pipeline: one object that runs turns through middleware to a provider.

::

    pipe = Pipeline(ProviderMiddleware(MockProvider.demo()))   # or Pipeline(provider)
    async with pipe.stream("Write a story", session="demo") as stream:
        async for chunk in stream:
            print(chunk.content, end="")

A turn is a :class:`~pk_notebook.runtime.stream.Stream`: it owns its lifecycle
(session lock, history, provider call, save). Turns on one session queue up
instead of interleaving. What is saved when a turn does not finish is decided
by ``interrupted`` (see :class:`Pipeline`). The Go runtime's calls
(``execute_stream``, ``execute_stream_with_context``, ``execute``) are thin
wrappers over :meth:`Pipeline.stream`.

``Pipeline(provider)`` is short for ``Pipeline(ProviderMiddleware(provider))``.
A provider name such as ``"openai:gpt-4o-mini"`` is not accepted here: the
runtime knows no providers; ``Pipeline(create_provider("openai:gpt-4o-mini"))``
builds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from .attachments import as_attachments
from .errors import ConfigurationError, UsageError
from .memory import MemoryStore
from .middleware import CallNext, Middleware, ProviderMiddleware
from .schema import output_schema
from .store import HistoryLimit, StateStore, check_session_id
from .stream import Stream
from .tools import DEFAULT_MAX_TOOL_ROUNDS, Approver, as_tools
from .types import UNSET, Message, ProviderConfig, ProviderEvent, Request, Result

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
        max_tool_rounds: the default bound on rounds of tool calls in one turn
            (``DEFAULT_MAX_TOOL_ROUNDS``, 8); after the last, the model is asked to
            answer in text.
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
        max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    ) -> None:
        if len(middleware) == 1 and _is_provider(middleware[0]):
            # The one-provider chain, written short: Pipeline(provider).
            middleware = (ProviderMiddleware(middleware[0]),)  # type: ignore[arg-type]
        for link in middleware:
            if isinstance(link, str):
                raise ConfigurationError(
                    f"Pipeline({link!r}): build the provider first, e.g. "
                    f"Pipeline(create_provider({link!r})) with "
                    "'from pk_notebook.providers import create_provider'"
                )
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
        _check_rounds(max_tool_rounds)
        self.max_tool_rounds = max_tool_rounds
        self.middleware: tuple[Middleware, ...] = middleware
        self._owns_store = state_store is None
        if state_store is None:
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

    def stream(
        self,
        content: str | Message,
        *,
        session: str | None = None,
        role: str = "user",
        config: ProviderConfig | None = None,
        timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
        history: list[Message] | tuple[Message, ...] | None = None,
        tools: Any = None,
        max_tool_rounds: int | None = None,
        approve: Approver | None = None,
        schema: Any = None,
        attachments: Any = None,
    ) -> Stream:
        """A turn, ready to run: ``async with pipe.stream("...") as s: async for c in s``.

        Nothing happens until it is opened, so ``stream.stop()`` is valid from the
        start. With ``session``, the session's history is sent along, and the turn
        is saved when it ends (the session's lock is held from loading the history
        to saving). ``history`` is a list of earlier messages to send without any
        session. Bad options raise here, before anything is sent (a tool whose
        parameters cannot be described, too).

        ``tools`` are Python functions (or :func:`~pk_notebook.runtime.tools.tool`
        objects) the model may call: the turn runs them and sends the results
        back, for up to ``max_tool_rounds`` rounds, all under one lock, one save
        and one :meth:`Stream.stop`. ``approve(call)`` (sync or async) is asked
        before each call runs; a false answer denies it.

        ``schema`` (a pydantic model, dataclass, TypedDict or JSON-schema dict)
        asks for a structured answer: ``stream.partial`` while it streams,
        ``result.parsed`` at the end (see :mod:`pk_notebook.runtime.schema`).

        ``attachments`` are images and PDFs sent with the message: figures, PIL
        images, ``IPython.display.Image``, paths (see
        :mod:`pk_notebook.runtime.attachments`, which also says what a session keeps).

        ``content`` may also be a whole :class:`Message`: a client that runs its own
        tools continues its turn with a ``role="tool"`` result this way.
        """
        self._check_open()
        if config is not None and not isinstance(config, ProviderConfig):
            raise ConfigurationError(
                "config must be a ProviderConfig, e.g. ProviderConfig(max_tokens=500)"
            )
        if session is not None:
            check_session_id(session)
            if history:
                raise ConfigurationError(
                    "give either session= (its stored history is sent) or history=, not both"
                )
        timeout = self.timeout if timeout is UNSET else timeout
        idle_timeout = self.idle_timeout if idle_timeout is UNSET else idle_timeout
        _check_seconds("timeout", timeout)
        _check_seconds("idle_timeout", idle_timeout)
        rounds = self.max_tool_rounds if max_tool_rounds is None else max_tool_rounds
        _check_rounds(rounds)
        if approve is not None and not callable(approve):
            raise ConfigurationError("approve must be a function: approve(call) -> bool")
        if isinstance(content, Message):
            if attachments:
                raise ConfigurationError("attach files to the Message itself")
            message = content
        else:
            message = Message(role, content, attachments=as_attachments(attachments))  # type: ignore[arg-type]
        return Stream(
            self,
            message,
            session_id=session,
            history=tuple(history or ()),
            config=config,
            timeout=timeout,
            idle_timeout=idle_timeout,
            tools=as_tools(tools),
            max_tool_rounds=rounds,
            approve=approve,
            schema=output_schema(schema) if schema is not None else None,
        )

    async def execute_stream(
        self,
        role: str,
        content: str,
        *,
        config: ProviderConfig | None = None,
        timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
        history: list[Message] | None = None,
        **options: Any,
    ) -> Stream:
        """Start a call and return its stream once the first chunk has arrived.

        The Go runtime's ``ExecuteStream``: errors before the first chunk (bad key,
        unreachable server, rate limit after retries) are raised here. ``options``
        are :meth:`stream`'s (``tools``, ``max_tool_rounds``, ``approve``).
        """
        stream = self.stream(
            content,
            role=role,
            config=config,
            timeout=timeout,
            idle_timeout=idle_timeout,
            history=history,
            **options,
        )
        return await stream.open()

    async def execute_stream_with_context(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        config: ProviderConfig | None = None,
        timeout: float | None = UNSET,
        idle_timeout: float | None = UNSET,
        **options: Any,
    ) -> Stream:
        """Like :meth:`execute_stream`, with the session's history sent and the turn saved."""
        stream = self.stream(
            content,
            session=session_id,
            role=role,
            config=config,
            timeout=timeout,
            idle_timeout=idle_timeout,
            **options,
        )
        return await stream.open()

    async def execute(self, role: str, content: str, **options: Any) -> Result:
        """Run a call to the end and return its result; raise its error if it did not finish."""
        async with self.stream(content, role=role, **options) as stream:
            return await stream.collect()

    async def execute_with_context(
        self, session_id: str, role: str, content: str, **options: Any
    ) -> Result:
        """Run a session turn to the end and return its result."""
        async with self.stream(content, session=session_id, role=role, **options) as stream:
            return await stream.collect()

    # --- lifecycle ------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Wait until no stream of this pipeline is running (streams may start meanwhile:
        it returns once none is left)."""
        while self._streams:  # opened streams only: a stream joins when it opens
            await asyncio.gather(
                *(s.wait_closed() for s in list(self._streams)), return_exceptions=True
            )

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
            await asyncio.gather(*waits, return_exceptions=True)
            for stream in running:
                if not stream.ended:
                    await stream.aclose()
        # Every step below runs even if an earlier one fails: a provider whose close
        # raises must not leave the store (or the next provider) open.
        for link in self.middleware:
            provider = getattr(link, "provider", None)
            if provider is not None and hasattr(provider, "aclose"):
                try:
                    await provider.aclose()
                except Exception:
                    logger.warning("closing %r failed", provider, exc_info=True)
        if self._owns_store:
            try:
                await self.state_store.aclose()
            except Exception:
                logger.warning("closing the session store failed", exc_info=True)
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


def _is_provider(obj: object) -> bool:
    """A provider (an object with ``stream(request)``), as opposed to a middleware link."""
    return (
        not getattr(obj, "terminal", False)
        and callable(getattr(obj, "stream", None))
        and not isinstance(obj, type)
    )


def _check_rounds(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"max_tool_rounds must be a positive integer, got {value!r}")


def _check_seconds(name: str, value: Any) -> None:
    if value is None or value is UNSET:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds or None, got {value!r}"
        )
