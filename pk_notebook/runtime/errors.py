"""Every error pk_notebook raises, under one base class.

    PkNotebookError
    ├── StreamError                  a call failed; carries the partial text
    │   ├── ProviderError            the provider said no (HTTP status or in-stream error)
    │   │   ├── AuthenticationError  401/403: the key is missing, wrong or lacks access
    │   │   ├── RateLimitError       429: too many requests; carries retry_after
    │   │   └── ServerError          5xx, "overloaded": retryable
    │   ├── NetworkError             connection refused, reset or dropped mid-stream
    │   ├── StreamTimeout            total deadline or idle timeout (kind="total"|"idle")
    │   ├── TruncatedStream          the stream ended without the provider's end marker
    │   ├── ProtocolError            bytes that are not the protocol; carries the raw line
    │   ├── OutputValidationError    a structured answer that does not fit its schema
    │   └── StreamCancelled          stopped by the caller (Stop button, stop(), Interrupt)
    ├── ConfigurationError           bad options, unknown provider, missing key
    │   └── MissingAPIKey            names the environment variable to set
    ├── SessionError                 the state store failed
    │   ├── SessionBusy              another turn holds the session's lock too long
    │   └── StoreUnavailable         the store cannot be reached
    └── UsageError                   the API was used in an order it does not support

Failures of an operation (``StreamError``) are kept apart from misuse of the API
(``UsageError``, ``ConfigurationError``) so a retry loop can catch the first
without hiding bugs of the second. Messages say what to do next, and never
contain an API key: :func:`redact` is applied to every text that comes from the
outside.

Redaction by pattern alone misses keys of unknown shapes (an Azure 32-hex key, a
vLLM ``--api-key local-secret-123``, a gateway's key), so a provider also
*registers* its exact key (:func:`register_secret`): from then on every
:func:`redact` in the process removes it, including in errors built by code that
was not handed the key, and :func:`scrub` cleans an already built error.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, TypeVar

# Key shapes of the major providers, plus bearer headers; applied to any text that
# came from a server before it becomes part of an error message.
__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "MissingAPIKey",
    "NetworkError",
    "OutputValidationError",
    "PkNotebookError",
    "ProtocolError",
    "ProviderError",
    "RateLimitError",
    "RedactingFilter",
    "ServerError",
    "SessionBusy",
    "SessionError",
    "StoreUnavailable",
    "StreamCancelled",
    "StreamError",
    "StreamTimeout",
    "TruncatedStream",
    "UsageError",
    "redact",
    "register_secret",
    "scrub",
]

#: Registered secrets shorter than this are not redacted everywhere: local servers
#: accept placeholder "keys" such as ``ollama`` or ``EMPTY`` that are not secret, and
#: removing such words from every message would garble them (e.g. the provider name
#: ``ollama``). Keys passed to :func:`redact` explicitly are removed from 4 characters.
MIN_REGISTERED_SECRET = 8

_registered: tuple[str, ...] = ()  # longest first, so a key containing another goes whole
_registry_lock = threading.Lock()

_SECRET_PATTERNS = [
    re.compile(r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|key)[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9._\-]{8,}"),
    re.compile(r"(redis(?:s)?://[^:/@\s]*:)[^@\s]+(@)"),
]


def register_secret(secret: str | None) -> None:
    """Have every later :func:`redact` in this process remove ``secret`` exactly.

    Providers call this with their key, so an error message built anywhere (an
    HTTP helper, a web handler, a log line) cannot carry a key whose shape no
    pattern knows. Idempotent and thread-safe; secrets under
    :data:`MIN_REGISTERED_SECRET` characters are ignored (see there why).
    """
    global _registered
    if not secret or len(secret) < MIN_REGISTERED_SECRET or secret in _registered:
        return
    with _registry_lock:
        if secret not in _registered:
            _registered = tuple(sorted((*_registered, secret), key=len, reverse=True))


def redact(text: str, *secrets: str | None) -> str:
    """Remove API keys and passwords from ``text``.

    Known secrets passed in, and every registered one (:func:`register_secret`),
    are removed exactly; anything shaped like a key is removed too, because an
    error body may echo a key we were never given.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    for secret in _registered:  # a tuple swapped whole: safe while another thread adds
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _SECRET_PATTERNS:
        if pattern.groups:
            text = pattern.sub(
                lambda m: m.group(1) + "[REDACTED]" + (m.group(2) if m.re.groups > 1 else ""),
                text,
            )
        else:
            text = pattern.sub("[REDACTED]", text)
    return text


