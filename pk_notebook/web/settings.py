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
#: server decides which model runs, and so what it costs) and not ``system`` (it
#: would replace the operator's system prompt); both can be allowed explicitly.
CLIENT_OPTIONS: frozenset[str] = frozenset({"max_tokens", "temperature", "top_p", "stop"})
_ALLOWABLE_OPTIONS = CLIENT_OPTIONS | {"model", "system"}


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

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 8:
            raise ConfigurationError("the web token must be at least 8 characters long")
        for name in (
            "max_concurrent",
            "max_websockets",
            "max_body_bytes",
            "max_prompt_chars",
            "max_messages",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if self.heartbeat is not None and not self.heartbeat > 0:
            raise ConfigurationError("heartbeat must be a positive number of seconds or None")
        if isinstance(self.allowed_origins, str) or isinstance(self.allowed_hosts, str):
            raise ConfigurationError("allowed_origins and allowed_hosts are tuples of strings")
        unknown = set(self.client_options) - _ALLOWABLE_OPTIONS
        if unknown:
            raise ConfigurationError(
                f"client_options may only name ProviderConfig fields: {unknown}"
            )
