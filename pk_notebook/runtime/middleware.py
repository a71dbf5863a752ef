"""Middleware: code that wraps every call, and the provider link that ends the chain.

A middleware is any callable ``(request, call_next) -> async iterator of events``,
most simply an async generator function::

    async def shout(request, call_next):
        async for event in call_next(request):
            if isinstance(event, Delta):
                event.text = event.text.upper()
            yield event

It sees (and may replace) the request before the call, every event on the way
back, and the :class:`Finish` event that carries usage and cost at the end.
Per-call facts belong in ``request.state`` (a dict for your own data), not on
the middleware instance, which is shared by every concurrent call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from .errors import ConfigurationError, RateLimitError, StreamError
from .pricing import Price, lookup_price
from .provider import Provider
from .types import Delta, Finish, ProviderConfig, ProviderEvent, Request, Usage

logger = logging.getLogger("pk_notebook")

CallNext = Callable[[Request], AsyncIterator[ProviderEvent]]
Middleware = Callable[[Request, CallNext], AsyncIterator[ProviderEvent]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When and how long to wait before trying a failed call again.

    Only calls that failed *before their first chunk* are retried: once text has
    been shown, a retry would show it twice. Waits grow exponentially with full
    jitter; a server's ``Retry-After`` is honoured up to ``max_retry_after``.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1 (1 = no retry)")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ConfigurationError("RetryPolicy backoffs must not be negative")

    def delay(self, attempt: int, error: BaseException) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None not to retry."""
        if attempt >= self.max_attempts or not getattr(error, "retryable", False):
            return None
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            if error.retry_after > self.max_retry_after:
                return None  # waiting that long is worse than telling the user now
            return max(0.0, error.retry_after)
        ceiling = min(self.max_backoff, self.initial_backoff * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling) if self.jitter else ceiling


class ProviderMiddleware:
    """The last link of every pipeline: sends the request to a provider.

    ``config`` holds the defaults for this provider (model, temperature, ...);
    options given to a single call override them.
    """

    terminal = True

    def __init__(
        self,
        provider: Provider,
        config: ProviderConfig | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not hasattr(provider, "stream"):
            raise ConfigurationError(
                f"{provider!r} is not a provider: it needs a stream(request) method. "
                "Use pk_notebook.providers.create_provider('mock') or a provider class."
            )
        self.provider = provider
        self.config = config or ProviderConfig()
        self.retry = retry or RetryPolicy()

    def __repr__(self) -> str:
        return f"ProviderMiddleware({self.provider!r}, config={self.config!r})"

    def __call__(
        self, request: Request, call_next: CallNext | None = None
    ) -> AsyncIterator[ProviderEvent]:
        return _ProviderCall(self, request)


class _ProviderCall:
    """The provider link's events: retries until the first content, then nothing.

    Before the first event with visible content, a failed call may be retried
    (once text has been shown, a retry would show it twice). From that event on,
    iteration is handed to the provider's own iterator: ``__anext__`` returns its
    awaitable directly, so the provider link adds no generator of its own per
    chunk (measured: about 5% of the whole pipeline's cost per chunk).
    """

    __slots__ = ("_attempt", "_events", "_link", "_next", "_request")

    def __init__(self, link: ProviderMiddleware, request: Request) -> None:
        config = link.config.merged(request.config)
        request = request.replace(config=config)
        call = request.call
        call.provider = getattr(link.provider, "name", type(link.provider).__name__)
        call.model = config.model or getattr(link.provider, "model", None)
        self._link = link
        self._request = request
        self._events: AsyncIterator[ProviderEvent] | None = None
        self._attempt = 0
        self._next: Callable[[], Awaitable[ProviderEvent]] = self._until_content

    def __aiter__(self) -> _ProviderCall:
        return self

    def __anext__(self) -> Awaitable[ProviderEvent]:
        return self._next()

    async def _until_content(self) -> ProviderEvent:
        link = self._link
        while True:
            events = self._events
            if events is None:
                self._attempt += 1
                self._request.call.attempts = self._attempt
                events = self._events = link.provider.stream(self._request)
            try:
                event = await events.__anext__()
            except StreamError as exc:
                await self.aclose()
                wait = link.retry.delay(self._attempt, exc)
                if wait is None:
                    raise
                logger.info(
                    "attempt %d failed before the first chunk (%s); retrying in %.2f s",
                    self._attempt,
                    type(exc).__name__,
                    wait,
                )
                await asyncio.sleep(wait)
                continue
            if type(event) is Delta and (event.text or event.reasoning):
                self._next = events.__anext__  # no retry from here on: hand over
            return event

    async def aclose(self) -> None:
        events, self._events = self._events, None
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class UsageTotals:
    """What a :class:`UsageMiddleware` has counted so far."""

    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    unpriced_calls: int = 0


class UsageMiddleware:
    """Counts tokens and cost of every call and puts the cost on its result.

    ``prices`` maps a model name (or a prefix ending in ``*``) to a :class:`Price`.
    A model without a price gets ``cost=None``: an unknown cost is not zero.
    """

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self.prices = dict(prices or {})
        self.totals = UsageTotals()

    def price_for(self, model: str | None) -> Price | None:
        return lookup_price(self.prices, model)

    async def __call__(self, request: Request, call_next: CallNext) -> AsyncIterator[ProviderEvent]:
        async for event in call_next(request):
            if isinstance(event, Finish):
                self._account(event, request)
            yield event

    def _account(self, finish: Finish, request: Request) -> None:
        totals = self.totals
        totals.calls += 1
        if finish.usage is None:
            totals.unpriced_calls += 1
            return
        totals.usage = totals.usage + finish.usage
        if finish.cost is None:  # a provider with its own prices= has set it already
            price = self.price_for(finish.model or request.call.model)
            if price is None:
                totals.unpriced_calls += 1
                return
            finish.cost = price.cost(finish.usage)
        totals.cost += finish.cost


class LoggingMiddleware:
    """Logs one line when a call starts and one when it ends (never the prompt text).

    Prompts and answers can be private; this logs sizes, timings and outcomes only.
    """

    def __init__(self, logger_name: str = "pk_notebook.calls", level: int = logging.INFO) -> None:
        self.log = logging.getLogger(logger_name)
        self.level = level

    async def __call__(self, request: Request, call_next: CallNext) -> AsyncIterator[ProviderEvent]:
        started = time.monotonic()
        chars = 0
        outcome = "stopped"
        self.log.log(
            self.level,
            "call start session=%s messages=%d",
            request.session_id,
            len(request.messages),
        )
        try:
            async for event in call_next(request):
                if type(event) is Delta:
                    chars += len(event.text)
                elif isinstance(event, Finish):
                    outcome = f"finished ({event.reason})"
                yield event
            if outcome == "stopped":
                outcome = "truncated"
        except BaseException as exc:
            outcome = f"failed ({type(exc).__name__})"
            raise
        finally:
            self.log.log(
                self.level,
                "call end session=%s chars=%d seconds=%.3f outcome=%s attempts=%s",
                request.session_id,
                chars,
                time.monotonic() - started,
                outcome,
                request.call.attempts,
            )
