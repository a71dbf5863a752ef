"""Model text shown as Markdown can never become live HTML or script in the notebook."""

from __future__ import annotations

import pytest

from pk_notebook.notebook.live import render_bundle
from pk_notebook.notebook.markdown import neutralize_html


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param('Look: <img src=x onerror="alert(1)">', id="img-onerror"),
        pytest.param("<script>alert(1)</script>", id="script"),
        pytest.param("a <details open ontoggle=alert(1)> b", id="ontoggle"),
        pytest.param("[click](javascript:alert(1))", id="javascript-link"),
        pytest.param("[x]( JavaScript:alert(1))", id="spaced-mixed-case-link"),
        pytest.param("[x](data:text/html;base64,PHNjcmlwdD4=)", id="data-link"),
    ],
)
def test_raw_html_and_script_links_are_made_inert(answer: str) -> None:
    body = render_bundle(answer)["text/markdown"]
    assert "<" not in body
    assert "javascript:" not in body.lower() and "data:" not in body


def test_code_is_left_exactly_as_written() -> None:
    answer = "Use `<div>` here:\n\n```html\n<div onclick=\"x()\">hi</div>\n```\nand 1 < 2"
    body = neutralize_html(answer)
    assert "`<div>`" in body
    assert '<div onclick="x()">hi</div>' in body  # inside the fence: shown as code
    assert body.endswith("1 &lt; 2")


def test_plain_text_output_keeps_the_answer_verbatim() -> None:
    answer = "1 < 2 and <b>bold</b>"
    bundle = render_bundle(answer)
    assert bundle["text/plain"] == answer
    assert bundle["text/markdown"] == "1 &lt; 2 and &lt;b>bold&lt;/b>"


def test_text_without_markup_is_untouched() -> None:
    answer = "## A day in Lisbon\n\n- **Morning:** coffee"
    assert neutralize_html(answer) == answer
