"""Tools on the web: the server's own, and the ones an OpenAI client brings.

*Server tools* are Python functions the operator gives the app::

    app = create_app(pipe, tools=[get_weather, search_docs], max_tool_rounds=4)

or ``pk-notebook serve --tools mypackage.tools:get_weather,mypackage.tools:search_docs``.
Every turn on every endpoint gets them; the pipeline runs them inside the turn
(``/stream`` and ``/ws`` show their progress as ``tool`` events; ``/v1`` shows only
the answer). A client can neither name, add nor remove them: ``/stream`` and
``/ws`` refuse a request that carries ``tools``, ``tool_choice``, ``functions``
or ``max_tool_rounds`` (422 ``ToolsNotAllowed``), and on ``/v1`` a client tool
named like a server tool is refused (422).

*Client tools* exist on ``/v1/chat/completions`` only: the request's ``tools``
(OpenAI format) are offered to the model as specs without a function; when the
model calls one, the response carries the ``tool_calls`` and ends with
``finish_reason: "tool_calls"``, and the client runs the tool and sends the result
in its next request (standard OpenAI semantics). The server never runs them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..runtime.errors import ConfigurationError
from ..runtime.tools import ToolSpec, as_tools, spec_from_dict
from .security import WebError

#: request fields by which a ``/stream`` or ``/ws`` client would choose tools
CLIENT_TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call", "max_tool_rounds")

#: OpenAI's own limit on the tools of one request
MAX_CLIENT_TOOLS = 128


@dataclass(frozen=True)
class ServerTools:
    """The tools every turn of the app gets, and the bound on their rounds."""

    tools: tuple[ToolSpec, ...] = ()
    max_tool_rounds: int | None = None

    @classmethod
    def build(cls, tools: Iterable[Any] | None, max_tool_rounds: int | None) -> ServerTools:
        """Check the operator's tools once, at start-up: each must be runnable here."""
        specs = as_tools(tools)
        for spec in specs:
            if not spec.runnable:
                raise ConfigurationError(
                    f"server tool {spec.name!r} has no function: the server runs its tools "
                    "itself (tools the client runs come with each /v1 request)"
                )
        if max_tool_rounds is not None and (
            isinstance(max_tool_rounds, bool)
            or not isinstance(max_tool_rounds, int)
            or max_tool_rounds < 1
        ):
            raise ConfigurationError(
                f"max_tool_rounds must be a positive integer, got {max_tool_rounds!r}"
            )
        return cls(specs, max_tool_rounds)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.tools)

    def stream_options(self, client_tools: tuple[ToolSpec, ...] = ()) -> dict[str, Any]:
        """The keyword arguments of ``Pipeline.stream`` for a turn: none without tools."""
        tools = self.tools + client_tools
        if not tools:
            return {}
        options: dict[str, Any] = {"tools": list(tools)}
        if self.max_tool_rounds is not None:
            options["max_tool_rounds"] = self.max_tool_rounds
        return options


def refuse_client_tools(data: Mapping[str, Any]) -> None:
    """``/stream`` and ``/ws``: a request may not choose tools (the server's apply)."""
    named = [name for name in CLIENT_TOOL_FIELDS if name in data]
    if named:
        raise WebError(
            422,
            "ToolsNotAllowed",
            f"this endpoint does not take {', '.join(repr(n) for n in named)}: tools are "
            "configured on the server (create_app(tools=...), pk-notebook serve --tools); "
            "a client brings its own tools only to /v1/chat/completions",
        )


def parse_client_tools(tools: Any, tool_choice: Any, server: ServerTools) -> tuple[ToolSpec, ...]:
    """A ``/v1`` request's ``tools`` as specs without a function, checked.

    ``tool_choice`` ``"none"`` leaves them out (the server's tools still apply: a
    client cannot switch those off); ``"auto"`` or absent offers them; forcing a
    call (``"required"``, a named function) is refused.
    """
    if tool_choice not in (None, "auto", "none"):
        raise WebError(
            422,
            "InvalidRequest",
            "only tool_choice 'auto' or 'none' is supported (a call cannot be forced)",
        )
    if tools is None or tools == []:
        return ()
    if not isinstance(tools, list):
        raise WebError(422, "InvalidRequest", "'tools' must be a list")
    if len(tools) > MAX_CLIENT_TOOLS:
        raise WebError(422, "InvalidRequest", f"at most {MAX_CLIENT_TOOLS} tools are accepted")
    specs: list[ToolSpec] = []
    for i, item in enumerate(tools):
        if not isinstance(item, Mapping) or item.get("type") != "function":
            raise WebError(
                422,
                "InvalidRequest",
                f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., '
                '"parameters": {...}}}}',
            )
        try:
            specs.append(spec_from_dict(item))
        except ConfigurationError as exc:
            raise WebError(422, "InvalidRequest", f"tools[{i}]: {exc}") from None
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise WebError(422, "InvalidRequest", "two tools have the same name")
    taken = sorted(set(names) & server.names)
    if taken:
        raise WebError(
            422,
            "ToolsNotAllowed",
            f"tool name(s) {taken} belong to this server's own tools; a client cannot "
            "replace them: rename the client's tools",
        )
    return () if tool_choice == "none" else tuple(specs)


def load_tools(specs: Iterable[str]) -> list[Any]:
    """``pk-notebook serve --tools``: import ``module:function`` (comma-separated, repeatable).

    The attribute may be a function or a :func:`~pk_notebook.runtime.tools.tool`
    object; a mistyped name is a one-line :class:`ConfigurationError`.
    """
    found: list[Any] = []
    for spec in specs:
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            module_name, sep, attribute = item.partition(":")
            if not sep or not module_name or not attribute:
                raise ConfigurationError(
                    f"--tools {item!r}: name each tool as module:function, "
                    "e.g. mypackage.tools:get_weather"
                )
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ConfigurationError(
                    f"--tools {item!r}: cannot import {module_name!r} ({exc})"
                ) from None
            value: Any = module
            for part in attribute.split("."):
                if not hasattr(value, part):
                    raise ConfigurationError(
                        f"--tools {item!r}: {module_name!r} has no {attribute!r}"
                    )
                value = getattr(value, part)
            found.append(value)
    return found
