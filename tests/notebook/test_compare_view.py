"""The comparison's HTML without a kernel: what MathJax may typeset, and the final bundle
(no timings in it, reasoning collapsed), for the rules a kernel test cannot vary cheaply."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pk_notebook.notebook.compare_view import (
    IGNORE_CLASSES,
    compare_bundle,
    mathjax_html,
    summary_row,
    timing_row,
    timings_html,
)
from pk_notebook.notebook.markdown import render_markdown
from pk_notebook.runtime.types import Result, StreamStatus, Usage

IGNORED = f'<span class="{IGNORE_CLASSES}">'


def left_for_mathjax(value: str) -> str:
    """The text MathJax would still scan for delimiters: outside math spans, ignored
    spans, code and tags."""
    value = re.sub(r'<span class="[^"]*mathjax_ignore[^"]*">[^<]*</span>', "", value)
    value = re.sub(r'<span class="pk-math[^"]*">[^<]*</span>', "", value)
    value = re.sub(r"<pre[\s\S]*?</pre>|<code>[\s\S]*?</code>", "", value)
    return re.sub(r"<[^>]*>", "", value)


def unwrap(value: str) -> str:
    """``value`` without the wrappers mathjax_html adds."""
    value = re.sub(re.escape(IGNORED) + r"([^<]*)</span>", r"\1", value)
    return value.replace(f" {IGNORE_CLASSES}", "")


@pytest.mark.parametrize(
    "markdown",
    [
        "It costs \\$5 and \\$6.",  # escaped dollars: text in Jupyter, math to a bare MathJax
        "An open $x + y and more",  # an opener with no closing delimiter
        "Cost &#36;5 and &dollar;6 and $7",  # dollars written as character references
        "A \\(stray and \\begin{align} without end",
        "Two paragraphs $a\n\nb$ apart",
        "`$code$` and\n\n```\n$$fenced$$\n```",
    ],
)
def test_only_the_math_spans_are_left_for_mathjax(markdown: str) -> None:
    rendered = render_markdown(markdown)
    safe = mathjax_html(rendered)
    assert "$" not in left_for_mathjax(safe) and "\\" not in left_for_mathjax(safe)
    assert unwrap(safe) == rendered  # only wrappers added: the answer reads the same


def test_math_spans_typeset_unless_their_tex_makes_links_or_styles() -> None:
    safe = mathjax_html(
        render_markdown(
            "Area $\\pi r^2$.\n\n$$\\href{javascript:alert(1)}{x}$$\n\n"
            "$\\style{color:red}{y}$ and $\\require{html}$ and $\\url{http://a}$"
        )
    )
    assert '<span class="pk-math">$\\pi r^2$</span>' in safe
    for tex in ("\\href{javascript", "\\style{", "\\require{", "\\url{"):
        (span,) = re.findall(r'<span class="([^"]*)">[^<]*' + re.escape(tex), safe)
        assert IGNORE_CLASSES in span, tex


def test_raw_html_stays_inert_and_dangerous_links_dead() -> None:
    rendered = render_markdown(
        "<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3)) "
        "$<b>bold</b>$ [ok](https://example.org/?a=$1)"
    )
    safe = mathjax_html(rendered)
    assert "<script" not in safe and "<img" not in safe and "<b>" not in safe
    assert 'href="javascript' not in safe
    assert '<a href="https://example.org/?a=$1"' in safe  # attributes are never touched


def result(text: str, *, reasoning: str = "", ttfc: float, duration: float) -> Result:
    return Result(
        text=text,
        status=StreamStatus.FINISHED,
        usage=Usage(input_tokens=3, output_tokens=12, estimated="chars/4"),
        finish_reason="stop",
        reasoning=reasoning,
        time_to_first_chunk=ttfc,
        duration=duration,
    )


def test_the_final_bundle_holds_no_timings_and_folds_the_reasoning() -> None:
    fast = {"a": result("Yes: $x^2$.", reasoning="Think $y$ <b>", ttfc=0.1, duration=1.0)}
    slow = {"a": result("Yes: $x^2$.", reasoning="Think $y$ <b>", ttfc=0.9, duration=7.5)}
    bundle = compare_bundle(fast, {})
    assert bundle == compare_bundle(slow, {})  # byte-stable whatever the clock said
    assert summary_row("a", fast["a"]) == {
        "model": "a",
        "tokens": "≈12",
        "cost": "-",
        "finish": "stop",
    }
    html_out = bundle["text/html"]
    assert '<details class="pk-thinking"><summary>Thinking · 13 characters</summary>' in html_out
    assert "&lt;b&gt;" in html_out and " s</summary>" not in html_out
    assert bundle["text/markdown"].startswith(
        '### a\n\n<details class="pk-thinking">\n<summary>Thinking · 13 characters</summary>'
    )
    assert bundle["text/plain"].startswith("[a]\n▸ Thinking · 13 characters\nYes: $x^2$.")
    # the timings are still there for the widget below the output
    assert timing_row("a", slow["a"]) == {
        "model": "a",
        "first chunk": "0.90 s",
        "tokens/s": "2",
        "total": "7.50 s",
    }
    assert "<td>0.90 s</td>" in timings_html(slow)


def test_a_model_without_reasoning_has_no_thinking_section() -> None:
    bundle = compare_bundle({"a": result("Hi", ttfc=0.1, duration=1.0)}, {})
    assert "pk-thinking" not in bundle["text/html"] + bundle["text/markdown"]
    assert bundle["text/plain"].startswith("[a]\nHi\n")


def test_in_a_terminal_the_timings_follow_the_answers(
    ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from pk_notebook import Pipeline
    from pk_notebook.providers import MockProvider
    from pk_notebook.providers.mock import Scenario

    ip.user_ns["thinker"] = Pipeline(MockProvider([Scenario("Five.", reasoning="Count first.")]))
    ip.user_ns["plain"] = Pipeline(MockProvider.scripted("Hello there."))
    assert ip.run_cell("%%stream -m thinker -m plain -o r\nCount").success
    out = capsys.readouterr().out
    assert out.startswith("[thinker]\n▸ Thinking · 12 characters\nFive.\n\n[plain]\nHello there.")
    summary, timings = out.split("model thinker · first chunk", 1)
    assert summary.endswith(
        "\n\nmodel thinker · tokens 2 · cost - · finish stop\n"
        "model plain · tokens 3 · cost - · finish stop\n"
    )
    assert re.fullmatch(
        r" \d+\.\d\d s · tokens/s \d+ · total \d+\.\d\d s\n"
        r"model plain · first chunk \d+\.\d\d s · tokens/s \d+ · total \d+\.\d\d s\n",
        timings,
    ), timings
    assert ip.user_ns["r"]["thinker"].reasoning == "Count first."


async def test_thinking_after_some_text_goes_below_that_text() -> None:
    """Some providers think again mid-answer: the text so far stays above the section."""
    from pk_notebook.notebook.compare_view import CompareView

    view = CompareView(["a"], surface="widget", tick=0).show()
    view.push("a", "First part of the answer,")
    view.push_reasoning("a", "Wait, let me check $x$.")
    view.push("a", " and the rest.\n")
    view.ended("a")
    body = view.columns["a"].body.children
    kinds = [sorted(w._dom_classes) for w in body]
    assert kinds == [["pk-compare-piece"], ["pk-compare-thinking"], ["pk-compare-tail"]]
    first, thinking, rest = (w.value for w in body)
    assert first == "<p>First part of the answer,</p>\n"
    assert thinking.startswith('<details class="pk-thinking"><summary>Thinking · 23 characters')
    assert '<span class="pk-math">$x$</span>' in thinking
    assert rest == "<p>and the rest.</p>\n"
    view.close()
