"""``{name}`` in a ``%%stream`` prompt: which braces are variables, and which are text.

Prompts are full of braces that are not placeholders: JSON, dicts, set literals,
f-strings, LaTeX, Jinja templates, pasted code. ``str.format`` would choke on all
of them, and silently rewriting pasted code is worse than an error (the model sees
wrong code, and the data goes to the provider). So the rule is deliberately narrow:

- Code is sent exactly as typed: inside a fenced code block (a line of three or
  more backticks or tildes, indented up to 3 spaces, up to a closing fence of the
  same character and at least the same length, or to the end of the prompt) and
  inside an inline code span (a run of backticks up to the next run of the same
  length in the same paragraph), no brace is touched, not even ``{{name}}``.
  These are Markdown's own rules (CommonMark), so what the user sees as code in
  the rendered prompt is what stays code.
- Elsewhere, ``{name}`` and ``{name.attr.attr}`` (Python identifiers joined by
  dots, nothing else between the braces, no spaces) are variables of the user
  namespace, rendered for a model to read (:mod:`pk_notebook.notebook.context`: a
  DataFrame as its shape, types and first rows; a figure or image as an image
  attachment). ``{In[3]}``, ``{Out[3]}``, ``{Err}``, ``{Err[3]}`` and ``{_}`` are the
  notebook's cells, outputs and tracebacks. A name (or attribute, or cell) that
  does not exist is an error that names it, never a silent ``{name}`` left in.
- A value is never pasted whole when it is large: past ``max_chars`` characters
  it is cut, and the prompt itself says so (``…[cut: 2,000 of 48,311
  characters]``), so neither the model nor the user is misled about what was sent.
- What was substituted is returned (:class:`Substitution`), so the cell can show
  it: :func:`describe_substitutions` is the one line to show.
- ``{{name}}`` (or ``{{name.attr}}``) is the literal text ``{name}``.
- Every other brace is kept exactly as typed: ``{"a": 1}``, ``{ x }``, ``{x!r}``,
  ``{x:>4}``, ``{x + 1}``, ``f"{a[0]}"``, ``{{ jinja }}``, a lone ``{``...
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .context import DEFAULT_MAX_ROWS, ErrorLog, is_image, render

# A dotted name, or a notebook cell: In[3], Out[-1], Err[3] (only these three take
# an index, so ``{a[0]}`` in pasted code stays text).
_NAME = (
    r"(?:(?:In|Out|Err)\[-?[0-9]+\]"
    r"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
)
_CELL = re.compile(r"(In|Out|Err)\[(-?[0-9]+)\]")
# One scan, left to right: an escaped placeholder first, so ``{{x}}`` never
# matches as ``{`` + variable ``{x}`` + ``}``.
_PATTERN = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")

# CommonMark fences: up to 3 spaces, then 3+ backticks (no backtick in the info
# string) or 3+ tildes; closed by the same character, at least as many, then blanks.
_FENCE_OPEN = re.compile(r" {0,3}(?P<fence>`{3,}(?=[^`]*$)|~{3,})")
_FENCE_CLOSE = re.compile(r" {0,3}(?P<fence>`{3,}|~{3,})[ \t]*")
_TICKS = re.compile(r"`+")
_BLANK_LINE = re.compile(r"\n[ \t]*(?:\r?\n|$)")

#: Characters of one value pasted into a prompt before it is cut
#: (``%stream config --max-var-chars N`` changes it for the notebook).
DEFAULT_MAX_CHARS = 2000

RULE = (
    "{name} and {name.attr} are replaced by your variables' values (a DataFrame as its "
    "shape, types and first rows; a figure or image is sent as an image), {In[3]}, "
    "{Out[3]}, {Err} and {Err[3]} by cell 3's source, its output and a traceback; each is "
    "cut to "
    + f"{DEFAULT_MAX_CHARS:,}"
    + " characters (change it with %stream config --max-var-chars N) with a note in the "
    "prompt saying so, and the cell names what it substituted. Inside code (``` or ~~~ "
    "fenced blocks and `inline code`) braces are sent exactly as typed. {{name}} keeps "
    "literal braces, and every other brace (JSON, dicts, {x!r}, { spaced }) is sent "
    "untouched; --raw turns substitution off. A missing variable is an error naming it."
)


class InterpolationError(LookupError):
    """A ``{name}`` in the prompt names nothing in the user namespace."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Substitution:
    """One variable pasted into a prompt: its placeholder, its length, what was sent."""

    name: str  # as written between the braces: "city", "trip.city"
    chars: int  # characters of the value's rendering
    sent: int  # characters of it that went into the prompt (chars unless cut)
    image: str = ""  # for a figure or image: what was attached instead of text

    @property
    def truncated(self) -> bool:
        return self.sent < self.chars


