"""The notebook's current provider, options and session store.

``%stream config`` changes them; ``%%stream`` cells and ``Chat()`` without an
explicit pipeline use :func:`default_pipeline`, so they share one store and a
session started in a cell continues in a chat widget and back.

The default provider is the offline mock (``PK_NOTEBOOK_PROVIDER`` overrides it,
e.g. ``openai:gpt-4o-mini``). The default store is in memory, so re-running a
notebook gives the same answers; ``%stream config --store sqlite`` (the default
file, see ``pk_notebook.sessions.sqlite``), ``--store PATH.sqlite3`` or
``--store redis://...`` keep sessions across kernel restarts.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..providers.registry import create_provider, parse_spec
from ..runtime.errors import ConfigurationError
from ..runtime.middleware import ProviderMiddleware, UsageMiddleware
from ..runtime.pipeline import Pipeline
from ..runtime.store import StateStore
from ..runtime.sync import run_sync
from ..runtime.types import ProviderConfig
from ..sessions.spec import describe_store, open_store
from .context import DEFAULT_MAX_ROWS
from .interpolate import DEFAULT_MAX_CHARS

DEFAULT_PROVIDER = "mock"

# Settings that shape the prompt only: changing them keeps the pipeline (and its
# HTTP client) as it is.
_PROMPT_SETTINGS = frozenset({"max_var_chars", "max_var_rows"})

logger = logging.getLogger("pk_notebook")


@dataclass
class NotebookDefaults:
    """What ``%stream config`` shows and sets."""

    provider: str = field(
        default_factory=lambda: os.environ.get("PK_NOTEBOOK_PROVIDER") or DEFAULT_PROVIDER
    )
    config: ProviderConfig = field(default_factory=ProviderConfig)
    store: str = "memory"
    timeout: float | None = None
    idle_timeout: float | None = 30.0
    max_var_chars: int = DEFAULT_MAX_CHARS  # a {name} value longer than this is cut
    max_var_rows: int = DEFAULT_MAX_ROWS  # rows of a DataFrame in a prompt
    provider_options: dict[str, Any] = field(default_factory=dict)
    #: ``%stream record`` / ``replay``: ("record", path, 0) or ("replay", path, pace)
    cassette: tuple[str, str, float] | None = None
    _pipeline: Pipeline | None = field(default=None, repr=False)
    _store: StateStore | None = field(default=None, repr=False)
    _others: dict[str, Pipeline] = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, Any]:
        name, model = parse_spec(self.provider)
        return {
            "provider": name,
            "model": self.config.model or model or "(provider default)",
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            "system": self.config.system,
            "store": describe_store(self.store),  # never a Redis password
            "timeout": self.timeout,
            "idle_timeout": self.idle_timeout,
            "max_var_chars": self.max_var_chars,
            "max_var_rows": self.max_var_rows,
            "api": self.provider_options.get("api") or "(provider default)",
        }

    def state_store(self) -> StateStore:
        if self._store is None:
            self._store = open_store(self.store)
        return self._store

    def close_store(self) -> None:
        """Close the store these defaults opened (if any); the next use opens a new one."""
        store, self._store = self._store, None
        if store is not None:
            _close_later(store)

    def pipeline(self) -> Pipeline:
        """The shared pipeline, built on first use and after every change."""
        if self._pipeline is None or self._pipeline.closed:
            options = dict(self.provider_options)
            transport = self._cassette_transport()
            if transport is not None:
                options["transport"] = transport
            self._pipeline = self._build(self.provider, self.config, options)
        return self._pipeline

    def uses_http(self, spec: str | None = None) -> bool:
        """False for the offline mock (no HTTP calls: nothing to record or replay)."""
        return parse_spec(spec or self.provider)[0] != "mock"

    def _cassette_transport(self) -> Any:
        """The transport of ``%stream record`` / ``replay`` for the default provider."""
        if self.cassette is None or not self.uses_http():
            return None
        from ..providers.cassette import Cassette

        mode, path, pace = self.cassette
        cassette = Cassette(path)
        return cassette.recorder() if mode == "record" else cassette.player(pace=pace)

    def pipeline_for(self, provider: str | None = None) -> Pipeline:
        """The shared pipeline, or one for another provider spec (``%%stream -p ...``).

        The other pipeline shares the store, timeouts and sampling settings, but not
        the configured model or ``provider_options`` (they belong to the default
        provider). It is cached per spec until the next :meth:`update`, so a cell
        re-run does not open a new HTTP client each time.
        """
        if provider is None or provider == self.provider:
            return self.pipeline()
        pipe = self._others.get(provider)
        if pipe is None or pipe.closed:
            pipe = self._build(provider, replace(self.config, model=None), {})
            self._others[provider] = pipe
        return pipe

    def _build(self, spec: str, config: ProviderConfig, options: dict[str, Any]) -> Pipeline:
        provider = create_provider(spec, **options)
        return Pipeline(
            UsageMiddleware(_default_prices()),
            ProviderMiddleware(provider, config),
            state_store=self.state_store(),
            timeout=self.timeout,
            idle_timeout=self.idle_timeout,
        )

    def update(self, **changes: Any) -> None:
        """Change settings; the pipeline (and the store, if it changed) is rebuilt lazily.

        The old pipeline is retired, not shut down at once: streams still running in
        other cells (a chat) keep using it until they end, then it closes its
        connections (:func:`_retire`).
        """
        if "store" in changes and changes["store"] != self.store:
            self.close_store()
        config_changes = {
            k: changes.pop(k) for k in list(changes) if k in ProviderConfig.__dataclass_fields__
        }
        if config_changes:
            self.config = replace(self.config, **config_changes)
        for key, value in changes.items():
            if not hasattr(self, key) or key.startswith("_"):
                raise ConfigurationError(f"unknown setting {key!r}")
            setattr(self, key, value)
        if config_changes or set(changes) - _PROMPT_SETTINGS:
            self.retire_pipelines()

    def retire_pipelines(self) -> None:
        """Drop the pipelines built so far; each shuts down once its streams end."""
        for old in (self._pipeline, *self._others.values()):
            if old is not None:
                _retire(old)
        self._pipeline = None
        self._others = {}


def _close_later(store: StateStore) -> None:
    """Close a store we opened and no longer use, without blocking a running loop.

    Inside a kernel cell the event loop is running in this thread: waiting here for
    a close that needs that loop would deadlock, so the close becomes a task.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        task = loop.create_task(store.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        return
    try:
        run_sync(store.aclose())
    except Exception as exc:
        logger.warning("could not close the session store %r: %s", store, exc)


_closing: set[asyncio.Task[None]] = set()


def _retire(pipe: Pipeline) -> None:
    """Shut a replaced pipeline down once its running streams have ended.

    Its provider holds kept-alive connections; left to the garbage collector they
    close late and noisily. A stream still running (a chat reply) is waited for,
    not stopped. Like :func:`_close_later`, never blocks a running loop.
    """

    async def retire() -> None:
        await pipe.wait_idle()
        await pipe.shutdown()

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        task = loop.create_task(retire())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
        return
    if pipe.active_streams:
        return  # streams of another loop: they end there; the collector does the rest
    try:
        run_sync(pipe.shutdown())
    except Exception as exc:
        logger.warning("could not close the replaced pipeline: %s", exc)


def _default_prices() -> dict[str, Any]:
    try:
        from ..providers.pricing import DEFAULT_PRICES
    except ImportError:
        return {}
    return dict(DEFAULT_PRICES)


_DEFAULTS: NotebookDefaults | None = None


def defaults() -> NotebookDefaults:
    global _DEFAULTS
    if _DEFAULTS is None:
        _DEFAULTS = NotebookDefaults()
    return _DEFAULTS


def default_pipeline() -> Pipeline:
    return defaults().pipeline()


def reset_defaults() -> None:
    """Forget every setting (used by tests and ``%unload_ext``)."""
    global _DEFAULTS
    if _DEFAULTS is not None:
        _DEFAULTS.retire_pipelines()
        _DEFAULTS.close_store()
    _DEFAULTS = None
