"""Access checks and error payloads shared by every endpoint.

The checks run before any work is done for a request: the ``Host`` header
(against DNS rebinding), the ``Origin`` header (against cross-site use of a
local server from a browser), the bearer token, the body size. Errors become
a JSON body ``{"error": {"type": ..., "message": ...}}`` with a real HTTP
status, and never contain a stack trace or a key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..runtime.errors import (
    AuthenticationError,
    ConfigurationError,
    MissingAPIKey,
    NetworkError,
    PkNotebookError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    SessionBusy,
    SessionError,
    StoreUnavailable,
    StreamTimeout,
    TruncatedStream,
    UsageError,
    redact,
    register_secret,
)
from .settings import WebSettings

logger = logging.getLogger("pk_notebook")

_LOOPBACK_ORIGINS = (
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
)


class WebError(Exception):
    """A request refused with ``status`` and a JSON error body."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "message": self.message, **self.extra}


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) in an ASGI scope."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def query_params(scope: Mapping[str, Any]) -> dict[str, list[str]]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return parse_qs(raw, keep_blank_values=True)


# --- hosts and origins -------------------------------------------------------------


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _own_address(scope: Mapping[str, Any]) -> str | None:
    """The IP address the connection arrived on, as a ``Host`` header would spell it."""
    server = scope.get("server")
    if not server or not isinstance(server[0], str):
        return None
    address = server[0].lower()
    if address.startswith("::ffff:") and "." in address:
        return address[7:]  # an IPv4 client on a dual-stack socket
    return f"[{address}]" if ":" in address else address


def check_host(scope: Mapping[str, Any], settings: WebSettings) -> None:
    """Refuse a ``Host`` the server does not answer to (a DNS-rebinding attack).

    The address the connection arrived on is always accepted: a browser sends an
    IP address as ``Host`` only when the page's own URL names that address, which
    no DNS answer can fake. So a server bound to all interfaces answers to each of
    its addresses without enumerating them; names must still be listed.
    """
    allowed = settings.allowed_hosts
    if "*" in allowed:
        return
    host = header(scope, b"host")
    name = _host_name(host) if host is not None else None
    if name is None or (name not in {h.lower() for h in allowed} and name != _own_address(scope)):
        raise WebError(
            400,
            "InvalidHost",
            "this server does not answer to that Host header; start it with "
            "--allow-host NAME (or WebSettings(allowed_hosts=...)) to allow it",
        )


