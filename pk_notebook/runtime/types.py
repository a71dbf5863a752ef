"""The values that flow through a pipeline.

Providers yield :class:`Delta` events and end with one :class:`Finish`; the
:class:`~pk_notebook.runtime.stream.Stream` turns them into the :class:`Chunk`
objects users iterate, and into one :class:`Result` at the end. Keeping the wire
events (Delta/Finish) apart from what users see (Chunk/Result) lets a provider
stay ignorant of indexes, timings and sessions.

Everything here is a small slotted dataclass: thousands of them are created per
second on the hot path.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


class StreamStatus(str, enum.Enum):
    """How a stream ended, or that it has not ended yet.

    A stream that lost its connection or stopped sending without the provider's
    end marker is ``TRUNCATED``: it is never reported as ``FINISHED``.
    """

    STREAMING = "streaming"
    FINISHED = "finished"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"
    FAILED = "failed"
    TRUNCATED = "truncated"

    @property
    def complete(self) -> bool:
        return self is StreamStatus.FINISHED


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation.

    ``status`` is ``None`` for a complete message. An assistant answer that was
    stopped, timed out, failed or truncated is stored with that status so that a
    later reader (the chat widget, ``%stream history``) can show it as
    interrupted instead of passing it off as a whole answer.
    """

    role: Role
    content: str
    status: str | None = None
    created_at: float = field(default_factory=time.time, compare=False)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    #: an assistant message's tool calls (the text, if any, came before them)
    tool_calls: tuple[ToolCall, ...] = ()
    #: a ``"tool"`` message: the call it answers, the tool's name, and whether it failed
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False
    #: an assistant message's thinking, kept apart from its content
    reasoning: str = ""
    #: provider-owned reasoning records that must be sent back unchanged (Anthropic's
    #: signed and redacted thinking blocks); each has a ``"provider"`` key, and other
    #: providers skip them
    reasoning_blocks: tuple[Mapping[str, Any], ...] = ()
    #: images and files sent with a user message
    #: (:class:`~pk_notebook.runtime.attachments.Attachment`)
    attachments: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            from .errors import ConfigurationError

            raise ConfigurationError(
                f"unknown role {self.role!r}: use one of {', '.join(sorted(ROLES))}"
            )
        if not isinstance(self.content, str):
            from .errors import ConfigurationError

            raise ConfigurationError(
                f"message content must be str, got {type(self.content).__name__}"
            )

    @property
    def interrupted(self) -> bool:
        return self.status is not None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "role": self.role,
            "content": self.content,
            "created_at": self.created_at,
        }
        if self.status is not None:
            data["status"] = self.status
        if self.meta:
            data["meta"] = dict(self.meta)
        data.update(self.parts_dict())
        return data

    def parts_dict(self) -> dict[str, Any]:
        """The tool and reasoning fields that are set, JSON-ready (stores keep them together)."""
        data: dict[str, Any] = {}
        if self.tool_calls:
            data["tool_calls"] = [t.to_dict() for t in self.tool_calls]
        if self.tool_call_id is not None:
            data["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            data["name"] = self.name
        if self.is_error:
            data["is_error"] = True
        if self.reasoning:
            data["reasoning"] = self.reasoning
        if self.reasoning_blocks:
            data["reasoning_blocks"] = [dict(b) for b in self.reasoning_blocks]
        if self.attachments:
            data["attachments"] = [a.to_dict() for a in self.attachments]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Message:
        return cls(
            role=data["role"],
            content=data["content"],
            status=data.get("status"),
            created_at=float(data.get("created_at", 0.0)),
            meta=dict(data.get("meta") or {}),
            **parts_from_dict(data),
        )


def parts_from_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`Message` that :meth:`Message.parts_dict` wrote."""
    parts: dict[str, Any] = {}
    calls = data.get("tool_calls")
    if calls:
        parts["tool_calls"] = tuple(ToolCall.from_dict(c) for c in calls)
    for key in ("tool_call_id", "name"):
        if data.get(key) is not None:
            parts[key] = str(data[key])
    if data.get("is_error"):
        parts["is_error"] = True
    if data.get("reasoning"):
        parts["reasoning"] = str(data["reasoning"])
    blocks = data.get("reasoning_blocks")
    if blocks:
        parts["reasoning_blocks"] = tuple(dict(b) for b in blocks)
    files = data.get("attachments")
    if files:
        from .attachments import Attachment

        parts["attachments"] = tuple(Attachment.from_dict(a) for a in files)
    return parts


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the provider reported them, or estimated when it sent none.

    ``estimated`` is ``None`` for counts the provider reported, else the method of
    the estimate (``"chars/4"``, ``"tiktoken"``; see :mod:`pk_notebook.runtime.tokens`).
    A sum is estimated if any part of it is.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    estimated: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.cached_tokens + other.cached_tokens,
            self.estimated or other.estimated,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("reasoning_tokens", 0)),
            int(data.get("cached_tokens", 0)),
            data.get("estimated") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
        }
        if self.estimated:
            data["estimated"] = self.estimated
        return data


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call, assembled from the provider's fragments.

    ``signature`` is an opaque value some providers attach to a call and want
    back with it in the next request (Gemini's ``thoughtSignature``).
    """

    id: str
    name: str
    arguments: str  # the JSON text as the model wrote it
    signature: str = ""

    def to_dict(self) -> dict[str, str]:
        data = {"id": self.id, "name": self.name, "arguments": self.arguments}
        if self.signature:
            data["signature"] = self.signature
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        return cls(
            str(data.get("id") or ""),
            str(data.get("name") or ""),
            str(data.get("arguments") or ""),
            str(data.get("signature") or ""),
        )


# --- wire events: what a provider yields --------------------------------------


@dataclass(slots=True)
class Delta:
    """A piece of the answer as it arrives from the provider.

    ``text`` is visible answer text, ``reasoning`` is thinking text the provider
    exposes separately. An event with neither (a role chunk, a tool-call
    fragment) does not reset the idle timer unless ``activity`` is set.
    """

    text: str = ""
    reasoning: str = ""
    activity: bool = False


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a tool call as it streams in (the name first, then argument pieces).

    ``index`` tells the calls of one answer apart; ``id`` and ``name`` are set on
    the fragment that brings them (usually the first); ``arguments`` is the new
    piece of the arguments' JSON text. The complete calls arrive in
    :attr:`Finish.tool_calls`; these fragments only let a view show them filling in.
    """

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(slots=True)
class Finish:
    """The provider's end marker: the stream ended the way the provider meant it to.

    ``reasoning_blocks`` are the provider's own records of the thinking (with
    their signatures) that it needs back, unchanged, in a follow-up request.
    """

    reason: str | None = None
    usage: Usage | None = None
    tool_calls: Sequence[ToolCall] = ()
    model: str | None = None
    cost: float | None = None
    raw: Mapping[str, Any] | None = None
    reasoning_blocks: Sequence[Mapping[str, Any]] = ()


ProviderEvent = Delta | ToolCallDelta | Finish


# --- tools in a turn ------------------------------------------------------------

ToolEventKind = Literal[
    "start", "arguments", "call", "running", "result", "error", "denied", "stopped"
]


@dataclass(frozen=True, slots=True)
class ToolEvent:
    """Something that happened to one tool call, for a view to show.

    In order: ``"start"`` (the model began a call: its name is known),
    ``"arguments"`` (a piece of its arguments, in ``delta``), ``"call"`` (the call
    is complete), ``"running"`` (the function started), then one of
    ``"result"``, ``"error"`` (the function raised, or its arguments were
    invalid), ``"denied"`` (the approval hook said no) or ``"stopped"`` (the turn
    was stopped while it ran). ``output`` is the full text sent back to the
    model; ``duration`` the seconds the function ran. ``round`` counts the model
    calls of the turn from 1.
    """

    kind: ToolEventKind
    call_id: str
    name: str
    index: int = 0
    round: int = 1
    arguments: str = ""
    delta: str = ""
    output: str | None = None
    duration: float | None = None


ToolStatus = Literal["ok", "error", "denied", "stopped", "abandoned"]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One tool call of a turn and how it ended.

    ``status`` is ``"ok"``, ``"error"`` (the function raised or the arguments did
    not validate), ``"denied"`` (by the approval hook), ``"stopped"`` (an async
    function cancelled by Stop) or ``"abandoned"`` (a sync function's thread left
    running when the turn was stopped). ``output`` is what the model was sent;
    ``value`` is what the function returned (``None`` unless ``"ok"``).
    """

    call: ToolCall
    output: str
    status: ToolStatus = "ok"
    duration: float = 0.0
    value: Any = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "call": self.call.to_dict(),
            "output": self.output,
            "status": self.status,
            "duration": self.duration,
        }


