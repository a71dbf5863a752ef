"""What a web server built by :func:`~pk_notebook.web.create_app` allows.

Every default is the safe one: loopback hosts and origins only, limits on
request and prompt sizes, a cap on concurrent streams. Loosening any of them is
an explicit choice made here (or with a ``pk-notebook serve`` option).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.errors import ConfigurationError

#: the host names a loopback server answers to (DNS-rebinding protection)
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1", "[::1]")

#: sampling options a client may set per request by default. Not ``model`` (the
#: server decides which model runs, and so what it costs), which can be allowed
#: explicitly. A client's system prompt is governed by ``client_system`` instead,
#: because it arrives two ways (``/stream``'s ``options.system``, ``/v1``'s
#: ``system``/``developer`` messages) and one rule must hold for both.
CLIENT_OPTIONS: frozenset[str] = frozenset({"max_tokens", "temperature", "top_p", "stop"})
_ALLOWABLE_OPTIONS = CLIENT_OPTIONS | {"model"}
_CLIENT_SYSTEM = ("refuse", "allow")


@dataclass(frozen=True)
class WebSettings:
    """Limits and access rules of the web endpoints.

    token:
        if set, every stream endpoint needs ``Authorization: Bearer <token>`` (browsers,
        which cannot set that header on EventSource/WebSocket, may pass
        ``?access_token=`` on ``GET /stream`` and ``/ws``). Compared in constant time.
    allowed_origins:
        browser origins (``"https://app.example.com"``, ``"http://localhost:*"`` for any
        port, or ``"*"`` for all) that may open ``/ws`` and the stream endpoints, in
        addition to the server's own origin. ``None``: loopback origins only.
    allowed_hosts:
        values the ``Host`` header may take (port ignored); ``("*",)`` accepts any.
        The loopback default blocks DNS-rebinding attacks on a local server.
    max_concurrent:
        streams running at once across all endpoints; one more gets HTTP 503
        (WebSocket: an error message) with ``Retry-After``.
    max_body_bytes / max_prompt_chars:
        a larger request body is refused with 413, a longer prompt with 422.
    heartbeat:
        seconds between SSE comment lines sent while no chunk arrives, so proxies
        do not close an idle-looking stream. ``None`` disables them.
    client_options:
        the ``ProviderConfig`` fields a request may set (see ``CLIENT_OPTIONS``).
    client_system:
        ``"refuse"`` (the default): a client may not send a system prompt, on any
        endpoint (``/stream`` and ``/ws`` ``options.system``, ``/v1`` ``system`` and
        ``developer`` messages get 422), so no client can replace the operator's.
        ``"allow"``: they are used (``/v1`` sends them as history messages).
    write_timeout:
        seconds one write to a client may wait for it to read. A client that stops
        reading is treated as gone when it expires: its turn is stopped (the partial
        answer saved as stopped) and its stream slot freed (``/stream`` and
        ``/api/chat``: the client is detached, and its answer stops after
        ``resume_grace``). Generous because only a full socket buffer (megabytes
        unread) makes a write wait at all.
    read_timeout:
        seconds to wait for each piece of a request body (then 408), so a client
        that sends half a body does not hold a request open.
    request_timeout / max_header_bytes:
        used by ``pk-notebook serve`` (:func:`pk_notebook.web.server.server_config`):
        the seconds a connection has to deliver a complete request, its headers and
        body, counted from when it opens or its previous response ended (then it is
        closed: half-open sockets do not pile up), and the largest header block
        accepted (more: 400 and the connection closed). Under another server, set its
        own equivalents.
    resume_grace:
        seconds a ``/stream`` answer keeps generating while no client is attached (the
        connection dropped): a client that reconnects within it, with ``Last-Event-ID``,
        reads on. Then the answer is stopped and saved as interrupted. 0: a client
        leaving stops its answer at once.
    replay_max_events / replay_ttl:
        the replay buffer of an answer keeps its last ``replay_max_events`` events,
        for ``replay_ttl`` seconds after the answer ended (a resume asking for more
        gets an ``error`` event saying so, never a silent gap).
    stream_lease:
        with sessions in Redis (several processes), the seconds a slot of the global
        stream cap outlives its process: each running stream's lease is renewed every
        ``stream_lease / 3`` seconds, so the slots of a process that crashed (killed,
        out of memory) are free again at most ``stream_lease`` seconds later. Shorter
        frees them sooner but renews more often (one Redis call per process per renewal).
    """

    token: str | None = None
    allowed_origins: tuple[str, ...] | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_concurrent: int = 64
    max_websockets: int = 256
    max_body_bytes: int = 256 * 1024
    max_prompt_chars: int = 32_000
    max_messages: int = 200
    heartbeat: float | None = 15.0
    client_options: frozenset[str] = field(default=CLIENT_OPTIONS)
    client_system: str = "refuse"
    write_timeout: float = 60.0
    read_timeout: float = 30.0
    request_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    resume_grace: float = 5.0
    replay_max_events: int = 10_000
    replay_ttl: float = 120.0
    stream_lease: float = 15.0

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 8:
            raise ConfigurationError("the web token must be at least 8 characters long")
        for name in (
            "max_concurrent",
            "max_websockets",
            "max_body_bytes",
            "max_prompt_chars",
            "max_messages",
            "max_header_bytes",
            "replay_max_events",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if self.heartbeat is not None and not self.heartbeat > 0:
            raise ConfigurationError("heartbeat must be a positive number of seconds or None")
        for name in ("write_timeout", "read_timeout", "request_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        for name in ("resume_grace", "replay_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{name} must be seconds (0 or more), got {value!r}")
        if not self.replay_ttl > 0:
            raise ConfigurationError("replay_ttl must be a positive number of seconds")
        lease = self.stream_lease
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease >= 0.3:
            raise ConfigurationError(
                f"stream_lease must be at least 0.3 seconds (renewed every third), got {lease!r}"
            )
        if self.client_system not in _CLIENT_SYSTEM:
            raise ConfigurationError(
                f"client_system must be 'refuse' or 'allow', got {self.client_system!r}"
            )
        if isinstance(self.allowed_origins, str) or isinstance(self.allowed_hosts, str):
            raise ConfigurationError("allowed_origins and allowed_hosts are tuples of strings")
        unknown = set(self.client_options) - _ALLOWABLE_OPTIONS
        if "system" in unknown:
            raise ConfigurationError(
                "a client's system prompt is allowed with client_system='allow', "
                "not with client_options"
            )
        if unknown:
            raise ConfigurationError(
                f"client_options may only name ProviderConfig fields: {unknown}"
            )
