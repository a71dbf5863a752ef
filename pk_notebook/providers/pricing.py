"""List prices of common models, so results can carry a cost.

Use either::

    Pipeline(UsageMiddleware(prices=DEFAULT_PRICES), ProviderMiddleware(provider))
    create_provider("openai:gpt-4o-mini", prices=DEFAULT_PRICES)

Prices are US dollars per million tokens (input, output), standard tier, no
batch or cache discounts, as published by the providers on :data:`PRICES_AS_OF`.
They change: pass your own table (same shape) when it matters. A key ending in
``*`` is a prefix, so dated snapshots (``gpt-4o-mini-2024-07-18``) find their
family; the longest matching prefix wins. A model not in the table gets no cost
(``None``), never a made-up zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ..runtime.pricing import Price, lookup_price

__all__ = ["DEFAULT_PRICES", "PRICES_AS_OF", "Price", "lookup_price"]

PRICES_AS_OF = "2025-11"

DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        # OpenAI
        "gpt-4o-mini*": Price(0.15, 0.60),
        "gpt-4o*": Price(2.50, 10.00),
        "gpt-4.1-nano*": Price(0.10, 0.40),
        "gpt-4.1-mini*": Price(0.40, 1.60),
        "gpt-4.1*": Price(2.00, 8.00),
        "gpt-5-nano*": Price(0.05, 0.40),
        "gpt-5-mini*": Price(0.25, 2.00),
        "gpt-5*": Price(1.25, 10.00),
        "o4-mini*": Price(1.10, 4.40),
        "o3-mini*": Price(1.10, 4.40),
        "o3*": Price(2.00, 8.00),
        # Anthropic
        "claude-opus-4-5*": Price(5.00, 25.00),
        "claude-opus-4*": Price(15.00, 75.00),
        "claude-sonnet-4*": Price(3.00, 15.00),
        "claude-3-7-sonnet*": Price(3.00, 15.00),
        "claude-haiku-4-5*": Price(1.00, 5.00),
        "claude-3-5-haiku*": Price(0.80, 4.00),
        "claude-3-haiku*": Price(0.25, 1.25),
        # Google
        "gemini-2.5-pro*": Price(1.25, 10.00),
        "gemini-2.5-flash-lite*": Price(0.10, 0.40),
        "gemini-2.5-flash*": Price(0.30, 2.50),
        "gemini-2.0-flash-lite*": Price(0.075, 0.30),
        "gemini-2.0-flash*": Price(0.10, 0.40),
    }
)
