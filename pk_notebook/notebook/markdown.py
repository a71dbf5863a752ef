"""One presentation core for answers: safe Markdown for the cell, safe HTML for the chat.

A model's answer is untrusted text shown in two places, and neither place
sanitises it for us:

- the ``%%stream`` cell shows a ``text/markdown`` output, which JupyterLab
  renders as *trusted* while the kernel is live (raw HTML in it would run), and
  which the saved notebook and ``nbconvert --to html`` carry on;
- the chat widget sets an ``ipywidgets.HTML`` value with ``innerHTML``.

Both follow the same rules: raw HTML is shown as text, links and images whose
destination is ``javascript:``, ``vbscript:`` or ``data:`` (in any spelling:
entities, percent-escapes, mixed case, spaces or control characters inside,
reference definitions, autolinks) are not links, and TeX math arrives intact.

:func:`safe_markdown` (the cell) changes as little as it can, so the saved
notebook stays readable and byte-stable: markdown-it-py parses the answer (with
raw HTML on, and every link accepted, so that it sees what a permissive renderer
sees) and only the characters that *open* a dangerous construct are replaced:
``<`` of raw HTML or of a dangerous autolink becomes ``&lt;``, ``[`` of a
dangerous link, image or reference definition becomes ``&#91;`` (an entity,
which no Markdown parser reads as syntax). Everything else is left byte for
byte: code, math, ``a < b`` and ``a<b`` in prose. The answer is read twice,
once as JupyterLab reads it (math cut out first, see :mod:`.texmath`) and once
as a renderer without math support reads it; the union of both findings is
escaped, so a ``<`` inside math is never taken for HTML by us, and a tag hidden
in "math" is still harmless where math is not typeset (inside math the
replacements are TeX's ``\\lt `` and ``\\lbrack ``, which typeset the same).
After the escapes the answer is parsed again until nothing is found (escaping
an HTML block's first ``<`` can reveal inline HTML on its next lines). Lastly a
lenient net escapes any remaining tag-shaped ``<`` outside code and math, for
renderers whose HTML grammar is looser than CommonMark's (JupyterLab uses marked).

Cost: the live view re-renders the whole answer on every refresh, so each pass
parses only what can matter (inline content holding ``<`` or ``[``; no
emphasis). An answer without ``<`` or ``[`` is returned untouched without a
parse; a 50 kB answer with links, code and math costs tens of milliseconds,
about what the chat's full render costs.

Math in the cell: Jupyter typesets ``$...$``, ``$$...$$``, ``\\\\(...\\\\)`` and
``\\\\[...\\\\]``, but shows LaTeX's single-backslash ``\\(x\\)`` as ``(x)``;
models write the latter, so :func:`safe_markdown` doubles those delimiters'
backslashes (the math between them is untouched). Line endings become ``\\n``.

Math in the chat (decision): an ``ipywidgets.HTML`` value is not typeset and
script cannot run from it, so :func:`render_markdown` keeps each math span as
its source text, exactly as written (Jupyter's doubled delimiters become the
single ones MathJax reads), HTML-escaped, in ``<span class="pk-math">``
(``pk-math-display`` for display math): readable and copyable as TeX, never
mangled by Markdown (``\\(`` keeps its backslash, ``_`` is no emphasis), and
typeset as-is by an ``ipywidgets.HTMLMath`` view, should the chat use one.
"""

from __future__ import annotations

import bisect
import html
import logging
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline, autolink, backtick, html_inline, image, link
from markdown_it.token import Token

from .highlight import highlight, highlight_css
from .texmath import MathSpan, find_math, jupyter_delimiters

__all__ = [
    "close_open_fence",
    "escape_markdown",
    "escape_text",
    "highlight_css",
    "is_dangerous_url",
    "render_markdown",
    "safe_markdown",
]

logger = logging.getLogger("pk_notebook")

# --- links ------------------------------------------------------------------------------

