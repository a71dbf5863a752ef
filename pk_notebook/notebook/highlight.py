"""Code blocks in rendered answers, highlighted in JupyterLab's theme colours.

Pygments emits short CSS classes (prefix ``pk-hl-``) and :func:`highlight_css`
maps them onto JupyterLab's ``--jp-mirror-editor-*`` variables, so code follows
the light and dark themes without a stylesheet per theme. Streaming re-renders
the whole answer on every refresh, so unchanged blocks come from a small cache.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["highlight", "highlight_css"]

_CLASS_PREFIX = "pk-hl-"


@lru_cache(maxsize=256)
def highlight(code: str, lang: str, attrs: str) -> str:
    """Pygments spans for a fenced block; markdown-it escapes the code itself when we return ''."""
    if not lang:
        return ""
    try:
        from pygments import highlight as pygmentize
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
    return str(pygmentize(code, lexer, formatter))


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
