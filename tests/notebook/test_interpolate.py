"""Which braces in a prompt are variables ({name}, {name.attr}) and which are text."""

from __future__ import annotations

import pytest

from pk_notebook.notebook.interpolate import (
    InterpolationError,
    describe_substitutions,
    interpolate,
    substitute,
    variables,
)


class Trip:
    city = "Lisbon"
    days = 3


NS = {"city": "Lisbon", "n": 5, "trip": Trip(), "items": [1, 2]}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("Plan a day in {city}.", "Plan a day in Lisbon.", id="name"),
        pytest.param("{n} bullets in {city}", "5 bullets in Lisbon", id="two-names"),
        pytest.param("{trip.city} for {trip.days} days", "Lisbon for 3 days", id="attributes"),
        pytest.param("Explain {items}", "Explain [1, 2]", id="str-of-value"),
        pytest.param("literal {{city}}", "literal {city}", id="escaped"),
        pytest.param(
            "literal {{trip.city}} and {city}", "literal {trip.city} and Lisbon", id="escaped-attr"
        ),
        pytest.param('JSON: {"a": {"b": [1, 2]}}', 'JSON: {"a": {"b": [1, 2]}}', id="json"),
        pytest.param(
            "d = {'k': v for k, v in x}", "d = {'k': v for k, v in x}", id="dict-comprehension"
        ),
        pytest.param(
            'f"{x!r} {y:>4} {z + 1} {a[0]}"',
            'f"{x!r} {y:>4} {z + 1} {a[0]}"',
            id="fstring-expressions",
        ),
        pytest.param("{ city }", "{ city }", id="spaced"),
        pytest.param("{{ jinja }} {% if x %}", "{{ jinja }} {% if x %}", id="jinja"),
        pytest.param("\\frac{1}{2} and {}", "\\frac{1}{2} and {}", id="latex-and-empty"),
        pytest.param("open { and close }", "open { and close }", id="lone-braces"),
        pytest.param("nested {{{city}}}", "nested {{city}}", id="triple-braces"),
        pytest.param("fn() { return 1; }", "fn() { return 1; }", id="c-block"),
    ],
)
def test_only_identifier_placeholders_are_substituted(template: str, expected: str) -> None:
    assert interpolate(template, NS) == expected


def test_a_missing_variable_is_an_error_naming_it() -> None:
    with pytest.raises(InterpolationError) as info:
        interpolate("Plan a day in {town}.", NS)
    assert info.value.name == "town"
    assert "no variable 'town'" in str(info.value) and "{{town}}" in str(info.value)


def test_a_missing_attribute_is_an_error_naming_it() -> None:
    with pytest.raises(InterpolationError, match="has no attribute 'country'"):
        interpolate("{trip.country}", NS)


def test_code_with_an_undefined_set_literal_name_is_reported_not_crashed() -> None:
    # {x} in code looks like a variable: the error says how to keep it literal.
    with pytest.raises(InterpolationError, match=r"\{\{x\}\}"):
        interpolate("s = {x}", NS)


def test_variables_lists_placeholders_once() -> None:
    assert variables("{a} {b.c} {{d}} {a} {e!r}") == ["a", "b.c"]


# --- code is sent as typed; what is substituted is reported and capped ------------------

PASTED = 'print(f"Hello {name}, row {i}: {df}")'
CODE_NS = {"name": "Ada", "i": 7, "df": "<a large frame>", "city": "Lisbon"}


@pytest.mark.parametrize(
    "template",
    [
        pytest.param(f"Why does this fail?\n```python\n{PASTED}\n```\n", id="backtick-fence"),
        pytest.param(f"Why?\n~~~\n{PASTED}\n~~~\n", id="tilde-fence"),
        pytest.param(f"Why?\n   ````py\n{PASTED}\n```\nstill code\n   ````\n", id="long-fence"),
        pytest.param(f"Why?\n```\n{PASTED}\n", id="unclosed-fence"),
        pytest.param(f"Why does `{PASTED}` fail?", id="code-span"),
        pytest.param(f"Why does ``{PASTED} # `tick` `` fail?", id="double-backtick-span"),
        pytest.param(f"Why does `{PASTED}\nspan two lines` fail?", id="span-over-a-line-break"),
        pytest.param("Keep `{{name}}` and `{missing}` as typed", id="escapes-and-unknowns"),
    ],
)
def test_code_is_sent_exactly_as_typed(template: str) -> None:
    result = substitute(template, CODE_NS)
    assert result.text == template
    assert result.substitutions == []