_DANGEROUS_SCHEMES = ("javascript:", "vbscript:", "data:")
# What browsers skip or drop inside a URL's scheme, plus invisible characters.
_URL_NOISE = re.compile(r"[\x00-\x20\x7f-\x9f\u00ad\u200b-\u200f\u2028\u2029\u2060\ufeff]")


def is_dangerous_url(url: str) -> bool:
    """True if ``url``, however encoded, starts with a scheme that runs or embeds content.

    Entities and percent-escapes are decoded (repeatedly: ``&amp;#106;``), and
    whitespace and control characters are dropped *anywhere*, as browsers drop
    tabs and newlines inside URLs: ``java&#9;script:`` is ``javascript:``.
    """
    text = url
    for _ in range(4):
        decoded = urllib.parse.unquote(html.unescape(text))
        if decoded == text:
            break
        text = decoded
    return _URL_NOISE.sub("", text).lower().startswith(_DANGEROUS_SCHEMES)


# --- finding what to escape -------------------------------------------------------------


class _Analyser(MarkdownIt):
    """markdown-it that accepts every link, so a dangerous one is seen, not skipped as text."""

    def validateLink(self, url: str) -> bool:
        return True


def _recording(rule: Any, kind: str) -> Any:
    """An inline rule that notes where its ``kind`` token starts in the inline source."""

    def recorded(state: StateInline, silent: bool) -> bool:
        start, count = state.pos, len(state.tokens)
        if not rule(state, silent):
            return False
        if not silent:
            # The first new token may be pending text flushed by push(): skip it.
            for token in state.tokens[count:]:
                if token.type == kind:
                    token.meta = {**(token.meta or {}), "pk_span": (start, state.pos)}
                    token.meta["pk_src"] = state.src
                    break
        return True

    return recorded


@lru_cache(maxsize=1)
def _analyser() -> MarkdownIt:
    md = _Analyser("commonmark", {"html": True, "inline_definitions": True})
    md.enable(["table", "strikethrough"])
    rules = {
        "backticks": (backtick, "code_inline"),
        "html_inline": (html_inline, "html_inline"),
        "autolink": (autolink, "link_open"),
        "link": (link, "link_open"),
        "image": (image, "image"),
    }
    for name, (rule, kind) in rules.items():
        md.inline.ruler.at(name, _recording(rule, kind))
    # Speed (the live view re-reads the whole answer on every refresh): emphasis and
    # the like cannot hide or make HTML or links, and inline content without "<" or
    # "[" holds neither, so it is not parsed at all.
    md.disable(["emphasis", "strikethrough", "newline", "entity", "text_join"])
    md.core.ruler.at("inline", _inline_where_needed)
    return md


def _inline_where_needed(state: Any) -> None:
    for token in state.tokens:
        if token.type == "inline" and ("<" in token.content or "[" in token.content):
            state.md.inline.parse(token.content, state.md, state.env, token.children)


# A "<" that some HTML parser could read as a tag, comment, declaration or PI.
_TAG_LIKE = re.compile(r"<(?:/?[A-Za-z][^<>]*>|[!?])")