# --- what users see -------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class Chunk:
    """One piece of a streamed answer.

    ``content`` is the new text only (the delta); the accumulated text lives on the
    stream. ``reasoning`` is new thinking text. A chunk with ``tool`` set reports
    a tool call's progress (its ``content`` is empty). The last chunk has
    ``final=True`` and carries the finish reason and usage (of the whole turn);
    its ``content`` is empty.
    """

    content: str
    index: int
    reasoning: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    final: bool = False
    tool: ToolEvent | None = None

    def __init__(
        self,
        content: str,
        index: int,
        reasoning: str = "",
        finish_reason: str | None = None,
        usage: Usage | None = None,
        final: bool = False,
        tool: ToolEvent | None = None,
    ) -> None:
        # One Chunk per chunk: a frozen dataclass's own __init__ goes through
        # object.__setattr__ per field (0.7 us); the slots' own setters take 0.4 us,
        # about 5% of the whole pipeline's cost per chunk. Still frozen afterwards.
        _set_content(self, content)
        _set_index(self, index)
        _set_reasoning(self, reasoning)
        _set_finish_reason(self, finish_reason)
        _set_usage(self, usage)
        _set_final(self, final)
        _set_tool(self, tool)


_set_content = Chunk.__dict__["content"].__set__
_set_index = Chunk.__dict__["index"].__set__
_set_reasoning = Chunk.__dict__["reasoning"].__set__
_set_finish_reason = Chunk.__dict__["finish_reason"].__set__
_set_usage = Chunk.__dict__["usage"].__set__
_set_final = Chunk.__dict__["final"].__set__
_set_tool = Chunk.__dict__["tool"].__set__


