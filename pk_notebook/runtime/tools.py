"""Tools: plain Python functions a model can call during a turn.

::

    def get_weather(city: str, unit: Literal["C", "F"] = "C") -> str:
        \"\"\"Current weather for a city.

        Args:
            city: the city's name, e.g. "Paris".
        \"\"\"

    result = await pipe.execute("user", "Umbrella in Paris?", tools=[get_weather])

The JSON schema the model sees is built by pydantic from the type hints, and
the descriptions come from the docstring (Google, NumPy or reST style, parsed by
``docstring_parser``): nothing here maps types by hand, so anything pydantic can
describe works (``Literal``, enums, dataclasses, ``TypedDict``, pydantic models,
``list[...]``, ``Optional``). A function it cannot describe is refused when the
tool is made, with the parameter named. The model's arguments are validated by
the same pydantic model before the function runs; invalid arguments go back to
the model as a tool error, so it can correct itself.

A sync function runs in a thread of its own, so the kernel's event loop (and
with it the Stop button) stays live; when a turn is stopped, an async tool is
cancelled and a sync tool's thread is abandoned (Python cannot kill a thread)
and reported as such.

A :class:`ToolSpec` without a function is a tool the *caller* runs (the OpenAI
endpoint passes a client's tools through this way): when the model calls it,
the turn ends with the calls in ``result.tool_calls``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError
from .types import ToolCall

#: the default bound on tool rounds in one turn: after this many rounds of calls,
#: the model is asked for a text answer (``tool_choice="none"``)
DEFAULT_MAX_TOOL_ROUNDS = 8

#: a hook that decides whether a call may run: ``approve(call) -> bool`` (or awaitable)
Approver = Callable[[ToolCall], bool | Awaitable[bool]]

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass(frozen=True)
class ToolSpec:
    """What a model is told about a tool: its name, what it is for, its parameters.

    ``parameters`` is a JSON schema of an object. Providers turn a spec into
    their own format (OpenAI ``tools``, Anthropic ``input_schema``, Gemini
    ``functionDeclarations``).
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def __post_init__(self) -> None:
        check_tool_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }

    @property
    def runnable(self) -> bool:
        return False


@dataclass(frozen=True)
class Tool(ToolSpec):
    """A :class:`ToolSpec` with the Python function that runs it. Made by :func:`tool`."""

    function: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    validator: Any = field(default=None, compare=False, repr=False)

    @property
    def runnable(self) -> bool:
        return self.function is not None

    async def run(self, arguments: str) -> tuple[Any, str]:
        """Validate ``arguments`` (the model's JSON text), call the function, return
        ``(value, output)``: what it returned, and the text the model is sent.

        Raises :class:`ToolArgumentsError` for arguments that do not validate; what
        the function raises propagates.
        """
        kwargs = self.parse_arguments(arguments)
        function = self.function
        assert function is not None
        if inspect.iscoroutinefunction(function):
            value = await function(**kwargs)
        else:
            value = await run_in_thread(function, kwargs)
            if inspect.isawaitable(value):
                value = await value
        return value, tool_output(value)

    def parse_arguments(self, arguments: str) -> dict[str, Any]:
        try:
            raw = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise ToolArgumentsError(
                f"the arguments of {self.name} are not valid JSON ({exc}); "
                "send a JSON object that matches the tool's parameters"
            ) from None
        if not isinstance(raw, dict):
            raise ToolArgumentsError(
                f"the arguments of {self.name} must be a JSON object, got {type(raw).__name__}"
            )
        if self.validator is None:
            return raw
        from pydantic import ValidationError

        try:
            model = self.validator.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ToolArgumentsError(
                f"the arguments of {self.name} are invalid: {problems}"
            ) from None
        return {name: getattr(model, name) for name in type(model).model_fields}


class ToolArgumentsError(ValueError):
    """The model's arguments for a tool did not validate; sent back to it as a tool error."""


def check_tool_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= _NAME_OK:
        raise ConfigurationError(
            f"tool name {name!r} is not usable: providers accept 1-64 letters, digits, "
            "'_' or '-'; pass name=... to tool()"
        )
    return name


def tool(
    function: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
) -> Any:
    """Make a :class:`Tool` of a function; also usable as a decorator (``@tool``).

    The description is the docstring's text (without its parameter section)
    unless given; parameter descriptions come from the docstring too. Raises
    :class:`ConfigurationError` naming the parameter when pydantic cannot
    describe a parameter's type, or when a parameter is ``*args``/``**kwargs``.
    """
    if function is None:
        return lambda f: tool(f, name=name, description=description)
    if isinstance(function, ToolSpec):
        return function
    if not callable(function):
        raise ConfigurationError(
            f"{function!r} is not a function: tools are Python functions (or tool(...) objects)"
        )
    tool_name = name or getattr(function, "__name__", None) or type(function).__name__
    check_tool_name(tool_name)
    summary, param_docs = _docstring(function)
    validator, schema = _schema(function, tool_name, param_docs)
    return Tool(
        name=tool_name,
        description=description if description is not None else summary,
        parameters=schema,
        function=function,
        validator=validator,
    )


