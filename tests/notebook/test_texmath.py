"""Math is found where JupyterLab finds it (its ``removeMath`` scan), never inside code."""

from __future__ import annotations

import pytest

from pk_notebook.notebook.texmath import find_math, jupyter_delimiters


def spans(text: str, *, latex: bool = False) -> list[str]:
    return [text[s.start : s.end] for s in find_math(text, latex=latex)]


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("if $p < 0.05$ then", ["$p < 0.05$"], id="inline-dollar"),
        pytest.param("$$a<b$$ and $c$", ["$$a<b$$", "$c$"], id="display-then-inline"),
        pytest.param("$$\nx < y\n$$", ["$$\nx < y\n$$"], id="display-over-lines"),
        pytest.param("$a\n\nb$", [], id="never-across-a-blank-line"),
        pytest.param("$\\{a$b\\}$", ["$\\{a$"], id="escaped-braces-do-not-count"),
        pytest.param("${a$b}$", ["${a$b}$"], id="braces-must-balance"),
        pytest.param("\\\\(x<y\\\\)", ["\\\\(x<y\\\\)"], id="jupyter-doubled-paren"),
        pytest.param("\\begin{align}a<b\\end{align}", ["\\begin{align}a<b\\end{align}"], id="env"),
        pytest.param("`$a$` and $b$", ["$b$"], id="code-span-holds-no-math"),
        pytest.param("```\n$a$\n```\n$b$", ["$b$"], id="fence-holds-no-math"),
        pytest.param("costs \\$5 and \\$6", [], id="escaped-dollars"),
        pytest.param("keep @@0@@ aside", ["@@0@@"], id="placeholder-shapes-are-set-aside"),
        pytest.param("\\(x<y\\)", [], id="latex-parens-are-not-jupyter-math"),
    ],
)
def test_jupyter_finds_math_here(text: str, expected: list[str]) -> None:
    assert spans(text) == expected


def test_latex_mode_also_finds_single_backslash_delimiters() -> None:
    text = "inline \\(x<y\\), display \\[ \\sum_{i<n} i \\], and `\\(code\\)`"
    assert spans(text, latex=True) == ["\\(x<y\\)", "\\[ \\sum_{i<n} i \\]"]


def test_jupyter_delimiters_double_only_the_delimiters() -> None:
    text = "a \\(x<y\\) b \\[ z \\] c $d$ `\\(e\\)` \\\\(f\\\\)"
    assert jupyter_delimiters(text) == "a \\\\(x<y\\\\) b \\\\[ z \\\\] c $d$ `\\(e\\)` \\\\(f\\\\)"
    assert jupyter_delimiters("no math (here) [x]") == "no math (here) [x]"
