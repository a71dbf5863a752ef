"""aiohttp underneath httpx: the default way providers reach a server.

Providers read an ``httpx.Response`` whatever the transport; here aiohttp's
session sends the request and its C parser reads the body. This is the same
plug-in the ``httpx-aiohttp`` package offers (and the official openai SDK uses),
written out here for two reasons found while measuring 1000 paced streams:

* the body is read with ``StreamReader.readany()`` called straight from the
  provider's loop (:meth:`AiohttpBody.read`), with no async generator in between:
  each layer of generator is an allocation and a hop per event, and at 20,000
  events a second those are what makes the event loop lag;
* aiohttp's errors are mapped onto httpx's by what happened (a dropped
  connection is a ``RemoteProtocolError``, a stalled read a ``ReadTimeout``),
  so messages say so; ``httpx-aiohttp`` maps any connection error to
  ``ConnectTimeout``.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx

#: what each aiohttp failure is called in httpx's vocabulary (first match wins)
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (asyncio.TimeoutError, httpx.PoolTimeout),  # ClientTimeout.connect: waiting for the pool
)


def as_httpx_error(exc: BaseException) -> httpx.TransportError:
    """The httpx error for an aiohttp one (raise it ``from exc`` to keep the original)."""
    for aiohttp_type, httpx_type in _ERRORS:
        if isinstance(exc, aiohttp_type):
            return httpx_type(str(exc) or type(exc).__name__)
    return httpx.ReadError(str(exc) or type(exc).__name__)


class AiohttpBody(httpx.AsyncByteStream):
    """A response body read from aiohttp's buffer."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content

    async def read(self) -> bytes:
        """The bytes that have arrived (waiting for some), ``b""`` at the end of the body."""
        try:
            return await self._content.readany()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise as_httpx_error(exc) from exc

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while piece := await self.read():
            yield piece

    async def aclose(self) -> None:
        # An unfinished body cannot be reused: aiohttp closes such a connection on
        # release and returns a finished one to the pool.
        self._response.release()


class AiohttpPool:
    """One aiohttp session (bounded connection pool) for one provider on one event loop."""

    def __init__(
        self,
        *,
        proxy: str | None,
        max_connections: int,
        timeout: httpx.Timeout,
        tls: ssl.SSLContext | bool,
        keepalive: float,
    ) -> None:
        self.max_connections = max_connections
        self._proxy = proxy
        self._tls = tls
        self._keepalive = keepalive
        # aiohttp has no write timeout; ``connect`` bounds the wait for a pooled
        # connection plus connecting, as httpx's pool + connect timeouts do together.
        pool_and_connect = (
            None
            if timeout.pool is None or timeout.connect is None
            else timeout.pool + timeout.connect
        )
        self._timeout = aiohttp.ClientTimeout(
            connect=pool_and_connect,
            sock_connect=timeout.connect,
            sock_read=timeout.read,
        )
        self._session: aiohttp.ClientSession | None = None
        self._closer: weakref.finalize[Any, Any] | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=self._keepalive, ssl=self._tls
        )
        # trust_env=False: the proxy was read from the environment once, when the
        # pool was made; aiohttp's trust_env reads it again on every request (0.5 ms).
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._closer = weakref.finalize(self, _close_forgotten, asyncio.get_running_loop(), session)
        self._closer.atexit = False
        self._session = session
        return session

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> AsyncIterator[httpx.Response]:
        session = self._session or self._open()
        try:
            response = await session.request(
                method,
                url,
                headers=headers,
                data=content,
                proxy=self._proxy,
                timeout=self._timeout,
                allow_redirects=False,
                auto_decompress=False,  # httpx decodes, as it would for its own transport
            )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise as_httpx_error(exc) from exc
        try:
            yield httpx.Response(
                response.status,
                headers=response.raw_headers,
                stream=AiohttpBody(response),
                extensions={"http_version": b"HTTP/1.1"},
            )
        finally:
            response.release()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if self._closer is not None:
            self._closer.detach()
        await session.close()
        # A connection closed on release (an unread error body, a stopped stream)
        # finishes closing its socket one loop iteration later; let it, so a loop
        # that ends right after this does not leave the socket open.
        await asyncio.sleep(0)


def _close_forgotten(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> None:
    """Close the connections of a pool dropped without ``aclose()``.

    A pipeline that is never shut down (a notebook cell re-run, a script that
    forgets) would otherwise make aiohttp report "Unclosed client session" and
    "Unclosed connector" through the event loop's exception handler, which a
    notebook shows as error output in whatever cell is running.
    """
    if session.closed:
        return
    connector = session.connector
    session.detach()  # closed for the session's own check; the connector is ours now
    if connector is None or connector.closed:
        return
    if not loop.is_closed():
        try:
            loop.call_soon_threadsafe(_close_connector_soon, connector)
            return
        except RuntimeError:  # closed in the meantime
            pass
    # The loop is gone and its sockets close as they are collected; only the
    # connector's own report is left to silence, which aiohttp offers no public
    # way to do without a running loop.
    try:
        connector._close()
    except Exception:  # pragma: no cover - aiohttp internals changed
        pass


def _close_connector_soon(connector: aiohttp.BaseConnector) -> None:
    async def close() -> None:
        await connector.close()

    asyncio.get_running_loop().create_task(close())