def as_tools(tools: Iterable[Any] | None) -> tuple[ToolSpec, ...]:
    """Normalise what users pass as ``tools=``: functions, :class:`Tool`/:class:`ToolSpec`
    objects, or OpenAI-style dicts (``{"type": "function", "function": {...}}``, specs
    without a function). Names must be unique."""
    if tools is None:
        return ()
    if callable(tools) or isinstance(tools, (ToolSpec, Mapping)):
        tools = [tools]
    out: list[ToolSpec] = []
    for item in tools:
        if isinstance(item, ToolSpec):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(spec_from_dict(item))
        else:
            out.append(tool(item))
    seen: set[str] = set()
    for spec in out:
        if spec.name in seen:
            raise ConfigurationError(f"two tools are named {spec.name!r}; names must be unique")
        seen.add(spec.name)
    return tuple(out)


def spec_from_dict(data: Mapping[str, Any]) -> ToolSpec:
    """A :class:`ToolSpec` from an OpenAI-style tool dict (or a bare function dict)."""
    function = data.get("function") if data.get("type") == "function" else data
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ConfigurationError(
            "a tool given as a dict must look like "
            '{"type": "function", "function": {"name": ..., "parameters": {...}}}'
        )
    parameters = function.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping):
        raise ConfigurationError(f"the parameters of tool {function['name']!r} must be an object")
    description = function.get("description") or ""
    return ToolSpec(str(function["name"]), str(description), dict(parameters))


def tool_output(value: Any) -> str:
    """The text a model is sent for a tool's return value: a string as it is, anything
    else as JSON (pydantic's encoder: dataclasses, models, dates, sets...)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    try:
        from pydantic_core import to_json

        return to_json(value, fallback=repr).decode()
    except Exception:
        return repr(value)


async def run_in_thread(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run a sync function in a daemon thread of its own and await its result.

    Not the loop's default executor: a thread abandoned by Stop keeps running
    until the function returns, and must not hold one of a small pool's workers
    nor keep the interpreter from exiting.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            value = function(**kwargs)
        except BaseException as exc:  # handed to the awaiting task
            outcome: tuple[bool, Any] = (False, exc)
        else:
            outcome = (True, value)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    thread = threading.Thread(target=work, name=f"pk-tool-{function.__name__}", daemon=True)
    thread.start()
    try:
        return await future
    finally:
        if thread.is_alive():
            # Stopped while the thread runs: leave it; the caller reports it abandoned.
            future.cancel()


# --- describing a function ------------------------------------------------------------


def _docstring(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(function) or ""
    if not doc:
        return "", {}
    import docstring_parser

    parsed = docstring_parser.parse(doc)
    parts = [p for p in (parsed.short_description, parsed.long_description) if p]
    summary = "\n\n".join(parts).strip()
    params = {p.arg_name: p.description or "" for p in parsed.params if p.arg_name}
    return summary, params


def _schema(
    function: Callable[..., Any], name: str, param_docs: Mapping[str, str]
) -> tuple[Any, dict[str, Any]]:
    from pydantic import ConfigDict, Field, create_model
    from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"tool {name!r}: cannot read the function's signature ({exc})"
        ) from None
    try:
        hints = _type_hints(function)
    except Exception as exc:
        raise ConfigurationError(
            f"tool {name!r}: its type hints cannot be resolved ({exc}); "
            "define the types it names before making the tool"
        ) from None
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {name!r}: parameter {param.name!r} is *args/**kwargs; a model can "
                "only fill named parameters"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ConfigurationError(
                f"tool {name!r}: parameter {param.name!r} is positional-only; tools are "
                "called with keyword arguments"
            )
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        description = param_docs.get(param.name) or None
        fields[param.name] = (annotation, Field(default, description=description))
    try:
        model = create_model(
            f"{name}_arguments",
            __config__=ConfigDict(arbitrary_types_allowed=False, extra="forbid"),
            **fields,
        )
        schema = model.model_json_schema()
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        bad = _first_bad_parameter(fields)
        where = f"parameter {bad!r}" if bad else "a parameter"
        raise ConfigurationError(
            f"tool {name!r}: {where} has a type pydantic cannot describe as JSON "
            f"({type(exc).__name__}); use str, numbers, bool, Literal, lists, dicts, "
            "dataclasses or pydantic models"
        ) from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    return model, schema


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    import typing

    target: Any = function
    if not (inspect.isfunction(function) or inspect.ismethod(function)):
        target = getattr(function, "__call__", function)  # noqa: B004  (a callable object)
    return typing.get_type_hints(target, include_extras=True)


def _first_bad_parameter(fields: Mapping[str, Any]) -> str | None:
    from pydantic import TypeAdapter

    for pname, (annotation, _) in fields.items():
        try:
            TypeAdapter(annotation).json_schema()
        except Exception:
            return pname
    return None
