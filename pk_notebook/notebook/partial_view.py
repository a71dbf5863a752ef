"""Structured answers shown as data: the object filling in live, then the validated one.

``%%stream --schema Trip`` and ``Chat(schema=Trip)`` stream JSON text, which is
hard to read while it grows. What shows instead is the object parsed so far
(:attr:`Stream.partial <pk_notebook.runtime.stream.Stream.partial>`, strings
cut mid-way included) as a tree: one bullet per field, nested objects and lists
indented under their field, a list of flat objects as a table. Fields of the
schema that have not arrived yet show as ``…``, so the shape is visible from the
first chunk and fills in.

At the end the validated object (``result.parsed``) is shown the same way,
without the ``…`` markers, so the saved output is byte-stable. An answer that
did not validate is shown as its raw JSON text, with the usual note under it
saying what failed.

:class:`PartialObjectOutput` is the cell's live view for such an answer: a
:class:`~pk_notebook.notebook.live.LiveOutput` that renders the object instead of
the text; everything else (Stop, status line, throttling, final output rules)
is the live view's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..runtime.schema import OutputSchema
from .live import LiveOutput, Note, render_bundle
from .markdown import escape_markdown, safe_markdown
from .parts_view import split_answer, turn_bundle

#: shown for a field of the schema that has not arrived yet
PENDING = "…"
#: nesting shown before a value is summarised instead
MAX_DEPTH = 6
#: longest string shown whole (per value) in the tree
MAX_VALUE_CHARS = 2_000


def jsonable(value: Any) -> Any:
    """A validated object (pydantic model, dataclass, ...) as plain JSON data."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        from pydantic_core import to_jsonable_python

        return to_jsonable_python(value)
    except Exception:
        return repr(value)


def schema_fields(schema: OutputSchema | Mapping[str, Any] | None) -> list[str]:
    """The top-level property names of an object schema, in order ([] otherwise)."""
    if schema is None:
        return []
    spec = schema.json_schema if isinstance(schema, OutputSchema) else schema
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        spec = (spec.get("$defs") or {}).get(ref.split("/")[-1], spec)
    properties = spec.get("properties")
    return list(properties) if isinstance(properties, Mapping) else []


def _scalar_md(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + "…"
    return escape_markdown(text) if text.strip() else '""'


def _scalar_plain(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return " ".join(str(value).split()) or '""'


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (Mapping, list, tuple))


def _flat_records(value: Any) -> bool:
    """A list of objects whose values are all scalars: shown as a table."""
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(
            isinstance(v, Mapping) and v and all(_is_scalar(x) for x in v.values()) for v in value
        )
    )


