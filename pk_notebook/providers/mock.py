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

A scenario can also think (``reasoning``) and use tools: ``tool_calls`` makes it
call them (streamed as :class:`ToolCallDelta` fragments), and ``answer`` is what
it says once the results come back, with ``{result}`` in it (see
:class:`Scenario`). The demo set's ``get_weather`` scenario shows both offline.

**Structured output** (``schema=``): the mock answers with a valid object for the
schema, made by :func:`example_for_schema` (deterministic: the same schema gives
the same object) and streamed as JSON text in token-sized pieces;
``result.schema_mode`` is ``"mock"``. Only scenarios that name the schema
(``schema: Trip``, or ``"*"`` for any) answer a structured request, so the prose
of the demo set never does; such a scenario's ``response`` is the JSON to send
(templated like any answer): use it to script an exact object, or an invalid
one to rehearse a validation error. Without a ``response`` it sends the generated
object, and with ``finish_reason: length`` only the first half of it, to rehearse
an answer cut short by the token limit (so does a small ``max_tokens``).

**Attachments**: the mock takes every kind. Its default answer ends with what it
received (``I received 1 image (figure.png, image/png, 41 kB).``), and a scenario's
answer can say it with ``{attachments}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
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
from ..runtime.types import (
    Delta,
    Finish,
    Message,
    ProviderEvent,
    Request,
    ToolCall,
    ToolCallDelta,
    Usage,
)
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
class ScriptedCall:
    """A tool call a scenario makes: the tool's ``name`` and its ``arguments``.

    ``arguments`` is a mapping (its string values are templated like the answer,
    then it is written as JSON) or a JSON text (templated as it is).
    """

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)

    @classmethod
    def from_value(cls, value: ScriptedCall | Mapping[str, Any], scenario: str) -> ScriptedCall:
        if isinstance(value, ScriptedCall):
            return value
        if not isinstance(value, Mapping):
            raise ConfigurationError(
                f"scenario {scenario!r}: each of tool_calls is a mapping with 'name' and "
                f"'arguments', got {value!r}"
            )
        extra = set(value) - {"name", "arguments"}
        name = value.get("name")
        arguments = value.get("arguments", {})
        if extra or not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"scenario {scenario!r}: a tool call needs a 'name' and may have 'arguments' "
                f"(nothing else), got {dict(value)!r}"
            )
        if not isinstance(arguments, (Mapping, str)):
            raise ConfigurationError(
                f"scenario {scenario!r}: the arguments of {name} must be a mapping or a JSON "
                f"text, got {type(arguments).__name__}"
            )
        return cls(name, arguments)

    def render(self, values: Mapping[str, str]) -> str:
        """The arguments' JSON text, with ``{name}`` fields filled in."""
        if isinstance(self.arguments, str):
            return _SafeFormatter().format(self.arguments, **values)
        return json.dumps(_fill(self.arguments, values), ensure_ascii=False)


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return _SafeFormatter().format(value, **values)
    if isinstance(value, Mapping):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fill(v, values) for v in value]
    return value


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
    ``reasoning`` is thinking streamed before the answer (``Delta(reasoning=...)``).

    **Tools.** With ``tool_calls`` (a list of ``{"name": ..., "arguments": {...}}``,
    whose string values are templated like ``response``) the mock answers the
    prompt by calling those tools, all in one answer (parallel calls), after the
    ``response`` text if there is any; the finish reason is ``"tool_calls"``.
    When the conversation then ends with the tool results (``role="tool"``
    messages, what the pipeline sends back), the same scenario answers with
    ``answer`` (thinking: ``answer_reasoning``), which may also use:

    - ``{result}``: the output of the latest tool result of the turn;
    - ``{result[NAME]}``: the latest output of the tool called NAME;
    - ``{result[N]}``: the N-th (from 0) tool output of the turn, in order;
    - ``{results}``: every tool output of the turn, one a line.

    The follow-up is always text, unless ``rounds`` (default 1) asks for the
    same calls again: the scenario calls its tools ``rounds`` times in one turn
    before answering (to reach a pipeline's ``max_tool_rounds``).

    The mock calls only tools the request offers (``request.tools``), and none
    when ``request.tool_choice == "none"``; then it answers in text instead:
    ``answer`` if the turn already has tool results, else ``without_tools`` (or
    ``response``, or ``answer`` with no results, whichever is set first).

    **Structured output.** ``schema`` is the name of the schema (``schema=`` on the
    call: a pydantic model's class name, a dict schema's ``title``) this scenario
    answers, or ``"*"`` for any. A scenario with ``schema`` answers only structured
    requests for that schema, one without answers only plain ones. Its text
    (``response``, or ``answer`` after tools) is the JSON sent; left empty, the
    mock sends a valid generated object (:func:`example_for_schema`), cut in half
    when ``finish_reason`` is ``"length"``.
    """

    response: str = ""
    match: str | None = None
    turn: int | None = None
    name: str | None = None
    fault: Fault | None = None
    finish_reason: str = "stop"
    reasoning: str = ""
    recall: str | None = None
    tool_calls: tuple[ScriptedCall, ...] = ()
    answer: str | None = None
    answer_reasoning: str = ""
    rounds: int = 1
    without_tools: str | None = None
    schema: str | None = None

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
        label = self.name or self.match or "?"
        calls = self.tool_calls
        if isinstance(calls, (str, bytes)) or not isinstance(calls, Iterable):
            raise ConfigurationError(f"scenario {label!r}: tool_calls must be a list")
        object.__setattr__(
            self, "tool_calls", tuple(ScriptedCall.from_value(c, label) for c in calls)
        )
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigurationError(
                f"scenario {label!r}: rounds must be a positive integer, got {self.rounds!r}"
            )

    def answers(self, schema: Any) -> bool:
        """Whether this scenario answers a request for ``schema`` (None: a plain request)."""
        if schema is None:
            return self.schema is None
        return self.schema is not None and self.schema in ("*", getattr(schema, "name", None))

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
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ConfigurationError(
                f"scenario {data.get('name', '?')!r} has unknown keys {sorted(extra)}; "
                f"allowed: {sorted(known)}"
            )
        if "response" not in data and not data.get("tool_calls") and not data.get("schema"):
            raise ConfigurationError(f"scenario {data.get('name', '?')!r} has no 'response'")
        values = dict(data)
        if values.get("fault") is not None:
            values["fault"] = Fault.from_dict(values["fault"])
        if values.get("tool_calls") is None:
            values.pop("tool_calls", None)
        return cls(**values)


def _groups(found: re.Match[str]) -> dict[str, str]:
    return {k: v.strip() for k, v in found.groupdict().items() if v is not None}


class _SafeFormatter:
    """``str.format`` that leaves unknown ``{fields}`` (and code in answers) alone.

    ``keyed`` fills ``{field[key]}`` (the tool results by name or position).
    """

    _FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?:\[([^\[\]{}]+)\])?\}")

    def format(self, template: str, **values: str) -> str:
        return self.fill(template, values)

    def fill(
        self,
        template: str,
        values: Mapping[str, str],
        keyed: Mapping[str, Mapping[str, str]] | None = None,
    ) -> str:
        def fill(found: re.Match[str]) -> str:
            name, key = found.group(1, 2)
            if key is None:
                return values.get(name, found.group(0))
            table = (keyed or {}).get(name)
            return table.get(key.strip(), found.group(0)) if table else found.group(0)

        return self._FIELD.sub(fill, template)


OFFLINE_ANSWER = (
    "**[offline mock answer]** No scripted scenario matches this prompt, so here is a "
    "canned reply. You asked:\n\n> {excerpt}\n\n"
    "To get real answers, choose a provider with a key, for example "
    "`%stream config --provider openai:gpt-4o-mini` after setting `OPENAI_API_KEY`."
)


@dataclass(frozen=True)
class MockPlan:
    """What the mock answers one request with (see :meth:`MockProvider.plan`)."""

    scenario: Scenario | None
    text: str
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    #: the text is an object generated from the request's schema
    generated: bool = False


def _plan(scenario: Scenario, request: Request, values: dict[str, str]) -> MockPlan:
    """The scenario's answer to this point of the turn: its calls, or the follow-up text."""
    fmt = _SafeFormatter()
    start = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
    turn = request.messages[start + 1 :]
    rounds_done = sum(1 for m in turn if m.role == "assistant" and m.tool_calls)
    results = [m for m in turn if m.role == "tool"]
    follow_up = bool(turn) and turn[-1].role == "tool"
    offered = {_tool_name(t) for t in request.tools}
    may_call = (
        bool(scenario.tool_calls)
        and request.tool_choice != "none"
        and all(c.name in offered for c in scenario.tool_calls)
    )
    if may_call and (not follow_up or rounds_done < scenario.rounds):
        earlier = sum(len(m.tool_calls) for m in request.messages if m.role == "assistant")
        calls = tuple(
            ToolCall(f"call_{earlier + i}", c.name, c.render(values))
            for i, c in enumerate(scenario.tool_calls, 1)
        )
        if follow_up:  # another round of the same calls
            return MockPlan(scenario, "", "", calls)
        text = scenario.render(values["prompt"], values)
        return MockPlan(scenario, text, fmt.format(scenario.reasoning, **values), calls)
    if scenario.tool_calls and results:
        fallback = "" if scenario.schema else "{results}"  # "": a generated object
        template = scenario.answer if scenario.answer is not None else fallback
        reasoning = scenario.answer_reasoning
    elif scenario.tool_calls:  # its tools are not offered, or tool_choice is "none"
        template = scenario.without_tools or scenario.response or scenario.answer or ""
        reasoning = scenario.reasoning
    else:
        template, reasoning = scenario.response, scenario.reasoning
    filled = {**values, **_results(turn)}
    keyed = {"result": _result_table(turn)}
    return MockPlan(scenario, fmt.fill(template, filled, keyed), fmt.fill(reasoning, filled, keyed))


def _tool_name(spec: Any) -> str:
    if isinstance(spec, Mapping):
        return str(spec.get("name") or (spec.get("function") or {}).get("name") or "")
    return str(getattr(spec, "name", ""))


def _call_names(turn: Sequence[Message]) -> dict[str, str]:
    return {c.id: c.name for m in turn for c in m.tool_calls}


def _results(turn: Sequence[Message]) -> dict[str, str]:
    outputs = [m.content for m in turn if m.role == "tool"]
    if not outputs:
        return {}
    return {"result": outputs[-1], "results": "\n".join(outputs)}


def _result_table(turn: Sequence[Message]) -> dict[str, str]:
    """``{result[NAME]}`` (the latest output of that tool) and ``{result[N]}`` (the N-th)."""
    names = _call_names(turn)
    table: dict[str, str] = {}
    position = 0
    for message in turn:
        if message.role != "tool":
            continue
        name = message.name or names.get(message.tool_call_id or "", "")
        if name:
            table[name] = message.content
        table[str(position)] = message.content
        position += 1
    return table


def _argument_pieces(arguments: str) -> list[str]:
    """Cut a call's JSON arguments into pieces of about four characters, as models stream them."""
    return [arguments[i : i + 4] for i in range(0, len(arguments), 4)] or [""]


def _latest_attachments(request: Request) -> tuple[Any, ...]:
    for message in reversed(request.messages):
        if message.role == "user":
            return tuple(message.attachments)
    return ()


def describe_received(files: Sequence[Any]) -> str:
    """``I received 1 image (figure.png, image/png, 41 kB).`` ("" for no files)."""
    if not files:
        return ""
    groups = []
    for kind, plural, chosen in (
        ("image", "images", [f for f in files if f.is_image]),
        ("PDF", "PDFs", [f for f in files if not f.is_image]),
    ):
        if chosen:
            listed = "; ".join(_received(f) for f in chosen)
            groups.append(f"{len(chosen)} {kind if len(chosen) == 1 else plural} ({listed})")
    return "I received " + " and ".join(groups) + "."


def _received(item: Any) -> str:
    label = item.name or "attachment"
    return f"{label}, {item.describe()[len(label) + 2 : -1]}"


# --- objects for a schema ----------------------------------------------------------

#: how deep the generator follows nested (or recursive) schemas before it stops
EXAMPLE_MAX_DEPTH = 8
_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T09:00:00Z",
    "time": "09:00:00",
    "email": "{word}@example.com",
    "uri": "https://example.com/{word}",
    "url": "https://example.com/{word}",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example_for_schema(schema: Mapping[str, Any]) -> Any:
    """A small, deterministic value valid for the JSON ``schema`` (what the mock answers).

    It covers what models are asked for: ``object`` (every property, in order),
    ``array`` (two items, or ``minItems``/``maxItems`` if they say otherwise;
    ``prefixItems`` one each), ``string`` (a word from the property's name, e.g.
    ``"city"``, numbered in a list, ``"sights 1"``; a few ``format`` values such as
    ``date`` and ``email``; padded to ``minLength``), ``integer``/``number`` (1 and
    1.5, moved inside ``minimum``/``maximum``), ``boolean`` (true), ``null``,
    ``enum``/``const`` (the first value), ``anyOf``/``oneOf`` (the first branch),
    ``allOf`` (merged), and ``$ref`` into ``$defs``/``definitions``. ``pattern``
    is not followed. Past :data:`EXAMPLE_MAX_DEPTH` levels (a recursive schema),
    optional parts are left out and lists are empty.
    """
    return _Example(schema).value(schema, "value", 0)


class _Example:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def resolve(self, ref: str) -> Mapping[str, Any]:
        node: Any = self.root
        if not ref.startswith("#"):
            return {}
        for key in ref[1:].strip("/").split("/") if ref != "#" else ():
            key = key.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                return {}
            node = node[key]
        return node if isinstance(node, Mapping) else {}

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if depth > 3 * EXAMPLE_MAX_DEPTH:  # a schema that requires itself: give up there
            return None
        if not isinstance(schema, Mapping):
            return name if schema is not False else None
        if "$ref" in schema:
            target = self.resolve(str(schema["$ref"]))
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**target, **rest}, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        if "default" in schema and depth > EXAMPLE_MAX_DEPTH:
            return schema["default"]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if branches:
                if depth > EXAMPLE_MAX_DEPTH and {"type": "null"} in branches:
                    return None
                return self.value(branches[0], name, depth + 1)
        if schema.get("allOf"):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                if isinstance(part, Mapping) and "$ref" in part:
                    part = self.resolve(str(part["$ref"]))
                if isinstance(part, Mapping):
                    merged.update(part)
            rest = {k: v for k, v in schema.items() if k != "allOf"}
            return self.value({**merged, **rest}, name, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"] or ["null"]
            kind = kinds[0]
        if kind is None:
            if "properties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                return name
        if kind == "object":
            required = set(schema.get("required", ()))
            properties = schema.get("properties") or {}
            return {
                key: self.value(sub, key, depth + 1)
                for key, sub in properties.items()
                if depth <= EXAMPLE_MAX_DEPTH or key in required
            }
        if kind == "array":
            return self.array(schema, name, depth)
        if kind == "string":
            return _string(schema, name)
        if kind in ("integer", "number"):
            return _number(schema, kind == "integer")
        if kind == "boolean":
            return True
        return None

    def array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if prefix:
            return [self.value(sub, f"{name} {i}", depth + 1) for i, sub in enumerate(prefix, 1)]
        count = 2 if depth <= EXAMPLE_MAX_DEPTH else 0
        count = max(count, int(schema.get("minItems", 0)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        items = schema.get("items", {})
        return [self.value(items, f"{name} {i}", depth + 1) for i in range(1, count + 1)]


def _string(schema: Mapping[str, Any], name: str) -> str:
    word = name.replace("_", " ").strip() or "text"
    fmt = _FORMATS.get(str(schema.get("format", "")))
    text = fmt.format(word=word.replace(" ", "-")) if fmt else word
    text = text.ljust(int(schema.get("minLength", 0)), "x")
    if "maxLength" in schema:
        text = text[: int(schema["maxLength"])]
    return text


def _number(schema: Mapping[str, Any], integer: bool) -> int | float:
    value: float = 1 if integer else 1.5
    step = 1 if integer else 0.5
    low = schema.get("minimum")
    if low is None and "exclusiveMinimum" in schema:
        low = schema["exclusiveMinimum"] + step
    high = schema.get("maximum")
    if high is None and "exclusiveMaximum" in schema:
        high = schema["exclusiveMaximum"] - step
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    if integer:
        return int(value) if float(value).is_integer() else int(value) + 1
    return value


def _example_text(schema: Any) -> str:
    """The generated object for an :class:`OutputSchema`, as the JSON the mock streams."""
    return json.dumps(example_for_schema(schema.json_schema), ensure_ascii=False)


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
        usage: bool = True,
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
        # usage=False plays a server that reports none (Ollama's streams): the pipeline
        # then estimates it, labelled (runtime/tokens.py)
        self.usage = usage
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
        plan = self.plan(request)
        return plan.scenario, plan.text

    def plan(self, request: Request) -> MockPlan:
        """What the mock will answer ``request`` with: text, reasoning and tool calls."""
        prompt = request.prompt
        asked = [m.content for m in request.messages if m.role == "user"]
        turn = len(asked)
        schema = request.schema
        received = describe_received(_latest_attachments(request))
        for scenario in self.scenarios:
            if not scenario.answers(schema):
                continue
            groups = scenario.matches(prompt, turn, asked[:-1])
            if groups is not None:
                values = {"prompt": prompt.strip(), "attachments": received, **groups}
                plan = _plan(scenario, request, values)
                if schema is not None and not plan.tool_calls and not plan.text.strip():
                    return replace(plan, text=_example_text(schema), generated=True)
                return plan
        if schema is not None:
            return MockPlan(None, _example_text(schema), generated=True)
        excerpt = " ".join(prompt.split())
        if len(excerpt) > 160:
            excerpt = excerpt[:157] + "..."
        text = _SafeFormatter().format(
            self.default, excerpt=excerpt or "(empty)", prompt=prompt, attachments=received
        )
        if received and "{attachments}" not in self.default:
            text = f"{text}\n\n{received}"
        return MockPlan(None, text)

    async def stream(self, request: Request) -> AsyncIterator[ProviderEvent]:
        plan = self.plan(request)
        scenario = plan.scenario
        if request.schema is not None:
            request.call.schema_mode = "mock"
        fault = (scenario.fault if scenario and scenario.fault else None) or self.fault
        call = MockCall(request, time.monotonic())
        self.calls.append(call)
        pieces = split_tokens(plan.text)
        thinking = split_tokens(plan.reasoning)
        calls = plan.tool_calls
        max_tokens = request.config.max_tokens
        finish_reason = "tool_calls" if calls else scenario.finish_reason if scenario else "stop"
        if plan.generated and finish_reason in ("length", "max_tokens"):
            pieces = pieces[: len(pieces) // 2]  # rehearse JSON cut short by the token limit
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces = pieces[:max_tokens]
            finish_reason = "length"
            calls = ()  # cut off before the calls, as a real model would be
        output_tokens = len(pieces)
        delay = self.chunk_delay
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
            for index, piece in enumerate(thinking):
                if index and delay:
                    await asyncio.sleep(delay)
                yield Delta(reasoning=piece)
            for index, piece in enumerate(pieces):
                if fault is not None and index == fault.after:
                    await self._fail(fault, call)
                    if fault.kind == "truncate":
                        return
                if (index or thinking) and delay:
                    await asyncio.sleep(delay)
                call.chunks_sent += 1
                yield Delta(piece)
            sent = bool(thinking or pieces)
            for index, tool_call in enumerate(calls):
                if sent and delay:
                    await asyncio.sleep(delay)
                sent = True
                yield ToolCallDelta(index, id=tool_call.id, name=tool_call.name)
                for piece in _argument_pieces(tool_call.arguments):
                    if delay:
                        await asyncio.sleep(delay)
                    output_tokens += 1
                    yield ToolCallDelta(index, arguments=piece)
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
                    output_tokens=output_tokens,
                    reasoning_tokens=len(thinking),
                )
                if self.usage
                else None,
                tool_calls=calls,
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
