"""Store specs: the one place that says what ``--store ...`` means.

``%stream config --store`` and ``pk-notebook serve --store`` both go through
:func:`open_store`, so a spec opens the same store wherever it is written, and
:func:`describe_store` is the only way a spec is shown (a Redis password never
reaches a notebook output, a log line or an error message).

Accepted forms::

    memory                 this process's memory
    sqlite                 the default SQLite file (see pk_notebook.sessions.sqlite)
    sqlite:PATH            the SQLite file at PATH (any name; ~ is expanded)
    PATH.sqlite3           the same, for a path ending in .sqlite3, .sqlite or .db
    redis://[user:password@]host:port/db, rediss://..., unix:///path.sock

A bare path with another ending is refused rather than guessed: ``serve --store
sessions`` used to mean "the file ./sessions" while the notebook refused it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..runtime.errors import ConfigurationError, redact
from ..runtime.store import StateStore

ACCEPTED_FORMS = (
    "memory",
    "sqlite (the default file)",
    "sqlite:PATH",
    "PATH ending in .sqlite3, .sqlite or .db",
    # Not "redis://[user:password@]host": redact() would blank that as a password.
    "redis://host:port/db (or rediss://, unix:///path.sock; a password goes as user:pw@host)",
)

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SQLITE_SUFFIXES = (".sqlite3", ".sqlite", ".db")

Kind = Literal["memory", "sqlite", "redis"]


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A parsed spec: which kind of store, and where (``None``: the kind's default)."""

    kind: Kind
    target: str | None = None


def safe_url(url: str) -> str:
    """``url`` without its password (in the authority or as ``?password=``).

    It lives here, not in ``redis.py``, so a spec can be shown without the
    optional ``redis`` package installed.
    """
    try:
        parts = urlsplit(url)
        netloc = redact(parts.netloc)
        if "@" in parts.netloc:
            userinfo, host = parts.netloc.rsplit("@", 1)
            user = redact(userinfo.split(":", 1)[0])
            host = redact(host)
            netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
        query = urlencode(
            [
                (k, "***" if k.lower() == "password" else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        # redact() the rest, not the whole: it would turn our "***" into "[REDACTED]".
        rest = redact(urlunsplit(("", "", parts.path, query, parts.fragment)))
        return f"{parts.scheme}://{netloc}{rest}"
    except ValueError:
        return "<unparsable URL>"


def _shown(spec: str) -> str:
    """A spec as it may appear in an error: anything URL-like loses its password."""
    return safe_url(spec) if "://" in spec or "@" in spec else redact(spec)


def _refuse(spec: object, why: str) -> ConfigurationError:
    shown = _shown(spec) if isinstance(spec, str) else repr(type(spec).__name__)
    return ConfigurationError(
        f"unknown store {shown!r} ({why}); write one of: " + "; ".join(ACCEPTED_FORMS)
    )


def parse_store_spec(spec: str) -> StoreSpec:
    """Read a spec without opening anything (see the module doc for the forms)."""
    if not isinstance(spec, str):
        raise _refuse(spec, "a store spec is a string")
    text = spec.strip()
    if text == "memory":
        return StoreSpec("memory")
    if text == "sqlite":
        return StoreSpec("sqlite")
    if text.startswith(_REDIS_SCHEMES):
        return StoreSpec("redis", text)
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        if not path:
            raise _refuse(spec, "sqlite: needs a path after the colon")
        return StoreSpec("sqlite", str(Path(path).expanduser()))
    if "://" in text:
        raise _refuse(spec, "not a supported URL scheme")
    if text.endswith(_SQLITE_SUFFIXES):
        return StoreSpec("sqlite", str(Path(text).expanduser()))
    raise _refuse(spec, "not a known name, and not a path ending in .sqlite3")


def describe_store(spec: str) -> str:
    """The spec as it may be shown to anyone: a Redis URL with ``***`` for its password."""
    parsed = parse_store_spec(spec)
    if parsed.kind == "redis" and parsed.target is not None:
        return safe_url(parsed.target)
    return spec.strip()


def open_store(spec: str) -> StateStore:
    """The store a spec names. Nothing connects yet: each store opens on first use."""
    parsed = parse_store_spec(spec)
    if parsed.kind == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if parsed.kind == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(parsed.target)
    try:
        from .redis import RedisStore
    except ImportError as exc:
        raise ConfigurationError(
            f"the store {describe_store(spec)} needs the 'redis' package: "
            "pip install 'pk-notebook[redis]'"
        ) from exc
    assert parsed.target is not None
    return RedisStore.from_url(parsed.target)