class _Scan:
    """One parse of one view of the answer: where the dangerous ``<`` and ``[`` are."""

    def __init__(self, text: str, math: Sequence[MathSpan] = ()) -> None:
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.found: set[int] = set()
        # Code, safe links and math: the net skips them (in math only real tags count).
        self.exempt: list[tuple[int, int]] = [(span.start, span.end) for span in math]
        self.cursor: dict[int, int] = {}  # per line, for several inline tokens on one line
        for token in _analyser().parse(text, {}):
            self._block(token)
        self._net()

    def _line(self, number: int) -> tuple[int, int]:
        start = self.line_starts[number]
        end = self.text.find("\n", start)
        return start, len(self.text) if end < 0 else end

    def _block(self, token: Token) -> None:
        if token.map is None:
            if token.type == "inline" and token.children:  # never seen; be safe, not sorry
                raise LookupError("inline content without a source position")
            return
        first, last = token.map
        start = self.line_starts[first]
        if token.type == "html_block":
            self.found.add(self.text.index("<", start))
        elif token.type == "definition":
            if is_dangerous_url(str(token.meta.get("url", ""))):
                self.found.add(self.text.index("[", start))
        elif token.type in ("fence", "code_block"):
            self.exempt.append((start, self._line(max(first, last - 1))[1]))
        elif token.type == "inline" and token.children:
            self._inline(token, first, last)

    def _locate(self, token: Token, first: int) -> list[int] | None:
        """Where each line of the inline token's content starts in the text, if found.

        markdown-it keeps no inline positions; an inline token's lines are its
        source lines without container markers and indentation (and, at the
        ends, whitespace), so each is found at the end of, or inside, its line.
        """
        parts = token.content.split("\n")
        starts = []
        for k, part in enumerate(parts):
            number = first + k
            if number >= len(self.line_starts):
                return None
            begin, end = self._line(number)
            line = self.text[begin:end]
            cursor = self.cursor.get(number, 0)
            if len(parts) > 1 and (k < len(parts) - 1 or line.endswith(part)):
                if not line.endswith(part):
                    return None
                column = len(line) - len(part)
            elif k > 0:
                trimmed = line.rstrip()
                if not trimmed.endswith(part):
                    return None
                column = len(trimmed) - len(part)
            else:
                indent = len(line) - len(line.lstrip())
                if cursor <= indent and line.startswith(part, indent):
                    column = indent
                else:
                    column = line.find(part, cursor)
            if column < 0 or column < cursor:
                return None
            self.cursor[number] = column + len(part)
            starts.append(begin + column)
        return starts

    def _inline(self, token: Token, first: int, last: int) -> None:
        content = token.content
        starts = self._locate(token, first)
        breaks = [i for i, c in enumerate(content) if c == "\n"]

        def where(index: int) -> int | None:
            if starts is None:
                return None
            k = bisect.bisect_left(breaks, index)
            return starts[k] + index - (breaks[k - 1] + 1 if k else 0)

        unplaced = False
        for child in token.children or ():
            span = child.meta.get("pk_span") if child.meta else None
            if span is None or child.meta.get("pk_src") is not content:
                continue
            risky, offset = False, 0
            if child.type == "html_inline":
                risky = True
            elif child.type == "link_open":
                risky = is_dangerous_url(str(child.attrGet("href") or ""))
            elif child.type == "image":  # its "[" (after "!"); alt text may hide things too
                risky = is_dangerous_url(str(child.attrGet("src") or "")) or _unsafe(child.children)
                offset = 1
            elif child.type != "code_inline":
                continue
            at, end = where(span[0]), where(span[1] - 1)
            if at is None or end is None:
                unplaced = unplaced or risky
            elif risky:
                self.found.add(at + offset)
            else:  # code, or a safe link: the net leaves it alone
                self.exempt.append((at, end + 1))
        if unplaced:  # a finding we cannot place: escape every opener on these lines
            begin, end = self.line_starts[first], self._line(max(first, last - 1))[1]
            self.found.update(
                i for i in range(begin, end) if self.text[i] in "<[" and not self._escaped(i)
            )

    def _escaped(self, index: int) -> bool:
        backslashes = 0
        while index - backslashes > 0 and self.text[index - backslashes - 1] == "\\":
            backslashes += 1
        return backslashes % 2 == 1

    def _net(self) -> None:
        if "<" not in self.text:
            return
        merged: list[list[int]] = []
        for begin, end in sorted(self.exempt):
            if merged and begin <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([begin, end])
        starts = [begin for begin, _ in merged]
        for match in _TAG_LIKE.finditer(self.text):
            at = match.start()
            k = bisect.bisect_right(starts, at) - 1
            if (k < 0 or at >= merged[k][1]) and not self._escaped(at):
                self.found.add(at)


