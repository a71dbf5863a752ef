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
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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


@asynccontextmanager
async def _post(
    client: httpx.AsyncClient, peer: Peer, url: str, headers: Mapping[str, str], content: bytes
) -> AsyncIterator[HttpxResponse]:
    try:
        request = client.build_request("POST", url, headers=headers, content=content)
        response = await client.send(request, stream=True)
    except httpx.TransportError as exc:
        raise network_error(peer, exc, started=False) from exc
    try:
        yield HttpxResponse(response, peer)
    finally:
        try:
            await response.aclose()
        except httpx.TransportError:
            pass  # closing a broken connection: it is dropped either way


class _Shard:
    __slots__ = ("active", "client")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.active = 0


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

    @asynccontextmanager
    async def stream(
        self, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> AsyncIterator[HttpxResponse]:
        shard = self._pick()
        shard.active += 1
        try:
            async with _post(shard.client, self._peer, url, headers, content) as response:
                yield response
        finally:
            shard.active -= 1

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

    def stream(
        self, url: str, *, headers: Mapping[str, str], content: bytes
    ) -> AbstractAsyncContextManager[HttpxResponse]:
        return _post(self._client, self._peer, url, headers, content)

    async def aclose(self) -> None:
        await self._client.aclose()
