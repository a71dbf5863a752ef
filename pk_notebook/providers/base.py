"""The part every HTTP streaming provider shares: one request, one SSE body, typed errors.

A provider subclass says how to build the request (:meth:`HTTPProvider.build`)
and supplies a *parser*: an object whose ``feed(bytes)`` returns the wire events
those bytes completed. Parsing a whole read at once (instead of one event per
call) keeps the per-chunk cost down, and a parser that meets an error stores it
in ``.error`` after returning the events before it, so no text that arrived is
lost. ``.done`` says the end marker arrived; ``end()`` is asked at a clean end of
the body and returns a :class:`Finish` only if the answer was complete.
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Protocol

import httpx

from ..runtime.errors import ConfigurationError, StreamError, register_secret
from ..runtime.types import Finish, ProviderConfig, ProviderEvent, Request, Usage
from . import _http
from .limits import DEFAULT_LIMITS, StreamLimits
from .pricing import Price, lookup_price


class Parser(Protocol):
    started: bool
    done: bool
    error: StreamError | None

    def feed(self, chunk: bytes) -> list[ProviderEvent]: ...

    def end(self) -> Finish | None: ...


class HTTPProvider(abc.ABC):
    """Base class of the OpenAI-compatible, Anthropic and Gemini providers.

    Options common to all of them:
        model, temperature, top_p, max_tokens: request defaults (a call's config wins).
        api_key: the key; if not given, the first set variable of ``key_env``.
        base_url: the server; the key is required only for the official host.
        headers: extra headers sent with every request.
        timeout: an ``httpx.Timeout`` or seconds (connect/read/write/pool).
        max_connections: bound of this provider's pool (per event loop).
        transport: where connections come from: ``"aiohttp"`` (aiohttp's pool and
            C parser, the fastest under many concurrent streams), ``"httpx"``
            (httpx's own transport), or an ``httpx.AsyncBaseTransport`` such as
            ``httpx.MockTransport``. Default: ``$PK_NOTEBOOK_HTTP_TRANSPORT``, else
            ``"aiohttp"``. See ``pk_notebook.providers._http``.
        max_decompressed_bytes, max_compression_ratio: caps on a compressed
            response body once inflated (default 256 MiB and 500x); past either
            the stream ends in a ``ProtocolError`` keeping the partial text, so a
            small "zip bomb" cannot fill the memory. See ``_decode.BodyLimits``.
        limits: caps on one answer (:class:`~pk_notebook.providers.limits.StreamLimits`:
            SSE event size, answer characters, tool-call characters); defaults are
            generous for real answers.
        verify: TLS verification: True, False, or an ``ssl.SSLContext``.
        prices: a model -> :class:`Price` table (e.g. ``DEFAULT_PRICES``); with it,
            results carry ``cost``.
        name, key_env, require_key: for aliases (``"ollama"``, ``"groq"``): the name
            shown in results, the variables the key is read from, and whether a
            missing key is an error (default: only for the official host).
    """

    #: registry name and the name shown in results
    name: str = "http"
    default_base_url: ClassVar[str] = ""
    official_hosts: ClassVar[frozenset[str]] = frozenset()
    key_env: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[ProviderConfig] = ProviderConfig()

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        system: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
        max_connections: int = _http.DEFAULT_MAX_CONNECTIONS,
        prices: Mapping[str, Price] | None = None,
        name: str | None = None,
        key_env: tuple[str, ...] | None = None,
        require_key: bool | None = None,
        transport: _http.Transport | None = None,
        verify: bool | ssl.SSLContext = True,
        max_decompressed_bytes: int = _http.DEFAULT_MAX_BYTES,
        max_compression_ratio: float = _http.DEFAULT_MAX_RATIO,
        limits: StreamLimits | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        base = (base_url or self.default_base_url).rstrip("/")
        try:
            url = httpx.URL(base)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"base_url {base_url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"base_url {base_url!r} must be an http(s) URL such as http://localhost:11434/v1"
            )
        self.base_url = base
        env = self.key_env if key_env is None else key_env
        self._key_env = env
        self._api_key = _http.resolve_key(
            self.name,
            api_key,
            env,
            required=url.host in self.official_hosts if require_key is None else require_key,
        )
        # From here on every redact() in this process removes this exact key, whatever
        # its shape (an Azure hex key, a vLLM --api-key): errors built anywhere below.
        register_secret(self._api_key)
        if limits is not None and not isinstance(limits, StreamLimits):
            raise ConfigurationError("limits must be a StreamLimits, e.g. StreamLimits()")
        self.limits = limits or DEFAULT_LIMITS
        self.config = self.defaults.merged(
            ProviderConfig(
                model=model,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                system=system,
            )
        )
        self.model = self.config.model or ""
        self.extra_headers = dict(headers or {})
        self.prices = dict(prices) if prices else None
        if timeout is None:
            timeout = _http.DEFAULT_TIMEOUT
        elif not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(timeout)
        self.body_limits = _http.BodyLimits(max_decompressed_bytes, max_compression_ratio)
        self._clients = _http.ClientsByLoop(
            _http.client_factory(
                _http.default_transport() if transport is None else transport,
                peer=_http.Peer(self.name, self._api_key),
                base_url=base,
                max_connections=max_connections,
                timeout=timeout,
                verify=verify,
            )
        )

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return (
            f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, "
            f"base_url={self.base_url!r}, api_key={key})"
        )

    @property
    def has_key(self) -> bool:
        return bool(self._api_key)

    # --- what subclasses provide ------------------------------------------------------

    @abc.abstractmethod
    def build(self, request: Request, config: ProviderConfig) -> tuple[str, dict[str, str], bytes]:
        """``(url, headers, body)`` of the HTTP request for ``request``."""

    @abc.abstractmethod
    def parser(self, config: ProviderConfig) -> Parser:
        """A fresh parser for one response (it keeps the state of that stream)."""

    # --- the call -------------------------------------------------------------------

    async def stream(self, request: Request) -> AsyncIterator[ProviderEvent]:
        config = self.config.merged(request.config)
        if not config.model:
            raise ConfigurationError(
                f"{self.name} needs a model: use '{self.name}:MODEL' or pass model=..."
            )
        url, headers, body = self.build(request, config)
        parser = self.parser(config)
        secret = self._api_key
        client = await self._clients.get()
        # Every failure below is already one of the runtime's typed errors: the
        # client translated its library's exceptions where it called the library.
        async with client.stream(url, headers=headers, content=body) as response:
            read = _http.body_reader(self.name, response, self.body_limits)
            await _http.check_response(self.name, response, read, secret)
            closed = False
            try:
                feed = parser.feed
                while raw := await read():
                    events = feed(raw)
                    for event in events:
                        yield event
                    if parser.done or parser.error is not None:
                        break
                if parser.error is not None:
                    raise parser.error
                if not parser.done:
                    final = parser.end()
                    if final is not None:
                        yield final
            except GeneratorExit:
                # Closed by the consumer, or by asyncio.run() at its end, which closes
                # every suspended generator at once, this one possibly while its
                # consumer is closing it too: nothing here may wait (a second close
                # meeting a running one prints "already running"). An unread rest of
                # the body costs the connection's reuse, nothing else.
                closed = True
                raise
            finally:
                if parser.done and parser.error is None and not closed:
                    # The end marker arrived: read the (usually already buffered)
                    # rest so the connection goes back to the pool, briefly.
                    await _http.drain(read)

    async def aclose(self) -> None:
        await self._clients.aclose()

    # --- helpers for subclasses -----------------------------------------------------

    def finish(
        self,
        reason: str | None,
        usage: Usage | None,
        tool_calls: tuple[Any, ...],
        model: str | None,
        *,
        reasoning_blocks: tuple[Mapping[str, Any], ...] = (),
    ) -> Finish:
        cost = None
        if self.prices is not None and usage is not None:
            price = lookup_price(self.prices, model or self.model)
            if price is not None:
                cost = price.cost(usage)
        return Finish(
            reason=reason,
            usage=usage,
            tool_calls=tool_calls,
            model=model,
            cost=cost,
            reasoning_blocks=reasoning_blocks,
        )