def _unsafe(tokens: Sequence[Token] | None) -> bool:
    """True if inline ``tokens`` (an image's alt text) hold raw HTML or a dangerous link."""
    for token in tokens or ():
        if token.type == "html_inline":
            return True
        url = token.attrGet("href") if token.type == "link_open" else token.attrGet("src")
        if token.type in ("link_open", "image") and is_dangerous_url(str(url or "")):
            return True
        if _unsafe(token.children):
            return True
    return False


def _cut_math(text: str, spans: Sequence[MathSpan]) -> tuple[str, list[int], list[int]]:
    """``text`` with each math span replaced by ``@@i@@``, as JupyterLab does before parsing.

    Returns the new text and, for mapping positions back, the start of every
    kept segment in the new text and in ``text``.
    """
    parts: list[str] = []
    new_starts, old_starts = [0], [0]
    size, last = 0, 0
    for i, span in enumerate(spans):
        placeholder = f"@@{i}@@"
        parts += [text[last : span.start], placeholder]
        size += span.start - last + len(placeholder)
        last = span.end
        new_starts.append(size)
        old_starts.append(span.end)
    parts.append(text[last:])
    return "".join(parts), new_starts, old_starts


def _edits(text: str) -> dict[int, str]:
    """Position in ``text`` -> replacement for each character that opens something dangerous."""
    spans = find_math(text)
    found = set(_Scan(text, spans).found)
    if spans:
        cut, new_starts, old_starts = _cut_math(text, spans)
        for at in _Scan(cut).found:
            k = bisect.bisect_right(new_starts, at) - 1
            found.add(old_starts[k] + at - new_starts[k])
    math_starts = [s.start for s in spans]
    edits = {}
    for at in found:
        char = text[at]
        if char not in "<[":
            raise AssertionError(f"position {at} holds {char!r}")
        k = bisect.bisect_right(math_starts, at) - 1
        in_math = k >= 0 and at < spans[k].end
        if in_math:
            edits[at] = "\\lt " if char == "<" else "\\lbrack "
        else:
            edits[at] = "&lt;" if char == "<" else "&#91;"
    return edits


def _apply(text: str, edits: dict[int, str]) -> str:
    out, last = [], 0
    for at in sorted(edits):
        out += [text[last:at], edits[at]]
        last = at + 1
    out.append(text[last:])
    return "".join(out)


_MAX_PASSES = 8


def safe_markdown(text: str) -> str:
    """Markdown whose raw HTML and dangerous links are inert, otherwise as written.

    For ``text/markdown`` outputs (see the module docstring for what changes).
    Deterministic, so final outputs stay byte-stable for nbval.
    """
    text = jupyter_delimiters(_newlines(text))
    try:
        for _ in range(_MAX_PASSES):
            if "<" not in text and "[" not in text:
                return text
            edits = _edits(text)
            if not edits:
                return text
            text = _apply(text, edits)
    except Exception:  # a bug here must not show the answer unescaped
        logger.warning("could not analyse an answer's Markdown; escaping it whole", exc_info=True)
    return text.replace("<", "&lt;").replace("[", "&#91;")


def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


# --- HTML for the chat ------------------------------------------------------------------


class _Renderer(MarkdownIt):
    """markdown-it whose links to dangerous URLs stay text (see :func:`is_dangerous_url`)."""

    def validateLink(self, url: str) -> bool:
        return not is_dangerous_url(url)


_PLACEHOLDER = re.compile(r"@@(\d+)@@")
_DISPLAY = ("$$", "\\[", "\\\\[")


def _math_rule(state: StateInline, silent: bool) -> bool:
    """A math placeholder (see :func:`render_markdown`) becomes one ``pk_math`` token."""
    spans = state.env.get("pk_math")
    if not spans or state.src[state.pos] != "@":
        return False
    match = _PLACEHOLDER.match(state.src, state.pos)
    if match is None or int(match.group(1)) >= len(spans):
        return False
    if not silent:
        token = state.push("pk_math", "", 0)
        token.content, token.info = spans[int(match.group(1))]
    state.pos = match.end()
    return True


