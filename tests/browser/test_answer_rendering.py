"""An answer full of math and hostile links, streamed by ``%%stream`` into a real JupyterLab.

JupyterLab renders a live kernel's ``text/markdown`` as trusted and typesets its
math with MathJax, so this is where the presentation core is judged for real:
every formula typesets without an error, no element of the answer's raw HTML
exists, and no anchor leads to ``javascript:``, ``vbscript:`` or ``data:``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .jupyterlab import LabPage, write_notebook

pytestmark = pytest.mark.browser

ANSWER = (
    "## Results\n\n"
    "The effect is significant if $p < 0.05$, and the sum $\\sum_{i<n} x_i$ grows.\n\n"
    "$$a<b$$\n\n"
    "In LaTeX's own delimiters: \\(x<y\\) inline, and displayed:\n\n"
    "\\[ \\sum_{i<n} i < n^2 \\]\n\n"
    "Code stays code: `a<b` and\n\n```python\nif a<b: pass\n```\n\n"
    "Links: [inline](javascript:alert(1)), [reference][1], [decimal](&#106;avascript:alert(2)), "
    "[hex](&#x6A;avascript:alert(3)), [colon](javascript&colon;alert(4)), "
    "[tab](java&#9;script:alert(5)), <javascript:alert(6)>, [vb](VbScript:msgbox(7)), "
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg4KTwvc2NyaXB0Pg==), "
    "![img](data:image/svg+xml;base64,PHN2Zz4=) and a good one: [docs](https://example.com).\n\n"
    "Raw: <img src=x onerror=\"document.title='pwned'\"> <b>bold?</b>\n\n"
    "[1]: javascript:alert(9)\n"
)

INSPECT_JS = """(index) => {
    const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
    const out = cell.querySelector('.jp-OutputArea-output .jp-RenderedMarkdown')
        || cell.querySelector('.jp-RenderedMarkdown');
    if (!out) return null;
    const outsideMath = (el) => !el.closest('mjx-container');
    const urls = [...out.querySelectorAll('[href], [src]')].filter(outsideMath).map(
        (el) => (el.href || el.src || '').toString());
    return {
        math: out.querySelectorAll('mjx-container').length,
        errors: out.querySelectorAll('mjx-merror, [data-mjx-error]').length,
        anchors: [...out.querySelectorAll('a')].filter(outsideMath).map(
            (a) => ({protocol: a.protocol, href: a.getAttribute('href')})),
        urls: urls,
        raw: [...out.querySelectorAll('img, script, iframe, b, details, object, embed')]
            .filter(outsideMath).map((el) => el.outerHTML),
        text: out.innerText,
    };
}"""


def test_math_typesets_and_no_dangerous_link_exists(lab_page: LabPage, lab_root: Path) -> None:
    write_notebook(
        lab_root / "answer-rendering.ipynb",
        [
            "%load_ext pk_notebook\n"
            "from pk_notebook import Pipeline, ProviderMiddleware\n"
            "from pk_notebook.providers import MockProvider\n"
            f"pipe = Pipeline(ProviderMiddleware(MockProvider.scripted({ANSWER!r})))",
            "%%stream --pipeline pipe\nSummarise the study, with formulas and links.",
        ],
    )
    lab = lab_page
    lab.open("answer-rendering.ipynb")
    title = lab.page.title()
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    lab.wait_cell_done(1, timeout=60)
    # Five formulas: $p < 0.05$, the sum, $$a<b$$, \\(x<y\\), \\[...\\].
    lab.page.wait_for_function(
        f"() => {{ const r = ({INSPECT_JS})(1); return r && r.math >= 5; }}", timeout=30_000
    )
    lab.page.wait_for_timeout(500)  # let MathJax finish the last formula
    found = lab.page.evaluate(INSPECT_JS, 1)
    lab.screenshot("answer-rendering-math-and-links")

    assert found["math"] == 5, found
    assert found["errors"] == 0, found
    assert "Math input error" not in found["text"] and "&lt;" not in found["text"]
    for anchor in found["anchors"]:
        assert anchor["protocol"] not in ("javascript:", "vbscript:", "data:"), anchor
    for url in found["urls"]:
        assert not url.lower().startswith(("javascript:", "vbscript:", "data:")), url
    links = [a["href"] for a in found["anchors"] if not a["href"].startswith("#")]
    assert links == ["https://example.com"], found["anchors"]  # "#" = JupyterLab's heading anchor
    assert found["raw"] == [], "the answer's raw HTML became elements"
    assert "<img src=x onerror=" in found["text"] and "<b>bold?</b>" in found["text"]
    assert "if a<b: pass" in found["text"] and "a<b" in found["text"]
    lab.page.wait_for_timeout(300)
    assert lab.page.title() == title != "pwned"


CHAT_JS = """() => {
    const answer = document.querySelector('.pk-chat:not(.pk-chat-saved) .pk-answer');
    if (!answer || !answer.querySelector('.pk-math mjx-container')) return null;
    return {
        math: [...answer.querySelectorAll('.pk-math')].map((el) => el.textContent),
        typeset: [...answer.querySelectorAll('.pk-math')].map(
            (el) => el.querySelector('mjx-container') !== null
                && el.querySelector('mjx-merror, merror') === null),
        anchors: [...answer.querySelectorAll('a')].map((a) => a.getAttribute('href')),
        raw: [...answer.querySelectorAll('img, script, iframe, b, details')].map(
            (el) => el.outerHTML),
        text: answer.innerText,
    };
}"""


def test_the_chat_shows_the_same_answer_safely(lab_page: LabPage, lab_root: Path) -> None:
    write_notebook(
        lab_root / "answer-rendering-chat.ipynb",
        [
            "from pk_notebook import Chat, Pipeline, ProviderMiddleware\n"
            "from pk_notebook.providers import MockProvider\n"
            f"pipe = Pipeline(ProviderMiddleware(MockProvider.scripted({ANSWER!r})))\n"
            "chat = Chat(pipe, title='Formulas and links')\n"
            "chat",
            "await chat.send('Summarise the study, with formulas and links.')",
        ],
    )
    lab = lab_page
    lab.open("answer-rendering-chat.ipynb")
    title = lab.page.title()
    lab.run_cell_and_wait(0)
    lab.page.locator(".pk-chat:not(.pk-chat-saved)").first.wait_for(timeout=30_000)
    lab.run_cell_and_wait(1)
    lab.page.wait_for_function(f"() => ({CHAT_JS})() !== null", timeout=30_000)
    found = lab.page.evaluate(CHAT_JS)
    lab.page.locator(".pk-chat:not(.pk-chat-saved)").first.scroll_into_view_if_needed()
    lab.screenshot("answer-rendering-chat")

    # Math arrives intact (backslashes and "<" included, see markdown.py) and is typeset,
    # as in the cell: MathJax's output of each formula, and no MathJax error.
    assert found["typeset"] == [True] * 5, found
    assert found["math"] == ["p<0.05", "∑i<nxi", "a<b", "x<y", "∑i<ni<n2"], found["math"]
    assert found["anchors"] == ["https://example.com"], found["anchors"]
    assert found["raw"] == []
    assert "<img src=x onerror=" in found["text"] and "if a<b: pass" in found["text"]
    assert lab.page.title() == title != "pwned"
