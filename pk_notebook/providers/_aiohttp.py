"""The default backend: aiohttp's connection pool and C HTTP parser, used natively.

Measured on 1000 paced streams in one event loop (``benchmarks/providers.py``),
what makes this path cheap:

* the body is read with ``StreamReader.readany()`` called straight from the
  provider's loop (:meth:`AiohttpResponse.read`): each async generator between
  the socket and the parser would be an allocation and a hop per event, and at
  20,000 events a second those are what makes the event loop lag;
* no ``httpx.Response`` is built around aiohttp's, and aiohttp's client layer is
  asked for nothing it has to compute per request (no redirects, no
  ``trust_env``: the proxy was read once, no automatic decompression: that is
  :mod:`._decode`'s, under its limits).

aiohttp's exceptions become the runtime's :class:`NetworkError` here and nowhere
else (:func:`._http.network_error`, message named after aiohttp's exception: a
dropped connection says ``ServerDisconnectedError``, a stalled read
``SocketTimeoutError``).
"""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import Mapping

import aiohttp
import httpx

from ._decode import ACCEPT_ENCODING
from ._http import Peer, network_error

#: what aiohttp raises when a connection or a request fails (``connect`` timeouts
#: included: aiohttp's timeout errors derive from ``ClientError`` and ``TimeoutError``)
_FAILURES = (aiohttp.ClientError, asyncio.TimeoutError)
#: request bodies larger than this are sent from a file object (see _Exchange)
_LARGE = 1024 * 1024


class AiohttpResponse:
    """The status, headers and raw body of one aiohttp response."""

    __slots__ = ("_content", "_peer", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, peer: Peer) -> None:
        self.status = response.status
        self.headers = response.headers
        self._content = response.content
        self._peer = peer

    async def read(self) -> bytes:
        try:
            return await self._content.readany()
        except _FAILURES as exc:
            raise network_error(self._peer, exc, started=True) from exc


class _Exchange:
    """One request: entering sends it and gives the response, leaving releases it.

    A class rather than ``@asynccontextmanager``: ``asyncio.run()`` closes every
    suspended async generator at its end, all at once, so a generator-based
    context manager can be closed by asyncio while the provider's stream that
    uses it is closing it too ("athrow(): asynchronous generator is already
    running" on stderr).
    """

    __slots__ = ("_client", "_content", "_headers", "_response", "_url")

    def __init__(
        self, client: AiohttpClient, url: str, headers: Mapping[str, str], content: bytes
    ) -> None:
        self._client = client
        self._url = url
        self._headers = headers
        self._content = content
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> AiohttpResponse:
        client = self._client
        session = client._session or client._open()
        try:
            response = await session.request(
                "POST",
                self._url,
                headers=self._headers,
                # A large body (attachments) as a file object: aiohttp warns that raw
                # bytes over 1 MiB "might lock the event loop", and streams a file.
                data=io.BytesIO(self._content) if len(self._content) > _LARGE else self._content,
                proxy=client._proxy,
                timeout=client._timeout,
                allow_redirects=False,
            )
        except _FAILURES as exc:
            raise network_error(client._peer, exc, started=False) from exc
        self._response = response
        return AiohttpResponse(response, client._peer)

    async def __aexit__(self, *exc_info: object) -> None:
        # An unfinished body's connection is closed, a finished one goes back to the pool.
        if self._response is not None:
            self._response.release()


class AiohttpClient:
    """One aiohttp session (a bounded connection pool) for one provider on one event loop."""

    def __init__(
        self,
        *,
        peer: Peer,
        proxy: str | None,
        max_connections: int,
        timeout: httpx.Timeout,
        tls: ssl.SSLContext | bool,
        keepalive: float,
    ) -> None:
        self.max_connections = max_connections
        self._peer = peer
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

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=self._keepalive, ssl=self._tls
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # the proxy was read from the environment once (see client_factory)
            auto_decompress=False,
            headers={"Accept-Encoding": ACCEPT_ENCODING},
        )
        return self._session

    def stream(self, url: str, *, headers: Mapping[str, str], content: bytes) -> _Exchange:
        return _Exchange(self, url, headers, content)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        await session.close()
        # A connection closed on release (an unread error body, a stopped stream)
        # finishes closing its socket one loop iteration later; let it, so a loop
        # that ends right after this does not leave the socket open.
        await asyncio.sleep(0)