@dataclass(frozen=True, slots=True)
class Result:
    """Everything known about one finished (or interrupted) turn.

    A turn with tools spans several model calls: ``text`` and ``reasoning`` are
    everything shown, ``usage`` and ``cost`` add up every call, ``tool_calls``
    are all the calls the model made and ``tool_results`` how each one ended,
    ``messages`` the whole conversation including the turn's tool messages.
    """

    text: str
    status: StreamStatus
    messages: tuple[Message, ...] = ()
    usage: Usage | None = None
    cost: float | None = None
    finish_reason: str | None = None
    model: str | None = None
    provider: str | None = None
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()
    model_calls: int = 1
    #: with ``schema=``: the validated answer, and how the provider was asked for it
    parsed: Any = field(default=None, compare=False)
    schema_mode: str | None = None
    chunks: int = 0
    attempts: int = 1
    time_to_first_chunk: float | None = None
    duration: float = 0.0
    session_id: str | None = None
    warnings: tuple[str, ...] = ()
    error: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return self.status is StreamStatus.FINISHED

    @property
    def tokens_per_second(self) -> float | None:
        if self.usage is None or not self.duration:
            return None
        return self.usage.output_tokens / self.duration

    def raise_for_status(self) -> Result:
        """Raise the error that ended the call, if it did not finish; return self if it did."""
        if self.complete:
            return self
        if self.error is not None:
            raise self.error
        from .errors import StreamCancelled

        raise StreamCancelled("the stream was stopped before it finished", partial_text=self.text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "status": self.status.value,
            "finish_reason": self.finish_reason,
            "usage": self.usage.to_dict() if self.usage else None,
            "cost": self.cost,
            "model": self.model,
            "provider": self.provider,
            "reasoning": self.reasoning,
            "tool_calls": [t.to_dict() for t in self.tool_calls],
            "tool_results": [t.to_dict() for t in self.tool_results],
            "model_calls": self.model_calls,
            "parsed": _jsonable(self.parsed),
            "schema_mode": self.schema_mode,
            "chunks": self.chunks,
            "attempts": self.attempts,
            "time_to_first_chunk": self.time_to_first_chunk,
            "duration": self.duration,
            "session_id": self.session_id,
            "warnings": list(self.warnings),
            "error": _error_dict(self.error),
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool, list, dict)):
        return value
    try:
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value)
    except Exception:
        return repr(value)


