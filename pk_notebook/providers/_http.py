"""How providers reach a server: one small client interface, two backends, typed errors.

Decision (issue 12, "one HTTP path"): providers speak to a tiny interface of
their own, :class:`Client` (``stream(url, headers, body)`` gives a
:class:`Response`: status, headers, and ``read()`` returning the raw body bytes
as they arrive, ``b""`` at the end; leaving the ``async with`` closes it), with
two backends:

``"aiohttp"`` (the default, :mod:`._aiohttp`)
    aiohttp's connection pool and C HTTP parser, used natively: the body is read
    with ``StreamReader.readany()`` called straight from the provider's loop, no
    ``httpx.Response`` and no async generator in between. Reading one small SSE
    event costs about a third of what it costs through httpcore + h11 + anyio;
    with 1000 paced streams in one event loop that is the difference between a
    loop that keeps up and one that lags by a third of a second (the figures are
    in ``benchmarks/RESULTS-providers.md``).

``"httpx"`` (:mod:`._httpx`)
    httpx's own transport, spread over a few small clients (httpcore's pool scans
    every connection for every waiting request, issue 1035). Also what a
    :class:`httpx.AsyncBaseTransport` given as ``transport=`` is used through,
    e.g. ``httpx.MockTransport(handler)`` in a user's tests; the provider's
    ``aclose()`` closes it.

Why not httpx on top of aiohttp (what this module did before): the provider
only needs status, headers and bytes, so an ``httpx.Response`` around aiohttp's
response bought nothing but a second translation of every error (aiohttp's into
httpx's, then httpx's into ours) and a way back to aiohttp's buffer that had to
look the glue module up in ``sys.modules``.

Measured (``python -m benchmarks.providers``; ``benchmarks/RESULTS-providers.md``):
CPU per chunk of the whole pipeline 5.8 us on aiohttp against 14.4 us on httpx's
transport and 14.5-14.9 us for httpx-sse + ``json.loads`` alone (quiet machine,
2026-11-24; the per-chunk path is the same since);
1000 paced streams lag the loop p99 55-80 ms against 314-316 ms on httpx's
transport. Dropping the ``httpx.Response`` wrapper left the per-chunk cost as it
was (6.91 vs 6.95 us in an A/B on a loaded machine) and made a call's CPU 11%
lower (488 -> 434 us).

Each backend translates its own library's exceptions exactly once, where it
calls the library, into the runtime's typed errors (:func:`network_error`);
nothing above a backend sees an aiohttp or httpx exception. HTTP statuses
become :class:`ProviderError` subclasses in :func:`check_response`, the same
for both. Compressed bodies are inflated by :mod:`._decode` under
:class:`BodyLimits`, also the same for both (the backends hand over raw bytes).

Proxies come from the environment (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``)
on both built-in backends; a transport given as an object is used as it is.

Lifetime: one client per event loop (a connection belongs to the loop that
opened it, and the sync facade runs calls on its own background loop). Each
client is tied to its loop by a suspended async generator (:func:`_lifetime`)
whose ``finally`` closes it, so asyncio's own machinery closes a client nobody
closed: ``asyncio.run()`` (``loop.shutdown_asyncgens()``) when the loop ends,
and the loop's async-generator finalizer when the provider is garbage
collected. Clients on a loop still alive at interpreter exit (the sync facade's)
are closed by an ``atexit`` hook. A script that never calls
``pipe.shutdown()`` therefore exits without aiohttp's "Unclosed client session"
/ "Unclosed connector" reports, and without reaching into aiohttp's privates.
The backends' request context managers are classes, not ``@asynccontextmanager``
generators, for the same reason: ``shutdown_asyncgens()`` closes every suspended
generator at once and would close those while the provider's stream closes them
too. (One case is left: on the httpx backend, a stream still unfinished when
``asyncio.run()`` ends can make asyncio report "aclose(): asynchronous generator
is already running", because closing an unfinished httpx response has to wait.)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import email.utils
import json
import logging
import os
import ssl
import time
import urllib.request
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
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
    StreamError,
    redact,
)
from ._decode import (
    ACCEPT_ENCODING,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_RATIO,
    BodyLimits,
    Reader,
    decoded,
)

# re-exported: what base.py and the tests use from _decode
__all__ = ["ACCEPT_ENCODING", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_RATIO", "BodyLimits", "decoded"]

logger = logging.getLogger("pk_notebook")

#: what the ``transport`` option of a provider accepts
Transport = str | httpx.AsyncBaseTransport
TRANSPORTS = ("aiohttp", "httpx")
DEFAULT_TRANSPORT = "aiohttp"
#: names the transport of providers built without ``transport=`` (a way to switch
#: every provider of a notebook or server at once, e.g. behind an unusual proxy)
TRANSPORT_ENV = "PK_NOTEBOOK_HTTP_TRANSPORT"

#: total connections a provider may open (per event loop)
DEFAULT_MAX_CONNECTIONS = 1024
#: idle connections kept open for reuse
KEEPALIVE_SECONDS = 30.0
#: bytes of an error body read to build the message
ERROR_BODY_LIMIT = 64 * 1024
#: after the end marker, how long the rest of the body may take to arrive (so the
#: connection can be reused) before the connection is dropped instead
DRAIN_SECONDS = 0.05
#: at interpreter exit, how long closing the clients of a loop in another thread may take
EXIT_WAIT_SECONDS = 2.0

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=60.0)

_ssl_context: ssl.SSLContext | None = None


def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every provider (building one reads the CA bundle)."""
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


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


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``...), unless ``NO_PROXY``
    exempts its host."""
    target = httpx.URL(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if not proxy or urllib.request.proxy_bypass(target.host):
        return None
    return proxy


# --- the client interface --------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """Whom a client's connections serve: its errors name the provider and never the key."""

    provider: str
    secret: str | None = field(default=None, repr=False)


