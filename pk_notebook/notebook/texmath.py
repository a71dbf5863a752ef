"""Where the TeX math is in a Markdown answer, found the way Jupyter finds it.

Why not a markdown-it math plugin: in JupyterLab the math is cut out of the
Markdown *before* the Markdown parser runs (``removeMath`` in
``@jupyterlab/rendermime``), so what counts as math there is decided by a scan
of delimiters, not by Markdown syntax: ``$...$``, ``$$...$$``, ``\\(...\\)``,
``\\[...\\]`` (doubled backslashes, Jupyter's convention) and
``\\begin{env}...\\end{env}``, never across a blank line, with braces balanced,
and never inside code (the ``$`` of fenced blocks and one-line code spans are
masked first). :func:`find_math` reproduces that scan, so the sanitiser in
:mod:`.markdown` sees the answer exactly as the notebook will: a ``<`` inside
math is never taken for HTML, and a link that only exists once the math is cut
out (``[x](javascript:$a b$)``) is still found.

Models usually write LaTeX's own ``\\(...\\)`` and ``\\[...\\]`` with *single*
backslashes, which Jupyter does not see as math (its Markdown parser then eats
the backslashes). ``latex=True`` also finds those; the cell output doubles
their backslashes (:func:`jupyter_delimiters`) and the chat keeps them as
written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MathSpan", "find_math", "jupyter_delimiters"]

# The delimiter tokens Jupyter splits on, plus LaTeX's single-backslash brackets
# (last, so that ``\\(`` is always read as Jupyter's doubled form first).
_TOKENS = re.compile(
    r"\$\$?|\\(?:begin|end)\{[a-z]*\*?\}|\\[{}$]|[{}]|(?:\n\s*)+|@@\d+@@"
    r"|\\\\[()[\]]|\\[()[\]]",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^(`{3,}|~{3,})[^`\n]*\n[\s\S]*?^\1`*$", re.MULTILINE)
_CODE_SPAN = re.compile(r"(^|[^\\])(`+)([^\n]*?[^`\n])\2(?!`)", re.MULTILINE)
_BLANK_LINE = re.compile(r"\n.*\n")


@dataclass(frozen=True)
class MathSpan:
    """``text[start:end]`` is math; ``opener`` is its first delimiter as written.

    ``opener`` is ``"@@"`` for a literal ``@@N@@`` in the text, which Jupyter
    also sets aside (it uses that shape for its own placeholders).
    """

    start: int
    end: int
    opener: str

    @property
    def latex(self) -> bool:
        """True for LaTeX's single-backslash ``\\(`` or ``\\[``, which Jupyter does not see."""
        return self.opener in ("\\(", "\\[")


def _masked(text: str, latex: bool) -> str:
    """``text`` with every ``$`` inside code replaced (same length), so code holds no math.

    With ``latex`` backslashes in code are masked too (Jupyter masks only ``$``).
    """
    if "`" not in text and "~~~" not in text:
        return text
    table = str.maketrans("$\\", "~~") if latex else str.maketrans("$", "~")

    def blank(match: re.Match[str]) -> str:
        return match.group(0).translate(table)

    return _CODE_SPAN.sub(blank, _FENCE.sub(blank, text))


def find_math(text: str, *, latex: bool = False) -> list[MathSpan]:
    """The math spans of ``text`` in order (``text`` with ``\\n`` line endings).

    ``latex=False`` finds what JupyterLab and nbconvert typeset; ``latex=True``
    also finds ``\\(...\\)`` and ``\\[...\\]`` with single backslashes.
    """
    if not any(c in text for c in "$\\@"):
        return []
    spans: list[MathSpan] = []
    start: re.Match[str] | None = None
    end = ""
    last: re.Match[str] | None = None
    braces = 0
    for token in _TOKENS.finditer(_masked(text, latex)):
        block = token.group(0)
        if block.startswith("@"):
            if start is None:
                spans.append(MathSpan(token.start(), token.end(), "@@"))
        elif start is not None:
            if block == end:
                if braces:
                    last = token
                else:
                    spans.append(MathSpan(start.start(), token.end(), start.group(0)))
                    start, last = None, None
            elif _BLANK_LINE.search(block):
                if last is not None:
                    spans.append(MathSpan(start.start(), last.end(), start.group(0)))
                start, last, braces = None, None, 0
            elif block == "{":
                braces += 1
            elif block == "}" and braces:
                braces -= 1
        elif block in ("$", "$$"):
            start, end, braces = token, block, 0
        elif block in ("\\\\(", "\\\\["):
            start, end, braces = token, "\\\\" + (")" if block[-1] == "(" else "]"), 0
        elif latex and block in ("\\(", "\\["):
            start, end, braces = token, "\\" + (")" if block[-1] == "(" else "]"), 0
        elif block[1:6] == "begin":
            start, end, braces = token, "\\end" + block[6:], 0
    if start is not None and last is not None:
        spans.append(MathSpan(start.start(), last.end(), start.group(0)))
    return spans


def jupyter_delimiters(text: str) -> str:
    """``text`` with LaTeX's ``\\(``/``\\)``/``\\[``/``\\]`` math delimiters doubled.

    Jupyter typesets ``\\\\(x\\\\)`` but shows ``\\(x\\)`` as ``(x)``; the math
    between the delimiters is left byte for byte.
    """
    spans = [span for span in find_math(text, latex=True) if span.latex]
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for span in spans:
        out += [text[last : span.start], "\\", text[span.start : span.end - 2], "\\"]
        last = span.end - 2
    out.append(text[last:])
    return "".join(out)