@dataclass(frozen=True)
class Interpolated:
    """A prompt after substitution, with what was substituted (first use order)."""

    text: str
    substitutions: list[Substitution] = field(default_factory=list)
    #: figures and images among the values, to send with the prompt
    attachments: list[Any] = field(default_factory=list)


def substitute(
    template: str,
    namespace: Mapping[str, Any],
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_rows: int = DEFAULT_MAX_ROWS,
    errors: ErrorLog | None = None,
) -> Interpolated:
    """Replace ``{name}`` placeholders outside code (see the module doc); report each one.

    Each distinct placeholder is looked up once, so a name used twice is one
    :class:`Substitution` and the same text in both places. ``errors`` supplies
    ``{Err}``; without it, ``{Err}`` is an error that says tracebacks are not kept.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    values: dict[str, tuple[str, Substitution]] = {}
    attachments: list[Any] = []

    def replace(match: re.Match[str]) -> str:
        escaped = match.group(1)
        if escaped is not None:
            return "{" + escaped + "}"
        name = match.group(2)
        if name not in values:
            value = _lookup(name, namespace, errors)
            if is_image(value):
                from ..runtime.attachments import as_attachment

                label = name.replace("[", "_").replace("]", "").replace(".", "_")
                attachment = as_attachment(value, name=f"{label}.png")
                attachments.append(attachment)
                marker = f"[image {len(attachments)}: {attachment.name}]"
                values[name] = marker, Substitution(name, 0, 0, image=attachment.describe())
            else:
                values[name] = _capped(name, render(value, max_rows=max_rows), max_chars)
        return values[name][0]

    parts = [text if code else _PATTERN.sub(replace, text) for code, text in _pieces(template)]
    return Interpolated("".join(parts), [sub for _, sub in values.values()], attachments)


def interpolate(
    template: str, namespace: Mapping[str, Any], *, max_chars: int = DEFAULT_MAX_CHARS
) -> str:
    """The prompt text of :func:`substitute` alone."""
    return substitute(template, namespace, max_chars=max_chars).text


def variables(template: str) -> list[str]:
    """The placeholder names ``template`` uses outside code, in order, without duplicates."""
    seen: dict[str, None] = {}
    for code, text in _pieces(template):
        if code:
            continue
        for match in _PATTERN.finditer(text):
            if match.group(2):
                seen.setdefault(match.group(2), None)
    return list(seen)


def cut_marker(sent: int, chars: int) -> str:
    """What a cut value ends with in the prompt, so the model knows it saw a part."""
    return f"…[cut: {sent:,} of {chars:,} characters]"


def describe_substitutions(substitutions: Sequence[Substitution]) -> str:
    """One line naming what was substituted; "" when nothing was.

    e.g. ``substituted {city} (6 chars), {df} (2,000 of 48,311 chars: cut)``.
    """
    if not substitutions:
        return ""
    parts = []
    for sub in substitutions:
        if sub.image:
            parts.append(f"{{{sub.name}}} (attached: {sub.image})")
            continue
        if sub.truncated:
            size = f"{sub.sent:,} of {sub.chars:,} chars: cut"
        else:
            size = f"{sub.chars:,} char{'' if sub.chars == 1 else 's'}"
        parts.append(f"{{{sub.name}}} ({size})")
    return "substituted " + ", ".join(parts)


# --- internals ------------------------------------------------------------------------


def _capped(name: str, text: str, max_chars: int) -> tuple[str, Substitution]:
    if len(text) <= max_chars:
        return text, Substitution(name, len(text), len(text))
    return text[:max_chars] + cut_marker(max_chars, len(text)), Substitution(
        name, len(text), max_chars
    )


def _pieces(template: str) -> Iterator[tuple[bool, str]]:
    """``template`` as (is_code, text) pieces that join back to it exactly."""
    prose: list[str] = []
    lines = iter(template.splitlines(keepends=True))
    for line in lines:
        opening = _FENCE_OPEN.match(line.rstrip("\r\n"))
        if opening is None:
            prose.append(line)
            continue
        if prose:
            yield from _code_spans("".join(prose))
            prose = []
        fence = opening.group("fence")
        block = [line]
        for inner in lines:  # an unclosed fence runs to the end, as in CommonMark
            block.append(inner)
            closing = _FENCE_CLOSE.fullmatch(inner.rstrip("\r\n"))
            if (
                closing is not None
                and closing.group("fence")[0] == fence[0]
                and len(closing.group("fence")) >= len(fence)
            ):
                break
        yield True, "".join(block)
    if prose:
        yield from _code_spans("".join(prose))


def _code_spans(text: str) -> Iterator[tuple[bool, str]]:
    """Split prose into text and inline code spans (CommonMark's backtick-run rule).

    A run of N backticks opens a span that ends at the next run of exactly N
    backticks in the same paragraph; without one, the run is ordinary text.
    """
    start = 0  # where the pending prose begins
    search = 0
    while True:
        opener = _TICKS.search(text, search)
        if opener is None:
            break
        closer = _closing_run(text, opener)
        if closer is None:
            search = opener.end()
            continue
        if opener.start() > start:
            yield False, text[start : opener.start()]
        yield True, text[opener.start() : closer.end()]
        start = search = closer.end()
    if start < len(text):
        yield False, text[start:]


def _closing_run(text: str, opener: re.Match[str]) -> re.Match[str] | None:
    blank = _BLANK_LINE.search(text, opener.end())
    limit = blank.start() if blank is not None else len(text)
    width = len(opener.group())
    for run in _TICKS.finditer(text, opener.end(), limit):
        if len(run.group()) == width:
            return run
    return None


def _cell(kind: str, number: int, namespace: Mapping[str, Any], errors: ErrorLog | None) -> Any:
    """``In[n]``, ``Out[n]`` or ``Err[n]``, with errors that say which cells exist."""
    if kind == "Err":
        if errors is None:
            raise InterpolationError(
                "the prompt uses {Err[...]} but tracebacks are kept only once the "
                "extension is loaded (%load_ext pk_notebook) before the failing cell ran",
                "Err",
            )
        try:
            return errors[number]
        except KeyError as exc:
            raise InterpolationError(f"{{Err[{number}]}}: {exc.args[0]}", "Err") from None
    history = namespace.get(kind)
    try:
        value = history[number]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        what = "input" if kind == "In" else "output value"
        raise InterpolationError(
            f"the prompt uses {{{kind}[{number}]}} but cell {number} has no {what} "
            "(In[n] is the source of cell n, Out[n] the value it displayed)",
            kind,
        ) from None
    return value


def _lookup(dotted: str, namespace: Mapping[str, Any], errors: ErrorLog | None = None) -> Any:
    cell = _CELL.fullmatch(dotted)
    if cell is not None:
        return _cell(cell.group(1), int(cell.group(2)), namespace, errors)
    if dotted == "Err" and "Err" not in namespace:
        if errors is None:
            raise InterpolationError(
                "the prompt uses {Err} but tracebacks are kept only once the extension "
                "is loaded (%load_ext pk_notebook) before the failing cell ran",
                "Err",
            )
        try:
            return str(errors)
        except LookupError as exc:
            raise InterpolationError(str(exc.args[0]), "Err") from None
    head, *attrs = dotted.split(".")
    if head not in namespace:
        raise InterpolationError(
            f"the prompt uses {{{dotted}}} but there is no variable {head!r}: define it "
            f"in a cell first, or write {{{{{dotted}}}}} for literal braces, put code in "
            "`backticks` or a ``` block (or use --raw)",
            head,
        )
    value = namespace[head]
    path = head
    for attr in attrs:
        try:
            value = getattr(value, attr)
        except AttributeError:
            raise InterpolationError(
                f"the prompt uses {{{dotted}}} but {path} ({type(value).__name__}) has no "
                f"attribute {attr!r}; write {{{{{dotted}}}}} for literal braces",
                path,
            ) from None
        path = f"{path}.{attr}"
    return value
