"""Structured output: ask for data in a shape, watch it fill in, get it validated.

::

    class Trip(BaseModel):
        city: str
        days: int
        sights: list[str]

    async with pipe.stream("Plan 3 days in Lisbon", schema=Trip) as stream:
        async for _ in stream:
            print(stream.partial)          # {'city': 'Lis'} ... growing
    trip = stream.result.parsed            # a Trip

``schema=`` takes a pydantic model, a dataclass, a ``TypedDict`` (anything
pydantic's ``TypeAdapter`` describes) or a JSON-schema dict. Providers use
their own mechanism for it (see each provider; ``result.schema_mode`` says
which was used). While the answer streams, :attr:`Stream.partial` parses what
has arrived with pydantic-core's partial JSON mode (strings cut mid-way
included), never a hand-written parser. At the end the text is validated: a
model instance (or dataclass, or plain data for a dict schema) in
``result.parsed``, or an :class:`OutputValidationError` with the raw text and
what failed. An answer cut short by the token limit gets an error that says to
raise ``max_tokens``, because that, not the model, is what to fix.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError, OutputValidationError

#: finish reasons that mean "the token limit cut the answer", per provider
LENGTH_REASONS = frozenset({"length", "max_tokens", "MAX_TOKENS", "max_output_tokens"})


class OutputSchema:
    """A shape for the answer: its name, its JSON schema, and how to validate it."""

    def __init__(self, name: str, json_schema: Mapping[str, Any], adapter: Any = None) -> None:
        self.name = name
        self.json_schema: dict[str, Any] = dict(json_schema)
        self._adapter = adapter

    def __repr__(self) -> str:
        return f"OutputSchema({self.name!r})"

    # --- while streaming ------------------------------------------------------------

    @staticmethod
    def partial(text: str) -> Any:
        """The value parsed so far from ``text`` (``None`` before it has begun).

        Unfinished strings are kept as far as they go; a number or literal cut
        mid-way is left out until it is whole.
        """
        start = _json_start(text)
        if start < 0:
            return None
        from pydantic_core import from_json

        try:
            return from_json(text[start:], allow_partial="trailing-strings")
        except ValueError:
            return None

    # --- at the end -----------------------------------------------------------------

    def parse(self, text: str, finish_reason: str | None = None) -> Any:
        """Validate the whole answer; raise :class:`OutputValidationError` if it does not fit."""
        body = _strip_fence(text)
        from pydantic_core import from_json

        try:
            data = from_json(body)
        except ValueError as exc:
            if finish_reason in LENGTH_REASONS:
                raise OutputValidationError(
                    f"the structured answer was cut off by the token limit "
                    f"(finish reason {finish_reason!r}) before its JSON was complete; "
                    "raise max_tokens (e.g. ProviderConfig(max_tokens=4096)) and ask again",
                    raw=text,
                    errors=(str(exc),),
                ) from None
            raise OutputValidationError(
                f"the answer is not valid JSON for {self.name} ({exc}); the raw text is "
                "kept in the error's .raw",
                raw=text,
                errors=(str(exc),),
            ) from None
        if self._adapter is not None:
            from pydantic import ValidationError

            try:
                return self._adapter.validate_python(data)
            except ValidationError as exc:
                problems = tuple(
                    f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
                    for err in exc.errors(include_url=False)
                )
                raise OutputValidationError(
                    f"the answer does not match {self.name}: " + "; ".join(problems[:5]),
                    raw=text,
                    errors=problems,
                ) from None
        problems = _check_with_jsonschema(self.json_schema, data)
        if problems:
            raise OutputValidationError(
                f"the answer does not match {self.name}: " + "; ".join(problems[:5]),
                raw=text,
                errors=problems,
            )
        return data

    # --- for providers --------------------------------------------------------------

    def strict_schema(self) -> tuple[dict[str, Any], bool]:
        """The schema for "strict" modes (OpenAI), and whether strict mode can take it.

        Strict mode wants every object closed (``additionalProperties: false``) and
        every property required. Objects are closed here; when some property is
        optional the schema is sent non-strict rather than changed in meaning.
        """
        schema = copy.deepcopy(self.json_schema)
        strict = _close_objects(schema)
        return schema, strict

    def instructions(self) -> str:
        """A system instruction for servers without a native mechanism."""
        import json

        return (
            "Answer with one JSON value only, no prose and no code fence, that is valid "
            f"against this JSON schema:\n{json.dumps(self.json_schema, ensure_ascii=False)}"
        )


def output_schema(schema: Any) -> OutputSchema:
    """An :class:`OutputSchema` from a pydantic model, dataclass, TypedDict or JSON-schema dict."""
    if isinstance(schema, OutputSchema):
        return schema
    if isinstance(schema, Mapping):
        if not isinstance(schema.get("type"), str) and not any(
            k in schema for k in ("properties", "anyOf", "oneOf", "$ref", "enum")
        ):
            raise ConfigurationError(
                "a schema given as a dict must be a JSON schema, e.g. "
                '{"type": "object", "properties": {"city": {"type": "string"}}}'
            )
        name = _name(str(schema.get("title") or "output"))
        return OutputSchema(name, schema)
    if not isinstance(schema, type) and not _is_typed_dict(schema):
        raise ConfigurationError(
            f"schema must be a pydantic model, a dataclass, a TypedDict or a JSON-schema "
            f"dict, got {type(schema).__name__}"
        )
    from pydantic import TypeAdapter
    from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

    try:
        adapter = TypeAdapter(schema)
        json_schema = adapter.json_schema()
    except (PydanticSchemaGenerationError, PydanticUserError, TypeError) as exc:
        raise ConfigurationError(
            f"schema {getattr(schema, '__name__', schema)!r} cannot be described as JSON "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    return OutputSchema(_name(getattr(schema, "__name__", "output")), json_schema, adapter)


def _is_typed_dict(obj: Any) -> bool:
    return isinstance(obj, type) and hasattr(obj, "__required_keys__")


def _name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64]
    return name or "output"


def _json_start(text: str) -> int:
    """Where the JSON begins: after leading space or an opening code fence."""
    match = re.match(r"\s*(?:```(?:json)?\s*)?", text)
    start = match.end() if match else 0
    return start if start < len(text) else -1


def _strip_fence(text: str) -> str:
    stripped = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, re.DOTALL)
    return fenced.group(1) if fenced else stripped


def _close_objects(node: Any) -> bool:
    """Close every object schema in place; True if every property is also required."""
    strict = True
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            node.setdefault("additionalProperties", False)
            properties = node.get("properties", {})
            if set(node.get("required", ())) != set(properties):
                strict = False
        for value in node.values():
            strict = _close_objects(value) and strict
    elif isinstance(node, list):
        for value in node:
            strict = _close_objects(value) and strict
    return strict


def _check_with_jsonschema(schema: Mapping[str, Any], data: Any) -> tuple[str, ...]:
    """Validate against a plain JSON schema with the ``jsonschema`` package if present.

    It is what Jupyter itself uses (nbformat), so it is there wherever a notebook
    runs; without it, a dict schema is only checked to be JSON.
    """
    try:
        import jsonschema
    except ImportError:
        return ()
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    return tuple(
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    )