def origin_allowed(origin: str | None, host: str | None, patterns: Iterable[str] | None) -> bool:
    """Whether a browser page at ``origin`` may use the server reached as ``host``.

    No ``Origin`` header means a non-browser client (which could send any header
    it likes anyway); the server's own origin is always allowed.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    if origin == "null":
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    if host is not None and parts.netloc == host.strip().lower():
        return True
    for pattern in _LOOPBACK_ORIGINS if patterns is None else patterns:
        pattern = pattern.strip().lower().rstrip("/")
        if pattern == "*" or pattern == origin:
            return True
        if pattern.endswith(":*"):
            base = pattern[:-2]
            if origin == base or (
                origin.startswith(base + ":") and origin[len(base) + 1 :].isdigit()
            ):
                return True
    return False


def check_origin(scope: Mapping[str, Any], settings: WebSettings) -> None:
    origin = header(scope, b"origin")
    if not origin_allowed(origin, header(scope, b"host"), settings.allowed_origins):
        raise WebError(
            403,
            "OriginNotAllowed",
            f"requests from the page origin {origin!r} are not allowed; add it with "
            "--allow-origin (or WebSettings(allowed_origins=...))",
        )
    if origin is None and header(scope, b"sec-fetch-site") == "cross-site":
        # A browser request from another site that carries no Origin (an <img>, a link).
        raise WebError(403, "OriginNotAllowed", "cross-site requests are not allowed")


# --- authentication ----------------------------------------------------------------


def check_token(scope: Mapping[str, Any], settings: WebSettings, *, query_ok: bool) -> None:
    """Require the bearer token, if the server has one. Compared in constant time."""
    expected = settings.token
    if expected is None:
        return
    given: str | None = None
    auth = header(scope, b"authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
    if given is None and query_ok:
        values = query_params(scope).get("access_token")
        given = values[0] if values else None
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise WebError(
            401,
            "Unauthorized",
            "a valid token is required: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="pk-notebook"'},
        )


# --- capacity --------------------------------------------------------------------


class Slots:
    """A count of running streams with a hard cap (no queue: a full server says so).

    With ``shared`` (a :class:`~pk_notebook.web.replay.RedisCap`, set by
    :func:`~pk_notebook.web.create_app` when the sessions are in Redis), the cap
    holds across every process of the server: :meth:`enter` takes a slot here and
    one in Redis, :meth:`leave` gives both back.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.shared: Any = None

    def _busy(self) -> WebError:
        return WebError(
            503,
            "ServerBusy",
            f"the server is running its maximum of {self.limit} streams; retry shortly",
            headers={"Retry-After": "1"},
        )

    def acquire(self) -> None:
        if self.used >= self.limit:
            raise self._busy()
        self.used += 1

    def release(self) -> None:
        self.used -= 1

    async def enter(self) -> Any:
        """Take a slot (503 ``ServerBusy`` if none is free); returns what :meth:`leave` takes."""
        self.acquire()
        if self.shared is None:
            return None
        try:
            holder = await self.shared.acquire(self.limit)
        except Exception as exc:
            self.release()
            logger.warning("the shared stream cap in Redis is unavailable: %s", exc)
            raise WebError(
                503,
                "StoreUnavailable",
                STORE_MESSAGES[StoreUnavailable],
                headers={"Retry-After": "5"},
            ) from None
        if holder is None:
            self.release()
            raise self._busy()
        return holder

    async def leave(self, holder: Any) -> None:
        self.release()
        if holder is not None and self.shared is not None:
            await self.shared.release(holder)


# --- bodies ------------------------------------------------------------------------


