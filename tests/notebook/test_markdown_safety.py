"""Model text shown as Markdown can never become live HTML or script, and its math arrives intact.

Both outputs of the presentation core are checked the way a browser would meet
them: the cell's ``text/markdown`` is rendered by a *permissive* CommonMark
renderer (raw HTML on, every link accepted, as JupyterLab does for a live
kernel's outputs) and the resulting elements and URLs are inspected; the chat's
HTML is inspected as it is. URLs are judged after the decoding a browser does
(entities, then dropping tabs, newlines and control characters).
"""

from __future__ import annotations

import html
import random
import re
import urllib.parse
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from pk_notebook.notebook.live import Note, render_bundle
from pk_notebook.notebook.markdown import render_markdown, safe_markdown

# --- how a browser would meet the output ------------------------------------------------

MARKDOWN_TAGS = {
    "p", "a", "em", "strong", "code", "pre", "ul", "ol", "li", "blockquote", "hr", "br",
    "img", "table", "thead", "tbody", "tr", "th", "td", "del", "s", "span",
    "h1", "h2", "h3", "h4", "h5", "h6",
}  # fmt: skip


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def elements(markup: str) -> _Elements:
    parser = _Elements()
    parser.feed(markup)
    parser.close()
    return parser


def scheme(url: str) -> str:
    """The scheme a browser would use for ``url`` ('' for a relative URL)."""
    decoded = urllib.parse.unquote(html.unescape(url))
    decoded = re.sub(r"[\x00-\x20\x7f-\x9f]", "", decoded).lower()
    return decoded.split(":", 1)[0] if re.match(r"[a-z][a-z0-9+.-]*:", decoded) else ""


class _Permissive(MarkdownIt):
    def validateLink(self, url: str) -> bool:
        return True


def permissive_html(markdown: str) -> str:
    """What a renderer that trusts the Markdown (raw HTML, any link) makes of it."""
    return str(_Permissive("commonmark", {"html": True}).enable(["table"]).render(markdown))


def assert_inert(markup: str) -> None:
    """No script can run from ``markup``: only Markdown's own elements, no handlers, safe URLs."""
    for tag, attrs in elements(markup).tags:
        assert tag in MARKDOWN_TAGS, f"raw HTML element <{tag}> in {markup!r}"
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"event handler {handlers} in {markup!r}"
        for name in ("href", "src"):
            if name in attrs:
                assert scheme(attrs[name]) not in ("javascript", "vbscript", "data"), markup


def cell(answer: str) -> str:
    return render_bundle(answer)["text/markdown"]


def chat_text(markup: str) -> str:
    return "".join(elements(markup).text)


# --- dangerous links: every spelling ----------------------------------------------------

# Each of these was a live script (or data:) link in the cell before the presentation core.
LINK_FORMS = [
    pytest.param("[x][1]\n\n[1]: javascript:alert(1)", id="reference-definition"),
    pytest.param("[x]\n\n[x]: JAVASCRIPT:alert(1) 'title'", id="shortcut-reference"),
    pytest.param("![i][p]\n\n[p]: data:image/svg+xml;base64,PHN2Zz4=", id="image-reference-data"),
    pytest.param("[x](&#106;avascript:alert(1))", id="decimal-entity"),
    pytest.param("[x](&#x6A;avascript:alert(1))", id="hex-entity"),
    pytest.param("[x](javascript&colon;alert(1))", id="named-entity-colon"),
    pytest.param("[x](java&#9;script:alert(1))", id="tab-entity-inside-scheme"),
    pytest.param("[x](&#1;javascript:alert(1))", id="control-char-entity-before"),
    pytest.param("[x](VbScRiPt&#58;msgbox(1))", id="mixed-case-vbscript-entity-colon"),
    pytest.param("| a |\n|---|\n| [x][r] |\n\n[r]: javascript:alert(1)", id="reference-in-table"),
    pytest.param("> [x][q]\n>\n> [q]: javascript:alert(1)", id="reference-in-blockquote"),
]

