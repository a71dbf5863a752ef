"""Driving a provider's stream parser directly, without HTTP (shared by the parser tests).

The parsers are sans-IO (``feed(bytes) -> events``), so their behaviour on any
byte sequence can be checked without a server; the end-to-end tests in the same
folder show the same behaviour through a real loopback server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pk_notebook.providers.anthropic import AnthropicParser
from pk_notebook.providers.gemini import GeminiParser
from pk_notebook.providers.limits import StreamLimits
from pk_notebook.providers.openai import OpenAIParser
from pk_notebook.runtime.errors import StreamError
from pk_notebook.runtime.types import Delta, Finish, Usage

DIALECTS = ("openai", "anthropic", "gemini")


class StubProvider:
    """What a parser uses of its provider: name, key, limits and ``finish``."""

    def __init__(
        self, name: str, api_key: str | None = None, limits: StreamLimits | None = None
    ) -> None:
        self.name = name
        self._api_key = api_key
        self.limits = limits

    def finish(
        self,
        reason: str | None,
        usage: Usage | None,
        tool_calls: Any,
        model: str | None,
        *,
        reasoning_blocks: Any = (),
    ) -> Finish:
        return Finish(
            reason=reason,
            usage=usage,
            tool_calls=tuple(tool_calls),
            model=model,
            reasoning_blocks=tuple(reasoning_blocks),
        )


def make_parser(
    dialect: str, api_key: str | None = None, limits: StreamLimits | None = None
) -> Any:
    provider: Any = StubProvider(dialect, api_key, limits)
    if dialect == "openai":
        return OpenAIParser(provider, None)
    if dialect == "anthropic":
        return AnthropicParser(provider)
    return GeminiParser(provider)


@dataclass
class Outcome:
    """What a parser made of a body: the deltas, the end, or the error it kept."""

    text: str = ""
    reasoning: str = ""
    finish: Finish | None = None
    error: StreamError | None = None
    events: list[Any] = field(default_factory=list)


def parse(
    dialect: str,
    *reads: bytes,
    api_key: str | None = None,
    limits: StreamLimits | None = None,
) -> Outcome:
    """Feed ``reads`` as the provider's stream loop does; stop where it would."""
    parser = make_parser(dialect, api_key, limits)
    outcome = Outcome()
    for read in reads:
        outcome.events.extend(parser.feed(read))
        if parser.done or parser.error is not None:
            break
    if parser.error is None and not parser.done:
        final = parser.end()
        if final is not None:
            outcome.events.append(final)
    outcome.error = parser.error
    for event in outcome.events:
        if isinstance(event, Delta):
            outcome.text += event.text
            outcome.reasoning += event.reasoning
        else:
            outcome.finish = event
    return outcome