def _math_html(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    source, opener = tokens[idx].content, tokens[idx].info
    if opener == "@@":  # a literal "@@3@@" in the answer
        return html.escape(source)
    if opener in ("\\\\(", "\\\\["):  # Jupyter's doubled delimiters -> MathJax's
        source = source[1:-3] + source[-2:]
    display = opener in _DISPLAY or opener.startswith("\\begin")
    kind = "pk-math pk-math-display" if display else "pk-math"
    return f'<span class="{kind}">{html.escape(source)}</span>'


def _link_open(renderer: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    # A link followed inside JupyterLab would replace the whole application.
    tokens[idx].attrSet("target", "_blank")
    tokens[idx].attrSet("rel", "noopener noreferrer")
    return str(renderer.renderToken(tokens, idx, options, env))


def _math_in_code(state: Any) -> None:
    """Put math back into code: math was cut out before code was known."""
    spans = state.env.get("pk_math")
    if not spans:
        return

    def put_back(text: str) -> str:
        return _PLACEHOLDER.sub(
            lambda m: spans[int(m[1])][0] if int(m[1]) < len(spans) else m[0], text
        )

    for token in _walk(state.tokens):
        if token.type in ("fence", "code_block", "code_inline"):
            token.content = put_back(token.content)


def _walk(tokens: Iterable[Token]) -> Iterable[Token]:
    for token in tokens:
        yield token
        yield from _walk(token.children or ())


@lru_cache(maxsize=1)
def _renderer() -> MarkdownIt:
    md = _Renderer("commonmark", {"html": False, "linkify": False, "highlight": highlight})
    md.enable(["table", "strikethrough"])
    md.inline.ruler.before("text", "pk_math", _math_rule)
    md.core.ruler.push("pk_math_in_code", _math_in_code)
    md.add_render_rule("pk_math", _math_html)
    md.add_render_rule("link_open", _link_open)
    return md


def render_markdown(text: str) -> str:
    """Markdown (CommonMark, tables, strikethrough, TeX math) to HTML safe for ``innerHTML``.

    Raw HTML is escaped, dangerous links stay text, math is kept as its source
    (see the module docstring).
    """
    if not text:
        return ""
    text = _newlines(text)
    spans = find_math(text, latex=True)
    if not spans:
        return str(_renderer().render(text))
    cut = _cut_math(text, spans)[0]
    math = [(text[s.start : s.end], s.opener) for s in spans]
    return str(_renderer().render(cut, {"pk_math": math}))


def escape_text(text: str) -> str:
    """Plain text (a user's message) as HTML; newlines are kept by ``white-space: pre-wrap``."""
    return html.escape(text, quote=False)


# --- Markdown we write ourselves ----------------------------------------------------------

_MD_SPECIAL = re.compile(r"[\\`*_\[\]<>#|~$&]")


def escape_markdown(text: str) -> str:
    """``text`` on one line, shown literally: no Markdown, no HTML, no entities, no math.

    A backslash becomes an entity rather than ``\\\\``: Jupyter reads ``\\\\(`` as
    the start of math before any Markdown escape is applied.
    """
    return _MD_SPECIAL.sub(_escape_one, " ".join(text.split()))


def _escape_one(match: re.Match[str]) -> str:
    return "&#92;" if match[0] == "\\" else "\\" + match[0]


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)


def close_open_fence(text: str) -> str:
    """``text`` with a closing fence added if it stops inside a fenced code block.

    A stopped answer often ends mid-code; without this, the note under it would
    be rendered as code.
    """
    opener: str | None = None
    for match in _FENCE.finditer(text):
        fence = match.group(1)
        if opener is None:
            opener = fence
        elif fence[0] == opener[0] and len(fence) >= len(opener):
            opener = None
    if opener is None:
        return text
    return text + ("" if text.endswith("\n") else "\n") + opener