# Regression guards: already inert in the cell before the presentation core.
GUARD_FORMS = [
    pytest.param("[click](javascript:alert(1))", id="inline"),
    pytest.param("[x]( JavaScript:alert(1))", id="spaced-mixed-case"),
    pytest.param("[x](data:text/html;base64,PHNjcmlwdD4=)", id="data-html"),
    pytest.param("![i](data:image/png;base64,iVBORw0KGgo=)", id="data-image"),
    pytest.param("<javascript:alert(1)>", id="autolink"),
    pytest.param("<JaVaScRiPt:alert(1)>", id="autolink-mixed-case"),
    pytest.param("[x](<java\tscript:alert(1)>)", id="raw-tab-in-pointy-destination"),
    pytest.param("![i](javascript:alert(1))", id="image"),
]

# markdown-it's own link check lets these through: the chat showed them as links.
CHAT_DATA_FORMS = [
    pytest.param("![i](data:image/png;base64,iVBORw0KGgo=)", id="data-image"),
    pytest.param("[x](data:image/webp;base64,UklGRg==)", id="data-image-link"),
    pytest.param("![i][p]\n\n[p]: DATA:image/gif;base64,R0lGOD==", id="data-image-reference"),
]


@pytest.mark.parametrize("answer", LINK_FORMS)
def test_dangerous_link_is_no_link_in_the_cell(answer: str) -> None:
    assert_inert(permissive_html(cell(answer)))


@pytest.mark.parametrize("answer", GUARD_FORMS)
def test_guard_links_stay_inert_in_the_cell(answer: str) -> None:
    assert_inert(permissive_html(cell(answer)))


@pytest.mark.parametrize("answer", CHAT_DATA_FORMS)
def test_data_url_is_no_link_in_the_chat(answer: str) -> None:
    assert_inert(render_markdown(answer))


@pytest.mark.parametrize("answer", LINK_FORMS + GUARD_FORMS)
def test_guard_links_stay_inert_in_the_chat(answer: str) -> None:
    # Regression guards: markdown-it's link check already refused these.
    assert_inert(render_markdown(answer))


def test_a_link_that_exists_only_once_math_is_cut_out_is_defused() -> None:
    # JupyterLab cuts "$a b$" out before parsing: "[x](javascript:@@0@@)" is a link there.
    assert cell("[x](javascript:$a b$)").startswith("&#91;x]")


def test_safe_links_stay_links_byte_for_byte() -> None:
    answer = "See [docs](https://example.com/a_b) and <https://example.org> and ![p](img/p.png)."
    assert cell(answer) == answer
    tags = [tag for tag, _ in elements(render_markdown(answer)).tags]
    assert tags.count("a") == 2 and "img" in tags


# --- raw HTML ---------------------------------------------------------------------------

# Raw HTML that the line-based sanitiser took for code and left live.
HTML_FORMS = [
    pytest.param("\\`<img src=x onerror=alert(1)>`", id="escaped-backtick-fake-code-span"),
    pytest.param("``<img src=x onerror=alert(1)>`", id="unbalanced-backticks"),
    pytest.param("```a`b\n<img src=x onerror=alert(1)>\n", id="backtick-in-info-is-no-fence"),
]

GUARD_HTML = [
    pytest.param('Look: <img src=x onerror="alert(1)">', id="img-onerror"),
    pytest.param("<script>alert(1)</script>", id="script-block"),
    pytest.param("a <details open ontoggle=alert(1)> b", id="inline-ontoggle"),
    pytest.param("<div>\n[a](javascript:alert(1))\n</div>", id="html-block-hiding-a-link"),
    pytest.param("<!-- a --><svg onload=alert(1)>", id="comment-then-svg"),
    pytest.param("- item <iframe src=javascript:alert(1)>", id="in-list-item"),
]