def _table(rows: Sequence[Mapping[str, Any]], indent: str) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(str(key), None)
    names = list(columns)
    lines = [
        "| " + " | ".join(escape_markdown(n) for n in names) + " |",
        "|" + "---|" * len(names),
    ]
    for row in rows:
        cells = [_scalar_md(row[n]).replace("|", "\\|") if n in row else "" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    return [indent + line for line in lines]


def _tree_md(value: Any, indent: str, depth: int, pending: Sequence[str] = ()) -> list[str]:
    """Markdown lines for a dict or list (scalars are handled by the caller)."""
    lines: list[str] = []
    if depth > MAX_DEPTH:
        return [f"{indent}- {PENDING}"]
    if isinstance(value, Mapping):
        for key, item in value.items():
            label = f"{indent}- **{escape_markdown(str(key))}**:"
            if _is_scalar(item):
                lines.append(f"{label} {_scalar_md(item)}")
            elif not item:
                lines.append(f"{label} {'`[]`' if isinstance(item, (list, tuple)) else '`{}`'}")
            elif _flat_records(item):
                lines.append(label)
                lines.append("")
                lines.extend(_table(item, indent + "  "))
                lines.append("")
            else:
                lines.append(label)
                lines.extend(_tree_md(item, indent + "  ", depth + 1))
        for key in pending:
            if key not in value:
                lines.append(f"{indent}- **{escape_markdown(key)}**: {PENDING}")
        return lines
    for number, item in enumerate(value, 1):
        label = f"{indent}{number}."
        if _is_scalar(item):
            lines.append(f"{label} {_scalar_md(item)}")
        elif not item:
            lines.append(f"{label} {'`[]`' if isinstance(item, (list, tuple)) else '`{}`'}")
        else:
            lines.append(label)
            lines.extend(_tree_md(item, indent + "   ", depth + 1))
    return lines


def _tree_plain(value: Any, indent: str, depth: int, pending: Sequence[str] = ()) -> list[str]:
    lines: list[str] = []
    if depth > MAX_DEPTH:
        return [f"{indent}{PENDING}"]
    if isinstance(value, Mapping):
        for key, item in value.items():
            if _is_scalar(item):
                lines.append(f"{indent}{key}: {_scalar_plain(item)}")
            elif not item:
                lines.append(f"{indent}{key}: {'[]' if isinstance(item, (list, tuple)) else '{}'}")
            else:
                lines.append(f"{indent}{key}:")
                lines.extend(_tree_plain(item, indent + "  ", depth + 1))
        lines.extend(f"{indent}{key}: {PENDING}" for key in pending if key not in value)
        return lines
    for item in value:
        if _is_scalar(item):
            lines.append(f"{indent}- {_scalar_plain(item)}")
        else:
            inner = _tree_plain(item, indent + "  ", depth + 1)
            if inner:
                inner[0] = f"{indent}- {inner[0].lstrip()}"
            lines.extend(inner or [f"{indent}- {{}}"])
    return lines


def object_markdown(value: Any, *, title: str = "", pending: Sequence[str] = ()) -> str:
    """``value`` (plain JSON data) as a Markdown tree; ``pending`` fields show as ``…``."""
    head = [f"**{escape_markdown(title)}**", ""] if title else []
    if value is None and not pending:
        return "\n".join([*head, f"*{PENDING}*"]).strip()
    if value is None:
        value = {}
    if _flat_records(value):
        body = _table(value, "")
    elif _is_scalar(value):
        body = [_scalar_md(value)]
    else:
        body = _tree_md(value, "", 0, pending if isinstance(value, Mapping) else ())
    return safe_markdown("\n".join([*head, *body]).rstrip("\n"))


def object_plain(value: Any, *, title: str = "", pending: Sequence[str] = ()) -> str:
    head = [title] if title else []
    if value is None and not pending:
        return "\n".join([*head, PENDING])
    if value is None:
        value = {}
    if _is_scalar(value):
        body = [_scalar_plain(value)]
    else:
        body = _tree_plain(value, "", 0, pending if isinstance(value, Mapping) else ())
    return "\n".join([*head, *body])


def object_bundle(
    value: Any, *, title: str = "", pending: Sequence[str] = (), notes: Sequence[Note] = ()
) -> dict[str, str]:
    """The MIME bundle of an object (live or final), with notes under it."""
    markdown = object_markdown(value, title=title, pending=pending)
    plain = object_plain(value, title=title, pending=pending)
    if notes:
        markdown += "\n\n" + "\n>\n".join(n.markdown() for n in notes)
        plain += "\n\n" + "\n".join(n.plain() for n in notes)
    return {"text/markdown": markdown, "text/plain": plain}


def final_object_bundle(
    schema: OutputSchema, text: str, parsed: Any, valid: bool, notes: Sequence[Note] = ()
) -> dict[str, str]:
    """The saved output of a structured answer: the validated object, or the raw text."""
    if valid:
        return object_bundle(jsonable(parsed), title=schema.name, notes=notes)
    if not text.strip():
        return render_bundle(text, notes=notes)
    return render_bundle(text, format="code", lang="json", notes=notes)


class PartialObjectOutput(LiveOutput):
    """The live view of a ``%%stream --schema`` cell: the object, not its JSON text.

    Set :attr:`valid` and :attr:`parsed` (from the result) before
    :meth:`~LiveOutput.finish`; the final output is then the validated object.
    """

    def __init__(self, *, schema: OutputSchema, **options: Any) -> None:
        # The object is re-rendered whole at each update (it is small, and a field
        # anywhere may change), so the live view's incremental Markdown mode is off.
        options["incremental"] = False
        super().__init__(**options)
        self.schema = schema
        self.fields = schema_fields(schema)
        self.parsed: Any = None
        self.valid = False

    def partial_bundle(self, text: str) -> dict[str, str]:
        """What the cell shows for the JSON text received so far."""
        value = self.schema.partial(text)
        return object_bundle(value, title=self.schema.name, pending=self.fields)

    def _render(self, text: str) -> None:
        if self.surface not in ("widget", "display"):
            super()._render(text)
            return
        block = self._text_block
        start = block.start if block is not None else 0
        self._throttle.interval = max(
            self.interval, (len(text) - start) / self.max_bytes_per_second
        )
        self.updates += 1
        handle = self._handles.get(id(block)) if block is not None else self._body_handle
        if handle is not None:
            bundle = self.partial_bundle(text[start:])
            handle.update(bundle, raw=True)
            self.bytes_sent = getattr(self, "bytes_sent", 0) + sum(len(v) for v in bundle.values())
        self._show_status(self._status_text())

    def final_bundle(self, text: str, notes: Sequence[Note] = ()) -> dict[str, str]:
        """The validated object (or the raw JSON text), under the turn's thinking and
        tool cards if it had any (``--tools`` with ``--schema``): the parts collapsed
        as with ``--tools`` alone, then the object as with ``--schema`` alone."""
        # The answer is the text after the last card or thinking: earlier stretches of
        # text (said between tool rounds) stay text, in their place.
        parts, answer = split_answer(self.parts, text)
        if parts is None:
            return final_object_bundle(self.schema, text, self.parsed, self.valid, notes)
        head = turn_bundle(parts, text, render_text=self._text_markdown)
        tail = final_object_bundle(self.schema, answer, self.parsed, self.valid, notes)
        return {
            mime: "\n\n".join(p for p in (head.get(mime, ""), tail.get(mime, "")) if p.strip())
            for mime in ("text/markdown", "text/plain")
        }
