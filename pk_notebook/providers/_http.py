"""What the HTTP providers share: keys, the connection pool, and turning HTTP trouble
into the runtime's typed errors.

Providers speak httpx: they read an ``httpx.Response`` (status, headers, body,
httpx's errors), and the connections underneath are chosen with the provider's
``transport`` option:

``"aiohttp"`` (the default)
    aiohttp's connection pool and C HTTP parser (:mod:`._aiohttp`), the plug-in
    the official openai SDK also offers for speed. Reading one small SSE event
    costs about a third of what it costs through httpcore, and sending a request
    well under half; with 1000 paced streams in one event loop that is the
    difference between a loop that keeps up and one that lags by a third of a
    second (``benchmarks/providers.py`` has the figures). httpx's client layer
    (cookies, redirects, auth flows) has no use for an API call and is skipped.
    Proxies come from the environment (``HTTPS_PROXY``, ``NO_PROXY``), as with
    httpx, read once when the pool is made.

``"httpx"``
    httpx's own transport (httpcore + h11). Its pool looks for a connection by
    scanning every connection for every waiting request, so one pool holding 1000
    connections spends its time scanning (httpcore issue 1035): requests are
    spread over a few small httpx clients ("shards", at most :data:`SHARD_SIZE`
    connections each), a new one opened only when all are full.

an ``httpx.AsyncBaseTransport``
    used as given, through one ``httpx.AsyncClient`` (``httpx.MockTransport`` in
    a test, a transport with custom TLS or proxy settings); the provider's
    ``aclose()`` closes it.

One pool per event loop: a connection belongs to the loop that opened it, and the
sync facade runs calls on its own background loop, so a provider used from a
notebook's loop and from the facade keeps one pool for each.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import ssl
import sys
import time
import urllib.request
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx

from ..runtime.errors import (
    AuthenticationError,
    ConfigurationError,
    MissingAPIKey,
    NetworkError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    ServerError,
    redact,
)

logger = logging.getLogger("pk_notebook")

#: what the ``transport`` option of a provider accepts
Transport = str | httpx.AsyncBaseTransport
TRANSPORTS = ("aiohttp", "httpx")
DEFAULT_TRANSPORT = "aiohttp"
#: names the transport of providers built without ``transport=`` (a way to switch
#: every provider of a notebook or server at once, e.g. behind an unusual proxy)
TRANSPORT_ENV = "PK_NOTEBOOK_HTTP_TRANSPORT"

#: connections per httpx client; small enough that httpx's pool scans stay cheap
SHARD_SIZE = 64
#: idle connections kept per shard
SHARD_KEEPALIVE = 16
#: total connections a provider may open (per event loop)
DEFAULT_MAX_CONNECTIONS = 1024
#: idle connections kept open for reuse (aiohttp keeps every released one until expiry)
KEEPALIVE_SECONDS = 30.0
#: bytes of an error body read to build the message
ERROR_BODY_LIMIT = 64 * 1024
#: after the end marker, how long the rest of the body may take to arrive (so the
#: connection can be reused) before the connection is dropped instead
DRAIN_SECONDS = 0.05

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=60.0)

_ssl_context: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def _ssl_for(verify: bool | ssl.SSLContext) -> ssl.SSLContext | bool:
    if verify is True:
        return _shared_ssl_context()
    return verify


def default_transport() -> str:
    return os.environ.get(TRANSPORT_ENV, "").strip().lower() or DEFAULT_TRANSPORT


def check_transport(transport: Transport) -> Transport:
    """``transport`` if a provider can use it, else a ConfigurationError saying what can."""
    if isinstance(transport, httpx.AsyncBaseTransport):
        return transport
    if transport not in TRANSPORTS:
        raise ConfigurationError(
            f"transport={transport!r} is not known (from transport= or ${TRANSPORT_ENV}): "
            "use 'aiohttp' (the default), 'httpx', or an httpx.AsyncBaseTransport instance"
        )
    return transport


def resolve_key(
    provider: str, api_key: str | None, env_vars: tuple[str, ...], *, required: bool
) -> str | None:
    """The key given, or the first set environment variable; ``MissingAPIKey`` if required.

    Keys are resolved when the provider is built, so a missing key is reported by
    ``create_provider(...)`` (where the user chose the provider), not mid-notebook.
    """
    if api_key:
        return api_key
    for name in env_vars:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    if required:
        raise MissingAPIKey(provider, env_vars)
    return None


class ConnectionPool(Protocol):
    """Bounded connections for one provider on one event loop."""

    def stream(self, method: str, url: str, *, headers: Mapping[str, str], content: bytes) -> Any:
        """An async context manager giving the ``httpx.Response`` (body not read yet)."""

    async def aclose(self) -> None: ...


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``...), unless ``NO_PROXY``
    exempts its host."""
    target = httpx.URL(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if not proxy or urllib.request.proxy_bypass(target.host):
        return None
    return proxy


class _Shard:
    __slots__ = ("active", "client")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.active = 0


class HttpxPool:
    """Bounded connections through httpx's own transport, spread over small clients."""

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        self.max_connections = max(1, max_connections)
        self.timeout = timeout
        self.verify = verify
        self._shards: list[_Shard] = []
        self._max_shards = max(1, -(-self.max_connections // SHARD_SIZE))

    @property
    def shards(self) -> int:
        return len(self._shards)

    def _new_shard(self) -> _Shard:
        size = min(SHARD_SIZE, self.max_connections)
        client = httpx.AsyncClient(
            timeout=self.timeout,
            limits=httpx.Limits(
                max_connections=size,
                max_keepalive_connections=min(SHARD_KEEPALIVE, size),
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
            verify=_ssl_for(self.verify),
            trust_env=True,
        )
        shard = _Shard(client)
        self._shards.append(shard)
        return shard

    def _pick(self) -> _Shard:
        best: _Shard | None = None
        for shard in self._shards:
            if best is None or shard.active < best.active:
                best = shard
        if best is None or (best.active >= SHARD_SIZE and len(self._shards) < self._max_shards):
            best = self._new_shard()
        return best

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> AsyncIterator[httpx.Response]:
        shard = self._pick()
        shard.active += 1
        try:
            async with shard.client.stream(
                method, url, headers=headers, content=content
            ) as response:
                yield response
        finally:
            shard.active -= 1

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        for shard in shards:
            await shard.client.aclose()


class ClientPool:
    """A user's own httpx transport, used through one ``httpx.AsyncClient``."""

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: httpx.Timeout) -> None:
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout)

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> AsyncIterator[httpx.Response]:
        async with self._client.stream(method, url, headers=headers, content=content) as response:
            yield response

    async def aclose(self) -> None:
        await self._client.aclose()


def pool_factory(
    transport: Transport,
    *,
    base_url: str = "",
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    verify: bool | ssl.SSLContext = True,
) -> Callable[[], ConnectionPool]:
    """What :class:`PoolsByLoop` calls to open a pool on a new event loop."""
    transport = check_transport(transport)
    if isinstance(transport, httpx.AsyncBaseTransport):
        given = transport
        return lambda: ClientPool(given, timeout)
    if transport == "aiohttp":
        from ._aiohttp import AiohttpPool

        proxy = env_proxy(base_url) if base_url else None
        tls = _ssl_for(verify)
        return lambda: AiohttpPool(
            proxy=proxy,
            max_connections=max(1, max_connections),
            timeout=timeout,
            tls=tls,
            keepalive=KEEPALIVE_SECONDS,
        )
    return lambda: HttpxPool(max_connections=max_connections, timeout=timeout, verify=verify)


class PoolsByLoop:
    """One connection pool per running event loop, created on first use."""

    def __init__(self, factory: Callable[[], ConnectionPool]) -> None:
        self._factory = factory
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> ConnectionPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = self._factory()
        return pool

    async def aclose(self) -> None:
        """Close this loop's pool now; pools of other (running) loops are closed there."""
        current = asyncio.get_running_loop()
        pools = list(self._pools.items())
        self._pools = weakref.WeakKeyDictionary()
        for loop, pool in pools:
            if loop is current:
                await pool.aclose()
            elif loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(pool.aclose(), loop)
            # a pool of a stopped loop cannot be closed any more; its sockets go with it


# --- errors ---------------------------------------------------------------------------


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def error_details(body: str) -> tuple[str | None, str | None]:
    """``(message, code)`` from an error body in the shapes OpenAI, Anthropic, Gemini use."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if isinstance(data, list) and data:  # Gemini sometimes wraps the error in a list
        data = data[0]
    if not isinstance(data, dict):
        return None, None
    error = data.get("error", data)
    if isinstance(error, str):
        return error, None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message") or data.get("message")
    code = error.get("type") or error.get("code") or error.get("status")
    return (str(message) if message is not None else None), (
        str(code) if code is not None else None
    )


_SERVER_CODES = frozenset(
    {"overloaded_error", "api_error", "server_error", "internal_error", "INTERNAL", "UNAVAILABLE"}
)
_RATE_CODES = frozenset({"rate_limit_error", "rate_limit_exceeded", "RESOURCE_EXHAUSTED"})
_AUTH_CODES = frozenset(
    {
        "authentication_error",
        "permission_error",
        "invalid_api_key",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    }
)


def error_for_status(
    provider: str,
    status: int,
    headers: Mapping[str, str],
    body: str,
    secret: str | None,
) -> ProviderError:
    """The typed error for a failed HTTP response (status >= 400)."""
    body = redact(body, secret)
    message, code = error_details(body)
    detail = message or (
        body.strip()[:300] if body.strip() else httpx.codes.get_reason_phrase(status)
    )
    text = f"{provider} returned HTTP {status}: {detail}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "provider": provider,
        "code": code,
        "body": body,
    }
    if status in (401, 403):
        return AuthenticationError(
            text + f". Check the API key for {provider} (and that it may use this model).",
            **kwargs,
        )
    if status == 429:
        retry_after = parse_retry_after(headers)
        hint = f" (retry after {retry_after:g} s)" if retry_after is not None else ""
        return RateLimitError(text + hint, retry_after=retry_after, **kwargs)
    if status >= 500:
        return ServerError(text, **kwargs)
    return ProviderError(text, **kwargs)


def error_in_stream(provider: str, payload: Any, secret: str | None) -> ProviderError:
    """The typed error for an error the server sent inside the stream."""
    raw = json.dumps(payload) if not isinstance(payload, str) else payload
    raw = redact(raw, secret)
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    message = code = None
    status: int | None = None
    if isinstance(error, dict):
        message = error.get("message")
        code = error.get("type") or error.get("code") or error.get("status")
        status_value = error.get("status_code") or error.get("code")
        if isinstance(status_value, int):
            status = status_value
    elif isinstance(error, str):
        message = error
    code_text = str(code) if code is not None else None
    text = f"{provider} reported an error mid-stream: {message or raw[:300]}"
    kwargs: dict[str, Any] = {"provider": provider, "code": code_text, "body": raw}
    if code_text in _RATE_CODES or status == 429:
        return RateLimitError(text, **kwargs)
    if code_text in _SERVER_CODES or (status is not None and status >= 500):
        if code_text == "overloaded_error":
            status = 529
        return ServerError(text, status_code=status, **kwargs)
    if code_text in _AUTH_CODES:
        return AuthenticationError(text, status_code=status, **kwargs)
    return ProviderError(text, status_code=status, **kwargs)


def network_error(
    provider: str, exc: BaseException, secret: str | None, *, started: bool
) -> NetworkError:
    where = "in the middle of the stream" if started else "before the answer started"
    detail = redact(str(exc) or type(exc).__name__, secret)
    return NetworkError(
        f"the connection to {provider} failed {where} ({type(exc).__name__}: {detail}). "
        "Check the network or base_url and retry."
    )


async def read_limited(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> str:
    """Up to ``limit`` bytes of a (non-streaming) body, decoded leniently."""
    parts: list[bytes] = []
    size = 0
    async for piece in response.aiter_bytes():
        parts.append(piece)
        size += len(piece)
        if size >= limit:
            break
    return b"".join(parts)[:limit].decode("utf-8", "replace")


async def check_response(provider: str, response: httpx.Response, secret: str | None) -> None:
    """Raise the typed error unless ``response`` is a successful event stream.

    Status first (an error body is JSON, HTML or text, never SSE), then the
    content type: a 200 with an HTML page (a proxy's login page, a wrong base_url)
    or a JSON error must not be fed to the SSE parser.
    """
    status = response.status_code
    if status >= 400:
        body = await read_limited(response)
        raise error_for_status(provider, status, response.headers, body, secret)
    content_type = response.headers.get("content-type", "")
    if status != 200 or (content_type and not content_type.startswith("text/event-stream")):
        body = await read_limited(response)
        message, code = error_details(body)
        if message is not None:
            raise ProviderError(
                f"{provider} answered with an error instead of a stream: {message}",
                status_code=status,
                provider=provider,
                code=code,
                body=redact(body, secret),
            )
        raise ProtocolError(
            f"{provider} answered HTTP {status} with {content_type or 'no content type'} "
            "instead of an event stream: is base_url right (it should end in /v1 for "
            "OpenAI-compatible servers)?",
            raw=redact(body[:500], secret),
        )


def body_reader(response: httpx.Response) -> Callable[[], Awaitable[bytes]]:
    """A coroutine function giving the next bytes of the body as read, ``b""`` at its end.

    A call per read rather than an async iterator: every async generator between
    the socket and the parser is an allocation and a hop per event, which shows at
    thousands of events a second. An uncompressed body on the aiohttp transport is
    read straight from aiohttp's buffer; on httpx's transport, from
    ``response.stream`` (one re-chunking layer less than ``aiter_raw()``). A body
    the server compressed goes through httpx's decoder. Transport errors are
    httpx's either way.
    """
    stream = response.stream
    encoding = response.headers.get("content-encoding")
    pieces: AsyncIterator[bytes]
    if encoding and encoding.strip().lower() != "identity":
        pieces = response.aiter_bytes()
    else:
        # loaded by the aiohttp pool that made this response, if it did
        aiohttp_glue = sys.modules.get(f"{__package__}._aiohttp")
        if aiohttp_glue is not None and isinstance(stream, aiohttp_glue.AiohttpBody):
            return stream.read
        if isinstance(stream, httpx.AsyncByteStream):
            pieces = stream.__aiter__()
        else:
            pieces = response.aiter_raw()

    async def read_next() -> bytes:
        async for piece in pieces:
            if piece:
                return piece
        return b""

    return read_next


async def drain(read: Callable[[], Awaitable[bytes]], seconds: float = DRAIN_SECONDS) -> None:
    """Read what is left of the body for a moment, so the connection can be reused.

    Called after the end marker with the reader the body was being read with.
    A server that never closes (or keeps talking) costs at most ``seconds`` and
    ``ERROR_BODY_LIMIT`` bytes; the connection is then dropped instead.
    """

    async def _read_rest() -> None:
        left = ERROR_BODY_LIMIT
        while left > 0:
            piece = await read()
            if not piece:
                return
            left -= len(piece)

    try:
        await asyncio.wait_for(_read_rest(), seconds)
    except (asyncio.TimeoutError, httpx.HTTPError, RuntimeError):
        pass


def json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local")