def test_prose_around_code_is_still_substituted() -> None:
    template = f"In {{city}}:\n```python\n{PASTED}\n```\nand `{{city}}` vs {{city}} ~~~ {{i}}\n"
    result = substitute(template, CODE_NS)
    assert result.text == (
        f"In Lisbon:\n```python\n{PASTED}\n```\nand `{{city}}` vs Lisbon ~~~ 7\n"
    )
    assert [s.name for s in result.substitutions] == ["city", "i"]


def test_an_indented_or_mismatched_fence_is_not_a_fence() -> None:
    # Four spaces of indent, or a closer of the other character, do not open/close a fence.
    assert interpolate("    ```\n{city}\n", CODE_NS) == "    ```\nLisbon\n"
    assert interpolate("~~~\n{city}\n```\n{city}\n~~~\n{city}", CODE_NS) == (
        "~~~\n{city}\n```\n{city}\n~~~\nLisbon"
    )
    # A backtick in the info string makes it ordinary text (CommonMark).
    assert interpolate("``` a`b\n{city}", CODE_NS) == "``` a`b\nLisbon"


def test_unmatched_backticks_and_paragraph_breaks_end_nothing() -> None:
    assert interpolate("a ` tick then {city}", CODE_NS) == "a ` tick then Lisbon"
    # A run closes only a run of the same length: `` does not close `.
    assert interpolate("``two`` is not `{city}`` three", CODE_NS) == (
        "``two`` is not `Lisbon`` three"
    )
    # A code span does not run over a blank line (a new paragraph).
    assert interpolate("`open {city}\n\nnew {city}`", CODE_NS) == "`open Lisbon\n\nnew Lisbon`"


def test_a_pasted_fstring_outside_code_is_substituted_and_reported() -> None:
    result = substitute(PASTED, CODE_NS)
    assert result.text == 'print(f"Hello Ada, row 7: <a large frame>")'
    assert [(s.name, s.chars, s.truncated) for s in result.substitutions] == [
        ("name", 3, False),
        ("i", 1, False),
        ("df", 15, False),
    ]
    assert describe_substitutions(result.substitutions) == (
        "substituted {name} (3 chars), {i} (1 char), {df} (15 chars)"
    )


def test_a_large_value_is_cut_and_the_prompt_says_so() -> None:
    big = "x" * 48_311
    result = substitute("Summarise {table} for {city}", {"table": big, "city": "Lisbon"})
    assert result.text == (
        "Summarise " + "x" * 2000 + "…[cut: 2,000 of 48,311 characters] for Lisbon"
    )
    table, _city = result.substitutions
    assert (table.name, table.chars, table.sent, table.truncated) == ("table", 48_311, 2000, True)
    assert describe_substitutions(result.substitutions) == (
        "substituted {table} (2,000 of 48,311 chars: cut), {city} (6 chars)"
    )
    small = substitute("{table}", {"table": "abcdef"}, max_chars=4)
    assert small.text == "abcd…[cut: 4 of 6 characters]"
    assert substitute("{t}", {"t": "abcd"}, max_chars=4).text == "abcd"  # at the cap: whole


def test_a_name_used_twice_is_looked_up_and_reported_once() -> None:
    calls = []

    class Counter:
        @property
        def value(self) -> int:
            calls.append(1)
            return len(calls)

    result = substitute("{c.value} and {c.value}", {"c": Counter()})
    assert result.text == "1 and 1" and len(result.substitutions) == 1
    assert describe_substitutions([]) == ""


def test_variables_skip_code() -> None:
    assert variables("{a} `{b}`\n```\n{c}\n```\n{d}") == ["a", "d"]
