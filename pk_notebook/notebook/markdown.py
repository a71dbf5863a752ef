"""Markdown to safe, theme-aware HTML for widgets that show model answers.

Why on the Python side: an ``ipywidgets.HTML`` value is set with ``innerHTML``
and is not sanitized by the front end, and a model's answer is untrusted text.
markdown-it-py with ``html=False`` escapes every raw tag, its link validator
drops ``javascript:`` and ``data:`` URLs, and the result is the same string in
tests and in the browser. Code blocks are highlighted with Pygments into short
CSS classes (prefix ``pk-hl-``) that :func:`highlight_css` maps onto
JupyterLab's ``--jp-mirror-editor-*`` variables, so code follows the light and
dark themes without a stylesheet per theme.

Streaming re-renders the whole answer on every (throttled) refresh, so the cost
per refresh matters: code blocks that did not change since the last refresh
come from a small cache, and an unclosed fence (a code block still arriving)
renders as a code block up to the end, as it will once closed.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from typing import Any

__all__ = ["escape_text", "highlight_css", "neutralize_html", "render_markdown"]

_CLASS_PREFIX = "pk-hl-"


@lru_cache(maxsize=1)
def _parser() -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "highlight": _highlight})
    md.enable(["table", "strikethrough"])

    def link_open(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # A link followed inside JupyterLab would replace the whole application.
        tokens[idx].attrSet("target", "_blank")
        tokens[idx].attrSet("rel", "noopener noreferrer")
        return str(renderer.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    return md


def render_markdown(text: str) -> str:
    """Markdown (CommonMark plus tables and strikethrough) to HTML with raw HTML escaped."""
    if not text:
        return ""
    return str(_parser().render(text))


_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_SCRIPT_LINK = re.compile(r"\]\(\s*(?:javascript|vbscript|data):", re.IGNORECASE)


def neutralize_html(text: str) -> str:
    """Markdown with raw HTML made inert, for ``text/markdown`` outputs.

    JupyterLab renders the outputs a running kernel produces as *trusted*, so
    HTML inside them is not sanitized: an answer containing
    ``<img src=x onerror=...>`` would run script in the notebook. Escaping ``<``
    outside code keeps such text visible as text; code blocks and code spans are
    left alone (they are shown literally anyway), and links to ``javascript:``,
    ``vbscript:`` or ``data:`` URLs lose their scheme. Deterministic, so final
    outputs stay byte-stable for nbval.
    """
    if "<" not in text and "](" not in text:
        return text
    out: list[str] = []
    opener: str | None = None
    for line in text.splitlines(keepends=True):
        fence = _FENCE_LINE.match(line)
        if opener is not None:
            if fence and fence.group(1)[0] == opener[0] and len(fence.group(1)) >= len(opener):
                opener = None
            out.append(line)
        elif fence:
            opener = fence.group(1)
            out.append(line)
        else:
            out.append(_neutralize_line(line))
    return "".join(out)


def _neutralize_line(line: str) -> str:
    parts: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(line):
        parts.append(_inert(line[last : span.start()]))
        parts.append(span.group(0))
        last = span.end()
    parts.append(_inert(line[last:]))
    return "".join(parts)


def _inert(text: str) -> str:
    return _SCRIPT_LINK.sub("](blocked-", text.replace("<", "&lt;"))


def escape_text(text: str) -> str:
    """Plain text (a user's message) as HTML; newlines are kept by ``white-space: pre-wrap``."""
    return html.escape(text, quote=False)


@lru_cache(maxsize=256)
def _highlight(code: str, lang: str, attrs: str) -> str:
    """Pygments spans for a fenced block; markdown-it escapes the code itself when we return ''."""
    if not lang:
        return ""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
        from pygments.util import ClassNotFound
    except ImportError:  # pragma: no cover - IPython depends on pygments
        return ""
    try:
        lexer = get_lexer_by_name(lang.split()[0], stripnl=False, ensurenl=False)
    except ClassNotFound:
        return ""
    formatter = HtmlFormatter(nowrap=True, classprefix=_CLASS_PREFIX)
    return str(highlight(code, lexer, formatter))


# Pygments short token classes -> JupyterLab editor colours (both themes define them).
_TOKEN_COLOURS = {
    "keyword": ("k", "kc", "kd", "kn", "kp", "kr", "ow"),
    "builtin": ("nb", "bp", "kt"),
    "def": ("nf", "fm", "nc", "nn"),
    "string": ("s", "s1", "s2", "sa", "sb", "sc", "sd", "se", "sh", "si", "sx", "ss", "dl"),
    "string-2": ("sr",),
    "number": ("m", "mb", "mf", "mh", "mi", "mo", "il"),
    "comment": ("c", "c1", "cm", "ch", "cs", "cp", "cpf"),
    "operator": ("o",),
    "punctuation": ("p",),
    "property": ("na", "py"),
    "tag": ("nt",),
    "meta": ("nd", "ni"),
    "variable-2": ("nv", "vc", "vg", "vi", "vm"),
    "error": ("err",),
    "atom": ("no",),
}


def highlight_css(scope: str) -> str:
    """CSS colouring the highlighted code inside ``scope`` (a selector) with theme variables."""
    rules = []
    for name, classes in _TOKEN_COLOURS.items():
        selectors = ", ".join(f"{scope} .{_CLASS_PREFIX}{c}" for c in classes)
        rules.append(f"{selectors} {{ color: var(--jp-mirror-editor-{name}-color); }}")
    italic = ", ".join(f"{scope} .{_CLASS_PREFIX}{c}" for c in ("c", "c1", "cm", "cs"))
    rules.append(f"{italic} {{ font-style: italic; }}")
    return "\n".join(rules)