def _error_dict(error: BaseException | None) -> dict[str, Any] | None:
    if error is None:
        return None
    to_dict = getattr(error, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    return {"type": type(error).__name__, "message": str(error)}


# --- configuration --------------------------------------------------------------


class _Unset:
    """Sentinel type: "not given" is different from ``None`` ("explicitly nothing")."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """Sampling options sent with each request.

    ``None`` means "the provider's default". Values are checked here, once, so a
    typo fails at construction and not halfway through a notebook.
    """

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        from .errors import ConfigurationError

        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int) or self.max_tokens < 1
        ):
            raise ConfigurationError(
                f"max_tokens must be a positive integer, got {self.max_tokens!r}"
            )
        if self.temperature is not None and not 0.0 <= float(self.temperature) <= 2.0:
            raise ConfigurationError(
                f"temperature must be between 0 and 2, got {self.temperature!r}"
            )
        if self.top_p is not None and not 0.0 < float(self.top_p) <= 1.0:
            raise ConfigurationError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.stop is not None and not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))

    def merged(self, override: ProviderConfig | None) -> ProviderConfig:
        """Return this config with every field ``override`` sets taken from it."""
        if override is None:
            return self
        changes = {
            name: getattr(override, name)
            for name in self.__dataclass_fields__
            if getattr(override, name) is not None
        }
        return replace(self, **changes) if changes else self


@dataclass(slots=True)
class CallInfo:
    """Facts about one call that the provider link learns and the stream reports.

    One object is shared by every copy of a request (:meth:`Request.replace`
    keeps it), so what :class:`~pk_notebook.runtime.middleware.ProviderMiddleware`
    writes here reaches the :class:`Result` whichever copy it saw.
    """

    provider: str | None = None
    model: str | None = None
    attempts: int = 0
    #: how the provider asked for structured output (``schema=``): ``"json_schema"``,
    #: ``"tool"``, ``"prompt"``... set by the provider when it builds the request
    schema_mode: str | None = None


@dataclass(slots=True)
class Request:
    """What the middleware chain passes down to the provider.

    Middleware changes a request with :meth:`replace`. ``call`` holds the typed
    facts the library itself tracks (provider, model, attempts); ``state`` is a
    dict for your own middleware's per-call data. Both are shared by every copy
    of the request, so they survive replacement without living on a middleware
    instance (which every concurrent call shares).
    """

    messages: tuple[Message, ...]
    config: ProviderConfig
    session_id: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    call: CallInfo = field(default_factory=CallInfo)
    #: the tools the model may call (:class:`~pk_notebook.runtime.tools.ToolSpec`:
    #: name, description, JSON-schema ``parameters``)
    tools: tuple[Any, ...] = ()
    #: ``None`` (the provider's default: the model decides), ``"auto"``, ``"none"``
    #: (answer in text; sent after the last allowed tool round) or ``"required"``
    tool_choice: str | None = None
    #: the shape the answer must have (:class:`~pk_notebook.runtime.schema.OutputSchema`)
    schema: Any = None

    def replace(self, **changes: Any) -> Request:
        return replace(self, **changes)

    @property
    def prompt(self) -> str:
        """The content of the last user message (what scenario matching looks at)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""
