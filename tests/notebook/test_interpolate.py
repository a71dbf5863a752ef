"""Which braces in a prompt are variables ({name}, {name.attr}) and which are text."""

from __future__ import annotations

import pytest

from pk_notebook.notebook.interpolate import InterpolationError, interpolate, variables


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
