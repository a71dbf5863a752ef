"""Registers the providers that ship with pk_notebook."""

from __future__ import annotations

from typing import Any

from ..runtime.provider import Provider
from .mock import MockProvider
from .registry import register_provider


def _mock(model: str | None = None, **options: Any) -> Provider:
    # "mock" and "mock:demo" are the demo set; any other model name is just a label.
    provider = MockProvider.demo(**options)
    if model is not None:
        provider.model = model
    return provider


register_provider(
    "mock",
    _mock,
    description="offline, scripted demo answers (no key, no network)",
    default_model="demo",
)
