"""How ``pk-notebook serve`` runs uvicorn: every resource a client holds is bounded.

uvicorn's defaults leave three holes for a server exposed to a network:

* its default HTTP parser (httptools) accepts a request head of any size (a
  64 MiB header is read whole), and its h11 parser only bounds it when told:
  :func:`server_config` picks h11 with ``h11_max_incomplete_event_size`` =
  ``WebSettings.max_header_bytes`` (more: 400, connection closed);
* nothing times out a connection that opens and sends half a request (or
  nothing): the keep-alive timer only runs *between* requests, and any byte
  received cancels it. :class:`BoundedH11Protocol` gives every request
  ``request_timeout`` seconds to arrive completely, from when the connection
  opens or its previous response ended, and closes the connection otherwise;
* a client that stops reading makes writes wait forever. The app bounds each
  write (``write_timeout``: the turn is stopped and its slot freed), but the
  socket would stay open with its unsent buffer, and uvicorn's graceful
  shutdown waits for it. Both protocols here abort a connection whose writes
  have been paused (the socket buffer full) for ``write_timeout``.

Measured with ``pk-notebook serve`` on 127.0.0.1 (before -> after this module):
a 64 MiB header was read whole, RSS +64.4 MiB and the connection left open ->
the connection is closed once 64 KiB are buffered (the client managed to send
3 MiB into the kernel's buffers), RSS +0.1 MiB; 500 half-open sockets (half
silent, half with a request line) were all open after 4 s -> none were, with
``request_timeout=2``.

The protocols subclass uvicorn's own (``Config(http=..., ws=...)`` accepts a
class) and only add timers to the standard ``asyncio.Protocol`` callbacks;
the one uvicorn attribute read is ``conn``, the h11 connection, through h11's
public ``their_state`` (plus asyncio's ``transport.get_protocol()`` to see an
upgrade to WebSocket).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from . import logs
from .settings import WebSettings

# The client has sent all of its request (or switched to WebSocket): only our answer remains.
_RECEIVED = (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL, h11.SWITCHED_PROTOCOL)


class _Timer:
    """One restartable ``call_later`` that is cancelled when the connection ends."""

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None

    def start(self, seconds: float, callback: Any) -> None:
        self.cancel()
        self._handle = asyncio.get_running_loop().call_later(seconds, callback)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _AbortStalledWrites:
    """Mixin: abort the connection when its writes have been paused for ``write_timeout``.

    ``pause_writing`` means the transport's buffer is above its high-water mark
    because the peer does not read; ``resume_writing`` means it read again.
    """

    write_timeout: float = 60.0
    _transport: asyncio.Transport | None = None
    _stall: _Timer

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._stall.start(self.write_timeout, self._abort)

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        self._stall.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stall.cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _abort(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            logs.logger.warning(
                "closed a connection whose client read nothing for %g s", self.write_timeout
            )
        if self._transport is not None:
            self._transport.abort()


class BoundedH11Protocol(_AbortStalledWrites, H11Protocol):
    """uvicorn's h11 protocol with a request deadline and a write-stall abort."""

    request_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._transport = transport
        self._stall = _Timer()
        self._deadline = _Timer()
        super().connection_made(transport)
        self._deadline.start(self.request_timeout, self._too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _RECEIVED or self._upgraded():
            self._deadline.cancel()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the next request (or the rest of this one's body) again.
        if self.conn.their_state not in _RECEIVED and not self._closing():
            self._deadline.start(self.request_timeout, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.cancel()
        super().connection_lost(exc)

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _upgraded(self) -> bool:
        # uvicorn hands the transport to its WebSocket protocol as soon as it has the
        # upgrade request's head, before h11 has seen the request end.
        return self._transport is not None and self._transport.get_protocol() is not self

    def _too_slow(self) -> None:
        # No log line: a half-open socket is what a port scan or a slow client leaves.
        if self.conn.their_state not in _RECEIVED and not self._closing() and not self._upgraded():
            assert self._transport is not None
            self._transport.close()


class BoundedWebSocketProtocol(_AbortStalledWrites, WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol with a write-stall abort."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._stall = _Timer()
        super().connection_made(transport)


def server_config(app: Any, settings: WebSettings, **options: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` with ``settings``' bounds (see the module docstring).

    ``options`` are passed to ``uvicorn.Config`` (host, port, log_level, ...) and
    win over these defaults.
    """
    http = type(
        "BoundedH11Protocol",
        (BoundedH11Protocol,),
        {"request_timeout": settings.request_timeout, "write_timeout": settings.write_timeout},
    )
    ws = type(
        "BoundedWebSocketProtocol",
        (BoundedWebSocketProtocol,),
        {"write_timeout": settings.write_timeout},
    )
    values: dict[str, Any] = {
        "http": http,
        "ws": ws,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "ws_max_size": settings.max_body_bytes + 1024,
        "server_header": False,
        "proxy_headers": False,
        **options,
    }
    config = uvicorn.Config(app, **values)
    logs.install()  # again, after uvicorn configured logging (filters survive; cheap)
    return config


def machine_hosts() -> tuple[str, ...]:
    """The names and addresses this machine is known by, for ``Host`` checks.

    Standard library only: the host name, its canonical name (usually the FQDN)
    and the addresses the resolver gives for it. The address a connection
    actually arrives on is accepted per request anyway (see
    :func:`~pk_notebook.web.security.check_host`), so interfaces the resolver does
    not know still work when addressed by IP.
    """
    hostname = socket.gethostname()
    found = {hostname}
    try:
        infos = socket.getaddrinfo(hostname, None, flags=socket.AI_CANONNAME)
    except OSError:
        infos = []
    for family, _, _, canonical, sockaddr in infos:
        if canonical:
            found.add(canonical)
        address = str(sockaddr[0]).split("%", 1)[0]
        found.add(f"[{address}]" if family == socket.AF_INET6 else address)
    return tuple(sorted(name.lower() for name in found if name))
