"""Token counts when the provider sends none: estimated, and labelled as such.

Ollama sends no usage in streams, a stopped stream ends before the usage chunk,
and some servers refuse ``stream_options.include_usage``. A status line that
then says nothing (or "0 tokens") is less useful than an honest estimate, so
the stream estimates and marks the result: ``result.usage.estimated`` names the
method, and every surface shows the numbers with ``≈`` and the word
"estimated".

The method (the decision): characters / 4, the rule of thumb OpenAI and
Anthropic document for English text, unless a real tokenizer is registered
for the model (:func:`register_tokenizer`). :func:`use_tiktoken` registers
OpenAI's tokenizer for GPT and o-series models when ``tiktoken`` is installed;
it is a call you make, because tiktoken downloads its tables on first use and a
library must not start a download (or block an event loop) by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .types import Message, ToolCall, Usage

#: prefix of a model name -> (method name, count(text) -> tokens)
_TOKENIZERS: dict[str, tuple[str, Callable[[str], int]]] = {}

CHARS = "chars/4"


def register_tokenizer(prefix: str, count: Callable[[str], int], *, method: str) -> None:
    """Count the tokens of models whose name starts with ``prefix`` with ``count``."""
    _TOKENIZERS[prefix] = (method, count)


def use_tiktoken() -> None:
    """Register tiktoken for OpenAI models (``gpt-``, ``o1``, ``o3``, ``o4``, ``chatgpt-``).

    Loads the encodings now (downloading them the first time), so later
    estimates never wait. Raises ``ImportError`` when tiktoken is not installed.
    """
    import tiktoken

    def counting(encoding: str) -> Callable[[str], int]:
        loaded = tiktoken.get_encoding(encoding)
        return lambda text: len(loaded.encode(text))

    modern, older = counting("o200k_base"), counting("cl100k_base")
    for prefix in ("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4", "chatgpt-"):
        register_tokenizer(prefix, modern, method="tiktoken")
    for prefix in ("gpt-4-", "gpt-3.5"):
        register_tokenizer(prefix, older, method="tiktoken")


def counter(model: str | None) -> tuple[str, Callable[[str], int]]:
    """The method and counting function for ``model`` (longest registered prefix wins)."""
    name = (model or "").split("/")[-1]
    best = ""
    for prefix in _TOKENIZERS:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    if best:
        return _TOKENIZERS[best]
    return CHARS, _chars


def estimate_usage(
    messages: Iterable[Message],
    output: str,
    model: str | None,
    *,
    reasoning: str = "",
    calls: Iterable[ToolCall] = (),
) -> Usage:
    """A :class:`Usage` estimated from what was sent and what came back (text, thinking,
    tool calls' names and arguments), labelled."""
    method, count = counter(model)
    sent = 0
    for message in messages:
        sent += count(message.content) if message.content else 0
        for call in message.tool_calls:
            sent += count(call.arguments) if call.arguments else 0
    thinking = count(reasoning) if reasoning else 0
    answered = (count(output) if output else 0) + thinking
    for call in calls:
        answered += count(call.name + call.arguments)
    return Usage(sent, answered, thinking, 0, estimated=method)


def _chars(text: str) -> int:
    return max(1, (len(text) + 3) // 4)