@pytest.mark.parametrize("answer", HTML_FORMS)
def test_raw_html_is_text_in_the_cell(answer: str) -> None:
    assert_inert(permissive_html(cell(answer)))


@pytest.mark.parametrize("answer", GUARD_HTML)
def test_guard_html_stays_text_in_the_cell(answer: str) -> None:
    # Regression guards: the old sanitiser escaped every "<" outside what it took for code.
    assert_inert(permissive_html(cell(answer)))


@pytest.mark.parametrize("answer", HTML_FORMS + GUARD_HTML)
def test_guard_html_stays_text_in_the_chat(answer: str) -> None:
    # Regression guards: the chat's markdown-it never rendered raw HTML.
    assert_inert(render_markdown(answer))


def test_only_the_opening_characters_change() -> None:
    answer = "Use <b>bold</b> or [x][1].\n\n[1]: javascript:alert(1)\n"
    assert cell(answer) == "Use &lt;b>bold&lt;/b> or &#91;x][1].\n\n&#91;1]: javascript:alert(1)\n"


# --- math and code arrive intact --------------------------------------------------------

MATH = [
    pytest.param("The result holds if $p < 0.05$.", "$p < 0.05$", id="inline-dollar"),
    pytest.param("We sum $\\sum_{i<n} x_i$ here.", "$\\sum_{i<n} x_i$", id="sum-index"),
    pytest.param("Display:\n\n$$a<b$$\n", "$$a<b$$", id="display-dollar"),
    pytest.param(
        "\\begin{align}a &<b \\\\ c&>d\\end{align}",
        "\\begin{align}a &<b \\\\ c&>d\\end{align}",
        id="environment",
    ),
]

# Markdown used to eat these in the chat (emphasis, escapes); the cell never touched them.
CHAT_MATH = [
    pytest.param("So $x*y*z$ and $y_1 * z_1$.", "$x*y*z$", id="emphasis-chars-in-math"),
    pytest.param("Sets $\\{a\\}$ stay.", "$\\{a\\}$", id="escaped-braces-in-math"),
]

DISPLAYED = "\\[ \\sum_{i<n} i < n^2 \\]"
LATEX = [
    pytest.param("Inline \\(x<y\\) here.", "\\(x<y\\)", id="latex-inline"),
    pytest.param(f"Display:\n\n{DISPLAYED}\n", DISPLAYED, id="latex-display"),
]


@pytest.mark.parametrize("answer, math", MATH)
def test_math_arrives_intact_in_the_cell(answer: str, math: str) -> None:
    assert cell(answer) == answer
    assert math in cell(answer)


@pytest.mark.parametrize("answer, math", LATEX)
def test_latex_delimiters_are_doubled_for_jupyter_in_the_cell(answer: str, math: str) -> None:
    # Jupyter typesets \\( \\) and \\[ \\]; a single backslash would be eaten as an escape.
    doubled = "\\" + math[:-2] + "\\" + math[-2:]
    assert cell(answer) == answer.replace(math, doubled)


@pytest.mark.parametrize("answer, math", MATH + CHAT_MATH + LATEX)
def test_math_arrives_intact_in_the_chat(answer: str, math: str) -> None:
    markup = render_markdown(answer)
    assert math in chat_text(markup), markup
    assert f">{html.escape(math, quote=False)}</span>" in markup.replace("&quot;", '"')
    assert 'class="pk-math' in markup


CODE = [
    pytest.param("Use `a<b` when $p < 0.05$.", id="inline-code-and-math"),
    pytest.param("```python\nif a<b and c>d: pass\n```\n\nthen $a<b$", id="fenced-code-and-math"),
    pytest.param("    a<b>c\n\nand $$a<b$$", id="indented-code-and-math"),
]


@pytest.mark.parametrize("answer", CODE)
def test_code_and_math_are_both_left_as_written_in_the_cell(answer: str) -> None:
    assert cell(answer) == answer


