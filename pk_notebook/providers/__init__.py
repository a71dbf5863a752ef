"""Providers: the mock (offline default) and real APIs over httpx.

``create_provider("mock")``, ``create_provider("openai:gpt-4o-mini")``; see
:func:`register_provider` to add your own.
"""

from ..runtime.provider import Provider
from .mock import Fault, MockCall, MockProvider, Scenario, split_tokens
from .registry import available_providers, create_provider, parse_spec, register_provider

__all__ = [
    "Fault",
    "MockCall",
    "MockProvider",
    "Provider",
    "Scenario",
    "available_providers",
    "create_provider",
    "parse_spec",
    "register_provider",
    "split_tokens",
]