async def read_body(
    scope: Mapping[str, Any], receive: Any, limit: int, timeout: float | None = None
) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``.

    Each piece must arrive within ``timeout`` seconds (else 408): a client that
    sends half a body would otherwise hold the request, and its connection, open.
    """
    too_big = WebError(
        413,
        "RequestTooLarge",
        f"the request body is larger than the server's limit of {limit} bytes",
    )
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), timeout)
        except asyncio.TimeoutError:
            raise WebError(
                408,
                "RequestTimeout",
                f"the request body did not arrive within {timeout:g} s",
                headers={"Connection": "close"},
            ) from None
        if message["type"] == "http.disconnect":
            raise WebError(499, "ClientDisconnected", "the client went away")
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_big
        parts.append(body)
        if not message.get("more_body", False):
            return b"".join(parts)


def loads_json(text: str | bytes) -> Any:
    """``json.loads`` with every failure a 400 ``InvalidJSON``.

    Deep nesting (``[[[[...`` in a 2 KB body) makes the parser raise
    ``RecursionError``, which is not a ``ValueError``: uncaught it was a 500 and a
    traceback in the log for any client that sent it.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise WebError(400, "InvalidJSON", "the JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebError(400, "InvalidJSON", f"the request body is not valid JSON: {exc}") from None


def parse_json_body(scope: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    content_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise WebError(
            415,
            "UnsupportedMediaType",
            "send the request as JSON with 'Content-Type: application/json'",
        )
    data = loads_json(body)
    if not isinstance(data, dict):
        raise WebError(422, "InvalidRequest", "the JSON body must be an object")
    return data


def check_prompt(prompt: Any, settings: WebSettings, field: str = "prompt") -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise WebError(422, "InvalidRequest", f"'{field}' must be a non-empty string")
    if len(prompt) > settings.max_prompt_chars:
        raise WebError(
            422,
            "PromptTooLong",
            f"the prompt has {len(prompt)} characters; this server accepts at most "
            f"{settings.max_prompt_chars}",
        )
    return prompt


# --- errors of the pipeline ----------------------------------------------------------


def status_for(exc: BaseException) -> int:
    """The HTTP status for an error raised before the first chunk.

    The upstream provider's failures are *gateway* failures here: a rejected
    provider key is 502 (not 401, which means "your token for this server is
    wrong"), a provider timeout is 504. Only rate limiting passes through as 429,
    because the client can act on it by waiting ``Retry-After`` seconds.
    """
    if isinstance(exc, WebError):
        return exc.status
    if isinstance(exc, RateLimitError):
        return 429
    if isinstance(exc, StreamTimeout):
        return 504
    if isinstance(
        exc, (AuthenticationError, ProviderError, NetworkError, ProtocolError, TruncatedStream)
    ):
        return 502
    if isinstance(exc, SessionBusy):
        return 409
    if isinstance(exc, (SessionError, UsageError, MissingAPIKey)):
        return 503
    if isinstance(exc, ConfigurationError):
        return 422
    return 500


def register_pipeline_secrets(pipe: Any, settings: WebSettings | None = None) -> None:
    """Register every provider's key and the server's token for redaction, process-wide.

    Providers redact what they raise, by pattern and by their exact key; once these
    are registered too (``errors.register_secret``), every ``redact()`` (the web
    layer's one output boundary, :func:`error_dict`, and its log filter) removes
    them, for every provider of the pipeline, so that a key of a shape no pattern knows (an Azure
    hex key, a vLLM ``--api-key``) cannot reach a client through an error built by
    code that was never handed the key (a middleware, a custom provider). A
    provider's key is its ``api_key`` or ``_api_key`` string attribute (the HTTP
    providers keep it in the latter). Keys shorter than ``MIN_REGISTERED_SECRET``
    are placeholders (``EMPTY``, ``ollama``), not secrets.
    """
    found: list[str] = []
    for link in getattr(pipe, "middleware", ()):
        provider = getattr(link, "provider", None)
        for name in ("api_key", "_api_key"):
            key = getattr(provider, name, None)
            if isinstance(key, str):
                found.append(key)
    if settings is not None and settings.token:
        found.append(settings.token)
    for secret in found:
        register_secret(secret)  # (it ignores placeholders shorter than 8 characters)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: v if k == "partial_text" else _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


#: what a web client is told when the session store fails (the log has the detail)
STORE_MESSAGES = {
    StoreUnavailable: "the session store is unavailable; try again later (the server log "
    "has the details)",
    SessionError: "the session store failed (the server log has the details)",
}


def error_dict(exc: BaseException) -> dict[str, Any]:
    """A JSON-safe description of ``exc``: its ``to_dict()``, never a traceback or key.

    Every text in it (message, ``raw`` line, codes) is redacted by pattern and with
    every registered secret exactly (see :func:`register_pipeline_secrets`); ``partial_text`` is the
    model's answer, already sent as chunks, and stays as it is. A store failure is
    told by what failed, without its detail: the messages of the stores name the
    SQLite file or the Redis host, which are the operator's business, not a
    client's; the detail goes to the server log instead. ``SessionBusy`` names
    only the client's own session and passes through.
    """
    if isinstance(exc, SessionError) and not isinstance(exc, SessionBusy):
        kind = StoreUnavailable if isinstance(exc, StoreUnavailable) else SessionError
        logger.warning("session store error (a client was told only that it failed): %s", exc)
        return {"type": type(exc).__name__, "message": STORE_MESSAGES[kind]}
    if isinstance(exc, (WebError, PkNotebookError)):
        data = _redacted(exc.to_dict())
        assert isinstance(data, dict)
        return data
    return {"type": "InternalError", "message": "internal server error; see the server log"}


def client_warnings(warnings: Iterable[str]) -> list[str]:
    """A result's warnings as a client may see them: what happened, not the detail.

    The end path writes warnings as ``"<what happened>: <detail>"`` (for example
    ``"the turn was not saved to the session store: <the store's error>"``) and logs
    them; the detail can name a file or a host, so a client gets the first part.
    """
    return [redact(warning.split(": ", 1)[0]) for warning in warnings]


def error_headers(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, WebError):
        return exc.headers
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        return {"Retry-After": str(max(0, round(exc.retry_after)))}
    return {}


def log_unexpected(exc: BaseException, where: str) -> None:
    if not isinstance(exc, (WebError, PkNotebookError)):
        logger.error("unexpected error in %s", where, exc_info=exc)
