"""What a call costs: a price per model, found in one table, applied once.

Both ways of getting a cost on a result, ``UsageMiddleware(prices)`` and a
provider's ``prices=`` option, use :func:`lookup_price` and
:meth:`Price.cost`; when both are set the provider's cost stands and the
middleware only counts it, so a cost is never computed twice or differently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .types import Usage

__all__ = ["Price", "lookup_price"]


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float

    def cost(self, usage: Usage) -> float:
        return (usage.input_tokens * self.input + usage.output_tokens * self.output) / 1_000_000


def lookup_price(prices: Mapping[str, Price], model: str | None) -> Price | None:
    """The price of ``model``: an exact key first, else the longest ``prefix*`` key.

    A model not in the table has no price (``None``): an unknown cost is not zero.
    """
    if not model:
        return None
    price = prices.get(model)
    if price is not None:
        return price
    best: Price | None = None
    best_length = -1
    for pattern, candidate in prices.items():
        if pattern.endswith("*") and model.startswith(pattern[:-1]) and len(pattern) > best_length:
            best, best_length = candidate, len(pattern)
    return best