@pytest.mark.parametrize("answer", CODE)
def test_code_and_math_in_the_chat(answer: str) -> None:
    markup = render_markdown(answer)
    assert "a&lt;b" in markup and "<code" in markup
    assert 'class="pk-math' in markup
    assert_inert(markup)


def test_a_tag_hidden_in_math_is_harmless_without_math_support() -> None:
    # A renderer without TeX would read "$<img ...>$" as raw HTML: inside math the
    # "<" becomes TeX's \lt, which typesets the same.
    body = cell("$<img src=x onerror=alert(1)>$")
    assert body == "$\\lt img src=x onerror=alert(1)>$"
    assert_inert(permissive_html(body))


def test_notes_stay_as_written_and_are_not_math() -> None:
    bundle = render_bundle("Answer", notes=[Note("⚠", "Failed:", "bad [x] and \\(y\\) $5 $6")])
    assert bundle["text/markdown"] == (
        "Answer\n\n> ⚠ **Failed:** bad \\[x\\] and &#92;(y&#92;) \\$5 \\$6"
    )


def test_plain_text_output_keeps_the_answer_verbatim() -> None:
    answer = "1 < 2 and <b>bold</b>"
    bundle = render_bundle(answer)
    assert bundle["text/plain"] == answer
    assert bundle["text/markdown"] == "1 < 2 and &lt;b>bold&lt;/b>"


def test_text_without_markup_is_untouched() -> None:
    answer = "## A day in Lisbon\n\n- **Morning:** coffee"
    assert safe_markdown(answer) == answer


def test_a_code_answer_cannot_smuggle_html_after_its_fence() -> None:
    answer = "```\nx\n```\n<img src=x onerror=alert(1)>"
    body = render_bundle(answer, format="code")["text/markdown"]
    assert_inert(permissive_html(body))


# --- random markup ----------------------------------------------------------------------

PIECES = [
    "[", "]", "(", ")", "<", ">", "`", "``", "$", "$$", "\\", "\\(", "\\)", "\\[", "\\]", "!",
    "\n", "\n\n", " ", "    ", "> ", "- ", "| ", "---", "```", "~~~", "#", "*", "_", ":", '"',
    "javascript:", "JaVa&#9;script:", "&#106;avascript:", "data:", "vbscript:", "alert(1)",
    "img src=x onerror=alert(1)", "a", "x", "1", "@@0@@", "<b>", "</b>", "<!--", "-->",
    "[1]: ", "[x]", "(javascript:alert(1))", "<javascript:alert(1)>", "{", "}", "&lt;", "&",
]  # fmt: skip


def jupyter_view(markdown: str) -> str:
    """The Markdown JupyterLab's parser reads: math cut out first (see texmath.py)."""
    from pk_notebook.notebook.texmath import find_math

    parts, last = [], 0
    for i, span in enumerate(find_math(markdown)):
        parts += [markdown[last : span.start], f"@@{i}@@"]
        last = span.end
    return "".join(parts) + markdown[last:]


@pytest.mark.parametrize("seed", range(4))
def test_random_markup_is_always_inert_and_stable(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(400):
        answer = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25)))
        body = safe_markdown(answer)
        assert_inert(permissive_html(body))
        assert_inert(permissive_html(jupyter_view(body)))
        assert_inert(render_markdown(answer))
        assert safe_markdown(body) == body, answer  # a second pass changes nothing


def test_if_the_analysis_fails_everything_is_escaped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pk_notebook.notebook import markdown

    def broken(text: str) -> dict[int, str]:
        raise LookupError("simulated")

    monkeypatch.setattr(markdown, "_edits", broken)
    body = safe_markdown("<b>x</b> [y](javascript:alert(1))")
    assert body == "&lt;b>x&lt;/b> &#91;y](javascript:alert(1))"
    assert "escaping it whole" in caplog.text