class Response(Protocol):
    """A response whose body has not been read yet."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive."""
        ...

    async def read(self) -> bytes:
        """The raw body bytes that have arrived (waiting for some); ``b""`` at its end.

        A call per read rather than an async iterator: every async generator
        between the socket and the parser is an allocation and a hop per event,
        which shows at thousands of events a second. Failures are
        :class:`NetworkError`.
        """
        ...


class Client(Protocol):
    """Bounded connections for one provider on one event loop."""

    def stream(
        self, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> AbstractAsyncContextManager[Response]:
        """POST ``content``; the response once its head has arrived. Leaving the context
        closes it: an unfinished body's connection is dropped, a finished one reused."""
        ...

    async def aclose(self) -> None: ...


def client_factory(
    transport: Transport,
    *,
    peer: Peer,
    base_url: str = "",
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    verify: bool | ssl.SSLContext = True,
) -> Callable[[], Client]:
    """What :class:`ClientsByLoop` calls to open a client on a new event loop.

    The environment's proxy is read here, once per provider: aiohttp's own
    ``trust_env`` reads it on every request (about 0.5 ms each).
    """
    transport = check_transport(transport)
    max_connections = max(1, max_connections)
    tls: ssl.SSLContext | bool = shared_ssl_context() if verify is True else verify
    if isinstance(transport, httpx.AsyncBaseTransport):
        from ._httpx import TransportClient

        given = transport
        return lambda: TransportClient(given, peer=peer, timeout=timeout)
    if transport == "aiohttp":
        from ._aiohttp import AiohttpClient

        proxy = env_proxy(base_url) if base_url else None
        return lambda: AiohttpClient(
            peer=peer,
            proxy=proxy,
            max_connections=max_connections,
            timeout=timeout,
            tls=tls,
            keepalive=KEEPALIVE_SECONDS,
        )
    from ._httpx import ShardedClient

    return lambda: ShardedClient(
        peer=peer,
        max_connections=max_connections,
        timeout=timeout,
        tls=tls,
        keepalive=KEEPALIVE_SECONDS,
    )


async def _lifetime(client: Client) -> AsyncGenerator[None, None]:
    """Suspended while ``client`` is in use; closing this generator closes the client.

    The loop that first iterates it keeps track of it (PEP 525's hooks), which is
    what lets asyncio close a client its owner forgot: ``shutdown_asyncgens()``
    at the end of ``asyncio.run()``, or the loop's finalizer hook when it is
    garbage collected while the loop still runs.
    """
    try:
        yield
    finally:
        await client.aclose()


class ClientsByLoop:
    """One client per running event loop, created on first use, each closed with its loop."""

    def __init__(self, factory: Callable[[], Client]) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[Client, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()
        _open_sets.add(self)

    async def get(self) -> Client:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = self._factory()
            guard = _lifetime(client)
            entry = self._clients[loop] = (client, guard)
            await guard.__anext__()  # runs to its yield at once; now the loop knows it
        return entry[0]

    async def aclose(self) -> None:
        """Close this loop's client now; clients of other (running) loops are closed there."""
        current = asyncio.get_running_loop()
        entries = list(self._clients.items())
        self._clients = weakref.WeakKeyDictionary()
        for loop, entry in entries:
            if loop is current:
                await _close_guard(entry[1])
            elif loop.is_closed():
                pass  # its sockets went with it
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(_close_guard(entry[1]), loop)
            else:  # stopped, not closed: used again later, or closed at exit
                self._clients[loop] = entry

    def close_at_exit(self) -> None:
        """Close the clients of loops that outlive the program's code (see :func:`_at_exit`)."""
        entries = list(self._clients.items())
        self._clients = weakref.WeakKeyDictionary()
        for loop, (_, guard) in entries:
            if loop.is_closed():
                continue
            with contextlib.suppress(Exception):
                if loop.is_running():  # another thread's, such as the sync facade's
                    asyncio.run_coroutine_threadsafe(_close_guard(guard), loop).result(
                        EXIT_WAIT_SECONDS
                    )
                else:
                    loop.run_until_complete(_close_guard(guard))


async def _close_guard(guard: AsyncGenerator[None, None]) -> None:
    await guard.aclose()


_open_sets: weakref.WeakSet[ClientsByLoop] = weakref.WeakSet()


@atexit.register
def _at_exit() -> None:
    """Close clients whose loop is still alive when the interpreter exits.

    ``asyncio.run()`` has closed its own by then; what is left are loops in other
    threads (the sync facade's daemon thread, still running during ``atexit``) and
    loops that were stopped but never closed. Without this, aiohttp reports their
    open sessions on stderr while the interpreter tears down.
    """
    for clients in list(_open_sets):
        clients.close_at_exit()


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


def network_error(peer: Peer, exc: BaseException, *, started: bool) -> NetworkError:
    """The typed error for a failed connection, named by the library's own exception.

    Called by a backend where it catches its library's exception (raise it ``from
    exc``): the one place a foreign error becomes ours. ``started``: the response
    head had arrived.
    """
    where = "in the middle of the stream" if started else "before the answer started"
    detail = redact(str(exc) or type(exc).__name__, peer.secret)
    return NetworkError(
        f"the connection to {peer.provider} failed {where} ({type(exc).__name__}: {detail}). "
        "Check the network or base_url and retry."
    )


async def read_limited(read: Reader, limit: int = ERROR_BODY_LIMIT) -> str:
    """Up to ``limit`` bytes of a (non-streaming) body, decoded leniently.

    Best effort: a body cut off or undecodable gives what was read, so an error
    status is still reported as itself.
    """
    parts: list[bytes] = []
    size = 0
    with contextlib.suppress(StreamError):
        while size < limit:
            piece = await read()
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
    return b"".join(parts)[:limit].decode("utf-8", "replace")


async def check_response(
    provider: str, response: Response, read: Reader, secret: str | None
) -> None:
    """Raise the typed error unless ``response`` is a successful event stream.

    Status first (an error body is JSON, HTML or text, never SSE), then the
    content type: a 200 with an HTML page (a proxy's login page, a wrong base_url)
    or a JSON error must not be fed to the SSE parser. ``read`` is the body's
    (decompressing) reader.
    """
    status = response.status
    if status >= 400:
        body = await read_limited(read)
        raise error_for_status(provider, status, response.headers, body, secret)
    content_type = response.headers.get("content-type", "")
    if status != 200 or (content_type and not content_type.startswith("text/event-stream")):
        body = await read_limited(read)
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


def body_reader(provider: str, response: Response, limits: BodyLimits) -> Reader:
    """The reader of ``response``'s body, decompressed within ``limits`` if it was compressed.

    An uncompressed body (every real provider's event stream) is read with the
    backend's own ``read``, nothing in between.
    """
    return decoded(response.read, response.headers.get("content-encoding"), limits, provider)


async def drain(read: Reader, seconds: float = DRAIN_SECONDS) -> None:
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
    except (asyncio.TimeoutError, StreamError):
        pass


def json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def is_local(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".local")
