"""A saved answer exported with ``jupyter nbconvert --to html``: math intact, nothing live.

nbconvert renders ``text/markdown`` outputs with its own Markdown parser (mistune,
with raw HTML passed through and no link check), so this is the saved notebook's
answer meeting a third renderer, after JupyterLab and the chat.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import nbformat
import pytest
from nbconvert import HTMLExporter

from pk_notebook.notebook.live import render_bundle

ANSWER = (
    "Significant if $p < 0.05$; the sum $\\sum_{i<n} x_i$ grows.\n\n"
    "$$a<b$$\n\n"
    "Inline \\(x<y\\) and display:\n\n"
    "\\[ \\sum_{i<n} i < n^2 \\]\n\n"
    "Code `a<b` and\n\n```python\nif a<b: pass\n```\n\n"
    "Links: [inline](javascript:alert(1)) [ref][1] [entity](&#106;avascript:alert(2)) "
    "<javascript:alert(3)> [tab](java&#9;script:alert(4)) [vb](VBScript:x) "
    "![d](data:image/png;base64,AAAA)\n\n"
    "Raw: <img src=x onerror=alert(5)> <script>alert(6)</script> <b>bold</b>\n\n"
    "[1]: javascript:alert(7)\n"
)


class _Output(HTMLParser):
    """Elements and text inside the exported ``text/markdown`` output."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if self.depth:
            self.tags.append((tag, values))
            if tag not in ("br", "hr", "img"):
                self.depth += 1
        elif values.get("data-mime-type") == "text/markdown":
            self.depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in ("br", "hr", "img"):
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.text.append(data)


def _scheme(url: str) -> str:
    url = re.sub(r"[\x00-\x20\x7f-\x9f]", "", url).lower()
    return url.split(":", 1)[0] if ":" in url else ""


@pytest.fixture(scope="module")
def exported() -> tuple[str, _Output]:
    notebook = nbformat.v4.new_notebook()
    output = nbformat.v4.new_output("display_data", data=render_bundle(ANSWER))
    notebook.cells.append(nbformat.v4.new_code_cell("%%stream\nExplain", outputs=[output]))
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(notebook)
    parsed = _Output()
    parsed.feed(body)
    assert parsed.tags, "the markdown output was found in the export"
    return body, parsed


def test_math_is_intact_in_the_export(exported: tuple[str, _Output]) -> None:
    _, output = exported
    text = "".join(output.text)
    for math in ("$p < 0.05$", "$\\sum_{i<n} x_i$", "$$a<b$$", "\\sum_{i<n} i < n^2"):
        assert math in text, text
    # nbconvert typesets Jupyter's \\( \\) and shows it as MathJax-ready $...$.
    assert "$x<y$" in text or "\\(x<y\\)" in text, text
    assert "&lt;" not in text and "&amp;" not in text


def test_no_live_link_or_element_in_the_export(exported: tuple[str, _Output]) -> None:
    _, output = exported
    allowed = {"p", "code", "pre", "a", "em", "strong", "span", "img", "br", "div"}
    for tag, attrs in output.tags:
        assert tag in allowed, f"raw <{tag}> in the export"
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        for name in ("href", "src"):
            if name in attrs:
                assert _scheme(attrs[name]) not in ("javascript", "vbscript", "data"), attrs
    assert not [tag for tag, _ in output.tags if tag in ("a", "img")], "no link survived"
    text = "".join(output.text)
    assert "<img src=x onerror=alert(5)>" in text and "<b>bold</b>" in text  # shown as text
