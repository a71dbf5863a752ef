"""What the OpenAI, Anthropic and Gemini stream parsers share.

A parser validates foreign data where it enters: a chunk of valid JSON but the
wrong shape (``choices: ["x"]``, ``delta: "str"``, ``content: 123``, a usage count
of ``"many"``) is a :class:`ProtocolError` carrying the raw line and the partial
text, never an ``AttributeError`` or ``TypeError`` from deep inside, so the code
that ends a stream never meets a surprise. The checks are plain ``type(x) is``
tests, a few per chunk: the OpenAI parser's hot path is measured against
httpx-sse, and a validation library would cost more than all the parsing.

It also bounds the answer (:class:`~pk_notebook.providers.limits.StreamLimits`),
keeps the text it emitted (so every error carries ``partial_text`` even when the
provider is used without a Stream), and removes the provider's exact key from
every error it raises: the parser is the provider's boundary for the stream's
content, and it is the one place that knows the key (``errors.register_secret``
also makes later :func:`~pk_notebook.runtime.errors.redact` calls remove it).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from ..runtime.errors import (
    ProtocolError,
    StreamError,
    redact,
    register_secret,
    scrub,
)
from ..runtime.types import Delta
from .limits import DEFAULT_LIMITS, StreamLimits
from .sse import SSEDecoder

#: the C scanner behind ``json.loads``, called directly: one Python layer less per chunk
scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]

#: what one tool call costs in the tool budget besides its text: bounds a flood of empty calls
TOOL_CALL_OVERHEAD = 64


class Bad(ValueError):
    """A chunk of the wrong shape; the parser turns it into a ProtocolError with the raw line."""


def load_json(text: str) -> Any:
    """One SSE data field as JSON; ``ValueError`` (also for absurd nesting) if it is not."""
    try:
        try:
            value, end = scan_json(text, 0)
        except StopIteration:  # leading whitespace, or not JSON at all
            value, end = json.loads(text), len(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if end != len(text) and text[end:].strip():
        raise ValueError(f"extra data after the JSON value (at {end})")
    return value


def dump_json(value: Any) -> str:
    """``value`` (parsed from a chunk) as JSON text; Bad if it cannot be written back."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (RecursionError, ValueError) as exc:
        raise Bad(f"a value cannot be written as JSON ({type(exc).__name__})") from None


def count(mapping: dict[str, Any], key: str) -> int:
    """A token count from a usage object: absent or null is 0; anything but a number is Bad."""
    value = mapping.get(key)
    if value is None:
        return 0
    if type(value) is int and value >= 0:
        return value
    if type(value) is float and value >= 0 and value.is_integer():
        return int(value)
    raise Bad(f"usage {key!r} is not a token count: {str(value)[:40]!r}")


def mapping(value: Any, what: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, ``{}`` if it is null; Bad otherwise."""
    if value is None:
        return {}
    if type(value) is not dict:
        raise Bad(f"{what} is not an object")
    return value


def string(value: Any, what: str) -> str:
    """``value`` if it is a string, ``""`` if it is null; Bad otherwise."""
    if value is None:
        return ""
    if type(value) is not str:
        raise Bad(f"{what} is not a string")
    return value


class StreamParser:
    """The state every dialect's parser has; subclasses implement ``feed`` and ``end``."""

    __slots__ = (
        "_decoder",
        "_max_answer",
        "_max_tools",
        "_name",
        "_parts",
        "_provider",
        "_secret",
        "_size",
        "_tool_size",
        "done",
        "error",
        "started",
    )

    def __init__(self, provider: Any) -> None:
        limits: StreamLimits = getattr(provider, "limits", None) or DEFAULT_LIMITS
        self._provider = provider
        self._name: str = provider.name
        self._secret: str | None = getattr(provider, "_api_key", None)
        register_secret(self._secret)
        self._decoder = SSEDecoder(limits.max_event_bytes, limits.max_event_bytes)
        self._max_answer = limits.max_answer_chars
        self._max_tools = limits.max_tool_chars
        self._parts: list[str] = []  # the text emitted so far, for partial_text
        self._size = 0  # characters of text and reasoning emitted
        self._tool_size = 0
        self.done = False
        self.error: StreamError | None = None
        self.started = False

    @property
    def text(self) -> str:
        """The answer text emitted so far."""
        return "".join(self._parts)

    # --- emitting -----------------------------------------------------------------

    def emit(self, out: list[Any], text: str, reasoning: str = "") -> None:
        """Append a Delta for non-empty ``text``/``reasoning``, within the answer cap."""
        size = self._size + len(text) + len(reasoning)
        if size > self._max_answer:
            self.too_long()
        self._size = size
        if text:
            self._parts.append(text)
        out.append(Delta(text, reasoning))

    def charge_answer(self, size: int) -> None:
        """Count ``size`` characters of kept reasoning data (signatures, redacted
        thinking) against the answer cap: it is held in memory like the text."""
        size += self._size
        if size > self._max_answer:
            self.too_long()
        self._size = size

    def too_long(self) -> NoReturn:
        raise Bad(
            f"the answer is longer than {self._max_answer} characters "
            "(StreamLimits.max_answer_chars); raise the limit if such answers are expected"
        )

    def charge_tools(self, size: int) -> None:
        """Count ``size`` characters of tool-call data against the tool cap."""
        self._tool_size += size
        if self._tool_size > self._max_tools:
            raise Bad(
                f"the tool calls are longer than {self._max_tools} characters "
                "(StreamLimits.max_tool_chars); raise the limit if such calls are expected"
            )

    # --- failing ------------------------------------------------------------------

    def fail(self, error: StreamError) -> None:
        """Keep ``error`` (key removed, partial text attached) for the provider to raise."""
        scrub(error, self._secret)
        if not error.partial_text:
            error.partial_text = self.text
        self.error = error

    def fail_json(self, raw: bytes | str, why: str) -> None:
        self.fail(self.protocol_error(raw, f"is not valid JSON ({why})"))

    def fail_shape(self, raw: bytes | str, why: str) -> None:
        self.fail(self.protocol_error(raw, f"has the wrong shape ({why})"))

    def protocol_error(self, raw: bytes | str, what: str) -> ProtocolError:
        if isinstance(raw, bytes):
            raw = raw[:4000].decode("utf-8", "replace")
        return ProtocolError(
            f"{self._name} sent a chunk that {what}; the stream was abandoned",
            raw=redact(raw[:4000], self._secret),
        )
