"""How much one streamed answer may hold before the provider gives up on it.

The bytes of a stream come from a server we do not control (or from a proxy, or
from a model that never stops). Without caps, one endless SSE line or a 100 MB
answer grows the kernel's memory until it dies, and the answer is then saved to
the session store. Every cap ends the stream with a
:class:`~pk_notebook.runtime.errors.ProtocolError` that keeps the partial text.

The defaults are generous for real answers: the longest outputs current models
produce are about 128k tokens (roughly 0.5 M characters), so 8 Mi characters of
answer (text and reasoning together) is more than 16 times that; tool-call
arguments are bounded by the same output budget; and an SSE event is at most a
few MiB in practice (a Gemini event with an inline image), where the cap is 16 MiB.
Set them per provider: ``provider.limits = StreamLimits(max_answer_chars=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.errors import ConfigurationError
from .sse import DEFAULT_MAX_EVENT_BYTES

__all__ = ["DEFAULT_LIMITS", "StreamLimits"]

MI = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Caps on one streamed answer.

    max_event_bytes: the longest SSE line, and the most data one SSE event may carry.
    max_answer_chars: text plus reasoning of the answer, in characters.
    max_tool_chars: all tool calls of the answer together (ids, names, arguments,
        plus 64 characters per call, so a flood of empty calls is bounded too).
    """

    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_answer_chars: int = 8 * MI
    max_tool_chars: int = 8 * MI

    def __post_init__(self) -> None:
        for name in ("max_event_bytes", "max_answer_chars", "max_tool_chars"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = StreamLimits()