class RedactingFilter(logging.Filter):
    """Removes registered secrets (and key-shaped text) from log records.

    Installed on the ``pk_notebook`` logger, so a record from any module that logs
    through it (providers, HTTP helpers, the pipeline) is clean before a handler
    sees it, even if the code that logged it forgot :func:`redact`. The message is
    formatted here once (``record.args`` then is empty) and so is a traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _install_filter() -> None:
    log = logging.getLogger("pk_notebook")
    if not any(isinstance(f, RedactingFilter) for f in log.filters):
        log.addFilter(RedactingFilter())


_install_filter()

_E = TypeVar("_E", bound=BaseException)


def scrub(error: _E, *secrets: str | None) -> _E:
    """Redact ``error``'s message and the text fields it shows (``raw``, ``body``, ``code``).

    For errors built by code that did not know the key: the provider that raises
    them does, and calls this at its boundary. ``partial_text`` is the model's
    answer and is left as it is. Returns ``error`` for ``raise scrub(exc, key)``.
    """
    error.args = tuple(redact(a, *secrets) if isinstance(a, str) else a for a in error.args)
    for name in ("raw", "body", "code"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            setattr(error, name, redact(value, *secrets))
    return error


class PkNotebookError(Exception):
    """Base class of every error raised by pk_notebook."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": str(self)}


class StreamError(PkNotebookError):
    """A call failed. ``partial_text`` holds whatever arrived before it did."""

    def __init__(self, message: str, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["partial_text"] = self.partial_text
        return data

    @property
    def retryable(self) -> bool:
        return False


class ProviderError(StreamError):
    """The provider refused or failed the request."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        provider: str | None = None,
        code: str | None = None,
        body: str | None = None,
        partial_text: str = "",
    ) -> None:
        super().__init__(redact(message), partial_text=partial_text)
        self.status_code = status_code
        self.provider = provider
        self.code = code
        self.body = redact(body)[:2000] if body else None

    @property
    def retryable(self) -> bool:
        return self.status_code in (408, 409) or (
            self.status_code is not None and self.status_code >= 500
        )

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(status_code=self.status_code, provider=self.provider, code=self.code)
        return data


class AuthenticationError(ProviderError):
    """The provider rejected the credentials (HTTP 401 or 403)."""


class RateLimitError(ProviderError):
    """The provider asked us to slow down (HTTP 429); ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("status_code", 429)
        super().__init__(message, **kwargs)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["retry_after"] = self.retry_after
        return data


class ServerError(ProviderError):
    """The provider failed on its side (5xx, overloaded); worth a retry."""

    @property
    def retryable(self) -> bool:
        return True


class NetworkError(StreamError):
    """The connection failed: refused, reset, or dropped in the middle of a stream."""

    @property
    def retryable(self) -> bool:
        return True


class StreamTimeout(StreamError):
    """The stream took too long: ``kind`` is ``"total"`` (deadline) or ``"idle"`` (silence)."""

    def __init__(self, message: str, *, kind: str, seconds: float, partial_text: str = "") -> None:
        super().__init__(message, partial_text=partial_text)
        self.kind = kind
        self.seconds = seconds

    @property
    def retryable(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(kind=self.kind, seconds=self.seconds)
        return data


class TruncatedStream(StreamError):
    """The stream ended before the provider's end marker: the text is incomplete."""


class ProtocolError(StreamError):
    """The server sent something that is not the expected protocol."""

    def __init__(self, message: str, *, raw: str | None = None, partial_text: str = "") -> None:
        super().__init__(redact(message), partial_text=partial_text)
        self.raw = redact(raw)[:2000] if raw is not None else None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["raw"] = self.raw
        return data


class OutputValidationError(StreamError):
    """A structured answer (``schema=``) that is not valid JSON for its schema.

    ``raw`` is the whole answer text, ``errors`` says what failed (one line per
    problem, with the path into the object). The answer is kept, in the result
    and in the session, as the text it was.
    """

    def __init__(
        self, message: str, *, raw: str, errors: tuple[str, ...] = (), partial_text: str = ""
    ) -> None:
        super().__init__(message, partial_text=partial_text or raw)
        self.raw = raw
        self.errors = errors

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["errors"] = list(self.errors)
        return data


class StreamCancelled(StreamError):
    """The caller stopped the stream (Stop button, ``stream.stop()``, Interrupt)."""


class ConfigurationError(PkNotebookError, ValueError):
    """An option, a provider name or a file is wrong; the message says which and how to fix it."""


class MissingAPIKey(ConfigurationError):
    """No API key was given and the environment variable that would hold one is empty."""

    def __init__(self, provider: str, env_vars: tuple[str, ...]) -> None:
        names = " or ".join(env_vars)
        super().__init__(
            f"{provider} needs an API key: set {names} in the environment "
            f"(or pass api_key=...). To work offline, use the 'mock' provider."
        )
        self.provider = provider
        self.env_vars = env_vars


class SessionError(PkNotebookError):
    """The session store failed."""


class SessionBusy(SessionError):
    """Another turn held the session's lock longer than the lock timeout."""

    def __init__(self, session_id: str, timeout: float) -> None:
        super().__init__(
            f"session {session_id!r} is busy: another turn has held it for more than "
            f"{timeout:g} s. Wait for it to finish, stop it, or raise lock_timeout."
        )
        self.session_id = session_id
        self.timeout = timeout


class StoreUnavailable(SessionError):
    """The store cannot be reached or read; the message names where it looked."""


class UsageError(PkNotebookError, RuntimeError):
    """The API was used in a way it does not support (e.g. a pipeline used after shutdown)."""
