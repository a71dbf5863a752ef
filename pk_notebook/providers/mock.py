"""The offline provider: scripted, deterministic, realistic enough to learn on.

Answers come from :class:`Scenario` objects matched on the prompt (a regular
expression, case-insensitive, whose named groups can be used in the answer) or
on the turn number (the count of user messages in the conversation). A prompt
nothing matches gets a clearly labelled offline answer, never silence.

The text is cut into token-sized pieces (a word of up to 8 letters, or one
punctuation mark, with the spaces before it), sent after ``first_chunk_delay``
and then every ``chunk_delay`` seconds, and usage is estimated the same way a
real provider would count it. A :class:`Fault` rehearses what real servers do
wrong: an error after N chunks, a stall, a cut connection, rate limiting.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime.errors import (
    ConfigurationError,
    NetworkError,
    ProviderError,
    RateLimitError,
    ServerError,
)
from ..runtime.store import estimate_tokens
from ..runtime.types import Delta, Finish, ProviderEvent, Request, Usage
from .faults import MOCK_FAULTS, canonical_fault

_TOKEN = re.compile(r"\s*\w{1,8}|\s*[^\w\s]|\s+")

FAULT_KINDS = MOCK_FAULTS  # the shared vocabulary (faults.py), the in-process part


def split_tokens(text: str) -> list[str]:
    """Cut text into token-sized pieces whose concatenation is exactly ``text``."""
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class Fault:
    """Something to go wrong, to rehearse error handling.

    kind:
        ``"error"``: an in-stream provider error after ``after`` chunks.
        ``"stall"``: stop sending after ``after`` chunks (an idle timeout catches it).
        ``"truncate"``: end the stream after ``after`` chunks without the end marker.
        ``"disconnect"``: a dropped connection after ``after`` chunks.
        ``"rate_limit"`` / ``"server_error"``: fail before the first chunk (HTTP 429 /
        503), ``times`` times in a row, then answer; the pipeline's retry recovers.
    """

    kind: str
    after: int = 0
    times: int = 1
    retry_after: float | None = 0.0
    message: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", canonical_fault(self.kind, MOCK_FAULTS))
        except ValueError as exc:
            raise ConfigurationError(f"{exc} (the fake HTTP server plays the others)") from None
        if self.after < 0 or self.times < 1:
            raise ConfigurationError("Fault.after must be >= 0 and Fault.times >= 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str) -> Fault:
        if isinstance(data, str):
            return cls(kind=data)
        return cls(**dict(data))


@dataclass(frozen=True)
class Scenario:
    """One scripted answer and when to give it.

    ``match`` is a regular expression searched in the prompt (case-insensitive);
    ``turn`` is the 1-based number of the user message in the conversation. With
    both, both must hold; with neither, the scenario matches every prompt.
    ``response`` may use ``{name}`` for the match's named groups and ``{prompt}``.
    ``recall`` is a regular expression searched in the *earlier* user messages of the
    conversation (newest first); the scenario matches only if it is found, and its
    named groups fill the answer too. That is how the demo shows session memory.
    """

    response: str
    match: str | None = None
    turn: int | None = None
    name: str | None = None
    fault: Fault | None = None
    finish_reason: str = "stop"
    reasoning: str = ""
    recall: str | None = None

    def __post_init__(self) -> None:
        for attr in ("match", "recall"):
            source = getattr(self, attr)
            try:
                compiled = re.compile(source, re.IGNORECASE | re.DOTALL) if source else None
            except re.error as exc:
                raise ConfigurationError(
                    f"scenario {self.name or source!r}: bad regex: {exc}"
                ) from exc
            object.__setattr__(self, f"_{attr}_re", compiled)

    def matches(self, prompt: str, turn: int, earlier: Sequence[str] = ()) -> dict[str, str] | None:
        if self.turn is not None and self.turn != turn:
            return None
        groups: dict[str, str] = {}
        recall: re.Pattern[str] | None = self._recall_re  # type: ignore[attr-defined]
        if recall is not None:
            found = next((m for m in map(recall.search, reversed(earlier)) if m), None)
            if found is None:
                return None
            groups.update(_groups(found))
        pattern: re.Pattern[str] | None = self._match_re  # type: ignore[attr-defined]
        if pattern is not None:
            found = pattern.search(prompt)
            if found is None:
                return None
            groups.update(_groups(found))
        return groups

    def render(self, prompt: str, groups: Mapping[str, str]) -> str:
        values = {"prompt": prompt.strip(), **groups}
        return _SafeFormatter().format(self.response, **values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scenario:
        known = {
            "response",
            "match",
            "turn",
            "name",
            "fault",
            "finish_reason",
            "reasoning",
            "recall",
        }
        extra = set(data) - known
        if extra:
            raise ConfigurationError(
                f"scenario {data.get('name', '?')!r} has unknown keys {sorted(extra)}; "
                f"allowed: {sorted(known)}"
            )
        if "response" not in data:
            raise ConfigurationError(f"scenario {data.get('name', '?')!r} has no 'response'")
        values = dict(data)
        if values.get("fault") is not None:
            values["fault"] = Fault.from_dict(values["fault"])
        return cls(**values)


def _groups(found: re.Match[str]) -> dict[str, str]:
    return {k: v.strip() for k, v in found.groupdict().items() if v is not None}


class _SafeFormatter:
    """``str.format`` that leaves unknown ``{fields}`` (and code in answers) alone."""

    _FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

    def format(self, template: str, **values: str) -> str:
        return self._FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), template)


OFFLINE_ANSWER = (
    "**[offline mock answer]** No scripted scenario matches this prompt, so here is a "
    "canned reply. You asked:\n\n> {excerpt}\n\n"
    "To get real answers, choose a provider with a key, for example "
    "`%stream config --provider openai:gpt-4o-mini` after setting `OPENAI_API_KEY`."
)


@dataclass
class MockCall:
    """What the mock saw of one call, for tests: the request and how the stream ended."""

    request: Request
    started: float
    ended: float | None = None
    outcome: str = "streaming"  # finished | closed | error | truncated | stalled
    chunks_sent: int = 0


class MockProvider:
    """The offline, scripted provider. ``MockProvider.demo()`` is the tutorials' default."""

    name = "mock"

    def __init__(
        self,
        scenarios: Iterable[Scenario | Mapping[str, Any]] = (),
        *,
        model: str = "mock-1",
        first_chunk_delay: float = 0.0,
        chunk_delay: float = 0.0,
        fault: Fault | None = None,
        default: str | None = None,
    ) -> None:
        self.scenarios: list[Scenario] = [
            s if isinstance(s, Scenario) else Scenario.from_dict(s) for s in scenarios
        ]
        self.model = model
        if first_chunk_delay < 0 or chunk_delay < 0:
            raise ConfigurationError("mock delays must not be negative")
        self.first_chunk_delay = first_chunk_delay
        self.chunk_delay = chunk_delay
        self.fault = fault
        self.default = default or OFFLINE_ANSWER
        self.calls: list[MockCall] = []
        self._fault_counts: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"MockProvider(model={self.model!r}, scenarios={len(self.scenarios)})"

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def demo(cls, **options: Any) -> MockProvider:
        """The built-in demo set: haiku, stories, day plans, lists, code, JSON, tables.

        Streams at a readable pace by default (``chunk_delay=0.02``); pass
        ``chunk_delay=0`` for tests.
        """
        options.setdefault("chunk_delay", 0.02)
        options.setdefault("first_chunk_delay", 0.05)
        options.setdefault("model", "demo")
        return cls.from_file(Path(__file__).with_name("demo_scenarios.yaml"), **options)

    @classmethod
    def scripted(cls, *responses: str, **options: Any) -> MockProvider:
        """Answer the n-th user turn of each conversation with ``responses[n-1]``."""
        return cls([Scenario(r, turn=i) for i, r in enumerate(responses, 1)], **options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> MockProvider:
        """Load scenarios from YAML or JSON: a list, or ``{"scenarios": [...], "default": ...}``."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read the scenario file {path}: {exc}") from exc
        if path.suffix.lower() == ".json":
            data: Any = json.loads(text)
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigurationError(f"{path} is not valid YAML: {exc}") from exc
        if isinstance(data, Mapping):
            options.setdefault("default", data.get("default"))
            items = data.get("scenarios", [])
        else:
            items = data
        if not isinstance(items, list):
            raise ConfigurationError(f"{path}: expected a list of scenarios")
        return cls(items, **options)

    # --- the provider interface -------------------------------------------------------

    def pick(self, request: Request) -> tuple[Scenario | None, str]:
        """The scenario that answers ``request`` and the rendered answer text."""
        prompt = request.prompt
        asked = [m.content for m in request.messages if m.role == "user"]
        turn = len(asked)
        for scenario in self.scenarios:
            groups = scenario.matches(prompt, turn, asked[:-1])
            if groups is not None:
                return scenario, scenario.render(prompt, groups)
        excerpt = " ".join(prompt.split())
        if len(excerpt) > 160:
            excerpt = excerpt[:157] + "..."
        return None, _SafeFormatter().format(
            self.default, excerpt=excerpt or "(empty)", prompt=prompt
        )

    async def stream(self, request: Request) -> AsyncIterator[ProviderEvent]:
        scenario, text = self.pick(request)
        fault = (scenario.fault if scenario and scenario.fault else None) or self.fault
        call = MockCall(request, time.monotonic())
        self.calls.append(call)
        pieces = split_tokens(text)
        max_tokens = request.config.max_tokens
        finish_reason = scenario.finish_reason if scenario else "stop"
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces = pieces[:max_tokens]
            finish_reason = "length"
        try:
            if fault is not None and fault.kind in ("rate_limit", "server_error"):
                key = id(scenario) if scenario else 0
                seen = self._fault_counts.get(key, 0)
                if seen < fault.times:
                    self._fault_counts[key] = seen + 1
                    call.outcome = "error"
                    if fault.kind == "rate_limit":
                        raise RateLimitError(
                            fault.message or "mock: rate limit reached (rehearsal)",
                            retry_after=fault.retry_after,
                            provider=self.name,
                        )
                    raise ServerError(
                        fault.message or "mock: server overloaded (rehearsal)",
                        status_code=503,
                        provider=self.name,
                    )
            if self.first_chunk_delay:
                await asyncio.sleep(self.first_chunk_delay)
            if scenario and scenario.reasoning:
                for piece in split_tokens(scenario.reasoning):
                    yield Delta(reasoning=piece)
            for index, piece in enumerate(pieces):
                if fault is not None and index == fault.after:
                    await self._fail(fault, call)
                    if fault.kind == "truncate":
                        return
                if index and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                call.chunks_sent += 1
                yield Delta(piece)
            if (
                fault is not None
                and fault.after >= len(pieces)
                and fault.kind not in ("rate_limit", "server_error")
            ):
                await self._fail(fault, call)
                if fault.kind == "truncate":
                    return
            call.outcome = "finished"
            yield Finish(
                reason=finish_reason,
                usage=Usage(
                    input_tokens=sum(estimate_tokens(m.content) for m in request.messages),
                    output_tokens=len(pieces),
                    reasoning_tokens=len(split_tokens(scenario.reasoning))
                    if scenario and scenario.reasoning
                    else 0,
                ),
                model=request.config.model or self.model,
            )
        finally:
            call.ended = time.monotonic()
            if call.outcome == "streaming":
                call.outcome = "closed"

    async def _fail(self, fault: Fault, call: MockCall) -> None:
        if fault.kind == "error":
            call.outcome = "error"
            raise ProviderError(
                fault.message or "mock: the model failed mid-answer (rehearsal)",
                provider=self.name,
                code="mock_error",
            )
        if fault.kind == "disconnect":
            call.outcome = "error"
            raise NetworkError(
                fault.message or "mock: the connection dropped mid-stream (rehearsal)"
            )
        if fault.kind == "truncate":
            call.outcome = "truncated"
            return
        if fault.kind == "stall":
            call.outcome = "stalled"
            await asyncio.Event().wait()  # until cancelled: the idle timeout's job

    async def aclose(self) -> None:
        return None

    @property
    def active(self) -> int:
        """How many streams are open right now."""
        return sum(1 for c in self.calls if c.ended is None)

    def reset(self) -> None:
        """Forget recorded calls and how often each fault has fired."""
        self.calls.clear()
        self._fault_counts.clear()
