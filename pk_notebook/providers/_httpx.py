"""The httpx backend: httpx's own transport, or any ``httpx.AsyncBaseTransport`` a user gives.

Chosen with ``transport="httpx"`` (behind a proxy or TLS setup only httpx gets
right) or by passing a transport object, such as ``httpx.MockTransport(handler)``
in a user's tests. The body is read from ``Response.stream``, the transport's raw
bytes (one re-chunking layer less than ``aiter_raw()``, and no decoding: that is
:mod:`._decode`'s, under its limits, as on the aiohttp backend).

httpx's exceptions become the runtime's :class:`NetworkError` here and nowhere
else (:func:`._http.network_error`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Mapping

import httpx

from ._decode import ACCEPT_ENCODING
from ._http import Peer, network_error

#: connections per httpx client; small enough that httpcore's pool scans stay cheap
SHARD_SIZE = 64
#: idle connections kept per shard
SHARD_KEEPALIVE = 16


class HttpxResponse:
    """The status, headers and raw body of one httpx response."""

    __slots__ = ("_peer", "_pieces", "headers", "status")

    def __init__(self, response: httpx.Response, peer: Peer) -> None:
        self.status = response.status_code
        self.headers = response.headers
        stream = response.stream
        self._pieces: AsyncIterator[bytes] = (
            stream.__aiter__()
            if isinstance(stream, httpx.AsyncByteStream)
            else response.aiter_raw()
        )
        self._peer = peer

    async def read(self) -> bytes:
        try:
            async for piece in self._pieces:
                if piece:
                    return piece
        except httpx.TransportError as exc:
            raise network_error(self._peer, exc, started=True) from exc
        return b""


class _Exchange:
    """One request: entering sends it and gives the response, leaving closes it.

    A class rather than ``@asynccontextmanager`` (and ``client.send(stream=True)``
    rather than httpx's ``client.stream()``, which is one): ``asyncio.run()``
    closes every suspended async generator at its end, all at once, so a
    generator-based context manager can be closed by asyncio while the
    provider's stream that uses it is closing it too ("athrow(): asynchronous
    generator is already running" on stderr).
    """

    __slots__ = ("_client", "_content", "_done", "_headers", "_peer", "_response", "_url")

    def __init__(
        self,
        client: httpx.AsyncClient,
        peer: Peer,
        url: str,
        headers: Mapping[str, str],
        content: bytes,
        done: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._peer = peer
        self._url = url
        self._headers = headers
        self._content = content
        self._done = done
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> HttpxResponse:
        try:
            request = self._client.build_request(
                "POST", self._url, headers=self._headers, content=self._content
            )
            self._response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            self._finish()
            raise network_error(self._peer, exc, started=False) from exc
        except BaseException:
            self._finish()
            raise
        return HttpxResponse(self._response, self._peer)

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self._response is not None:
                await self._response.aclose()
        except httpx.TransportError:
            pass  # closing a broken connection: it is dropped either way
        finally:
            self._finish()

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()


class _Shard:
    __slots__ = ("active", "client")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.active = 0

    def release(self) -> None:
        self.active -= 1


class ShardedClient:
    """Bounded connections through httpx's own transport, spread over small clients.

    httpcore's pool looks for a connection by scanning every connection for every
    waiting request, so one pool of 1000 connections spends its time scanning
    (httpcore issue 1035); a new shard is opened only when all are full.
    """

    def __init__(
        self,
        *,
        peer: Peer,
        max_connections: int,
        timeout: httpx.Timeout,
        tls: ssl.SSLContext | bool,
        keepalive: float,
    ) -> None:
        self.max_connections = max(1, max_connections)
        self._peer = peer
        self._timeout = timeout
        self._tls = tls
        self._keepalive = keepalive
        self._shards: list[_Shard] = []
        self._max_shards = max(1, -(-self.max_connections // SHARD_SIZE))

    @property
    def shards(self) -> int:
        return len(self._shards)

    def _new_shard(self) -> _Shard:
        size = min(SHARD_SIZE, self.max_connections)
        client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=size,
                max_keepalive_connections=min(SHARD_KEEPALIVE, size),
                keepalive_expiry=self._keepalive,
            ),
            verify=self._tls,
            trust_env=True,  # proxies from HTTPS_PROXY / NO_PROXY, as on the aiohttp backend
            headers={"accept-encoding": ACCEPT_ENCODING},
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

    def stream(self, url: str, *, headers: Mapping[str, str], content: bytes) -> _Exchange:
        shard = self._pick()
        shard.active += 1
        return _Exchange(shard.client, self._peer, url, headers, content, shard.release)

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        for shard in shards:
            await shard.client.aclose()


class TransportClient:
    """A user's own httpx transport, used through one ``httpx.AsyncClient``."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, *, peer: Peer, timeout: httpx.Timeout
    ) -> None:
        self._peer = peer
        self._client = httpx.AsyncClient(
            transport=transport, timeout=timeout, headers={"accept-encoding": ACCEPT_ENCODING}
        )

    def stream(self, url: str, *, headers: Mapping[str, str], content: bytes) -> _Exchange:
        return _Exchange(self._client, self._peer, url, headers, content)

    async def aclose(self) -> None:
        await self._client.aclose()
