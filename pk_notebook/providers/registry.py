"""Choose a provider by name: ``create_provider("openai:gpt-4o-mini")``.

Built-in providers register themselves through the same :func:`register_provider`
that third-party code uses, so there is no special case for any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..runtime.errors import ConfigurationError
from ..runtime.provider import Provider

ProviderFactory = Callable[..., Provider]


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    factory: ProviderFactory
    description: str
    key_env: tuple[str, ...] = ()
    default_model: str | None = None


_REGISTRY: dict[str, ProviderSpec] = {}


def register_provider(
    name: str,
    factory: ProviderFactory,
    *,
    description: str = "",
    key_env: tuple[str, ...] = (),
    default_model: str | None = None,
    replace: bool = False,
) -> None:
    """Make ``name`` usable in :func:`create_provider`. ``factory(model=..., **options)``."""
    if not name or ":" in name:
        raise ConfigurationError(f"provider name {name!r} must be non-empty and contain no ':'")
    if name in _REGISTRY and not replace:
        raise ConfigurationError(f"a provider named {name!r} is already registered")
    _REGISTRY[name] = ProviderSpec(name, factory, description, key_env, default_model)


def available_providers() -> list[ProviderSpec]:
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda spec: spec.name)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a spec into name and model.

    ``"openai:gpt-4o-mini"`` -> ``("openai", "gpt-4o-mini")``; ``"mock"`` -> ``("mock", None)``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigurationError("a provider spec is a string like 'mock' or 'openai:gpt-4o-mini'")
    name, _, model = spec.strip().partition(":")
    return name.strip().lower(), (model.strip() or None)


def create_provider(spec: str, **options: Any) -> Provider:
    """Build a provider from ``"name"`` or ``"name:model"``; options go to its constructor."""
    _load_builtins()
    name, model = parse_spec(spec)
    entry = _REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigurationError(f"unknown provider {name!r}: choose one of {known}")
    if model is not None:
        options["model"] = model
    return entry.factory(**options)


_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    from . import builtin  # noqa: F401 - registers the built-in providers
