"""``{name}`` in a ``%%stream`` prompt: which braces are variables, and which are text.

Prompts are full of braces that are not placeholders: JSON, dicts, set literals,
f-strings, LaTeX, Jinja templates. ``str.format`` would choke on all of them, so
the rule here is deliberately narrow:

- ``{name}`` and ``{name.attr.attr}`` (Python identifiers joined by dots, nothing
  else between the braces, no spaces) are variables. ``{name}`` becomes
  ``str(value)`` of ``name`` in the user namespace; a name (or attribute) that
  does not exist is an error that names it, never a silent ``{name}`` left in.
- ``{{name}}`` (or ``{{name.attr}}``) is the literal text ``{name}``.
- Every other brace is kept exactly as typed: ``{"a": 1}``, ``{ x }``, ``{x!r}``,
  ``{x:>4}``, ``{x + 1}``, ``f"{a[0]}"``, ``{{ jinja }}``, a lone ``{``...
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
# One scan, left to right: an escaped placeholder first, so ``{{x}}`` never
# matches as ``{`` + variable ``{x}`` + ``}``.
_PATTERN = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")

RULE = (
    "{name} or {name.attr} is replaced by that variable's value; {{name}} gives the "
    "literal {name}; every other brace (JSON, dicts, f-strings, {x!r}, { spaced }) is "
    "kept as typed. Use --raw to turn substitution off."
)


class InterpolationError(LookupError):
    """A ``{name}`` in the prompt names nothing in the user namespace."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


def variables(template: str) -> list[str]:
    """The placeholder names ``template`` uses, in order, without duplicates."""
    seen: dict[str, None] = {}
    for match in _PATTERN.finditer(template):
        if match.group(2):
            seen.setdefault(match.group(2), None)
    return list(seen)


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Replace ``{name}`` placeholders by ``str`` of their values (see the module doc)."""

    def replace(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped is not None:
            return "{" + escaped + "}"
        return str(_lookup(match.group(2), namespace))

    return _PATTERN.sub(replace, template)


def _lookup(dotted: str, namespace: Mapping[str, Any]) -> Any:
    head, *attrs = dotted.split(".")
    if head not in namespace:
        raise InterpolationError(
            f"the prompt uses {{{dotted}}} but there is no variable {head!r}: define it "
            f"in a cell first, or write {{{{{dotted}}}}} for literal braces (or use --raw)",
            head,
        )
    value = namespace[head]
    path = head
    for attr in attrs:
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise InterpolationError(
                f"the prompt uses {{{dotted}}} but {path} ({type(value).__name__}) has no "
                f"attribute {attr!r}; write {{{{{dotted}}}}} for literal braces",
                path,
            ) from None
        path = f"{path}.{attr}"
    return value
