"""Notebook context in prompts: DataFrames, figures, In/Out/Err, caps (no kernel needed)."""

from __future__ import annotations

import pytest

from pk_notebook.notebook.context import ErrorLog, render
from pk_notebook.notebook.interpolate import (
    InterpolationError,
    describe_substitutions,
    substitute,
)


def test_a_dataframe_is_its_shape_types_and_first_rows() -> None:
    import pandas as pd

    frame = pd.DataFrame({"city": [f"c{i}" for i in range(500)], "temp": range(500)})
    text = render(frame, max_rows=3)
    first, types = text.splitlines()[:2]
    assert first == "DataFrame with 500 rows and 2 columns"
    assert types.startswith("Column types: city: ") and types.endswith(", temp: int64")
    assert "|  | city | temp |" in text
    assert "| 0 | c0 | 0 |" in text and "| 2 | c2 | 2 |" in text
    assert "| 3 |" not in text
    assert text.endswith("(first 3 of 500 rows)")
    assert len(text) < 400  # not the whole frame


def test_a_series_and_other_values_read_as_the_notebook_shows_them() -> None:
    import pandas as pd

    series = pd.Series([1.5, 2.5], name="price")
    assert render(series).startswith("Series 'price' of 2 values, type float64")
    assert render({"a": [1, 2]}) == "{'a': [1, 2]}"
    assert render("plain") == "plain"


def test_a_figure_becomes_an_image_attachment_named_in_the_prompt() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2])
    done = substitute("What trend does {fig} show?", {"fig": fig})
    plt.close(fig)
    assert done.text == "What trend does [image 1: fig.png] show?"
    (attachment,) = done.attachments
    assert attachment.mime_type == "image/png" and attachment.data.startswith(b"\x89PNG")
    assert describe_substitutions(done.substitutions).startswith(
        "substituted {fig} (attached: fig.png (image/png, "
    )


def test_cells_outputs_and_tracebacks() -> None:
    log = ErrorLog()
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError as exc:
        log.record(4, exc)
    namespace = {"In": ["", "x = 21", "x * 2"], "Out": {2: 42}, "_": 42}
    done = substitute(
        "Cell: {In[1]}; out: {Out[2]}; last: {_}; error: {Err}", namespace, errors=log
    )
    assert done.text.startswith("Cell: x = 21; out: 42; last: 42; error: Traceback")
    assert "ZeroDivisionError: division by zero" in done.text
    assert substitute("{Err[4]}", namespace, errors=log).text == log[4]
    with pytest.raises(InterpolationError, match=r"cell 3 did not fail \(cells that failed: 4\)"):
        substitute("{Err[3]}", namespace, errors=log)
    with pytest.raises(InterpolationError, match="cell 7 has no output value"):
        substitute("{Out[7]}", namespace, errors=log)
    with pytest.raises(InterpolationError, match="no cell has failed yet"):
        substitute("{Err}", namespace, errors=ErrorLog())
    # an index on any other name is pasted code, not a placeholder
    assert substitute("f'{a[0]}'", {"a": [1]}).text == "f'{a[0]}'"


def test_long_renderings_are_cut_with_the_cut_stated() -> None:
    done = substitute("{xs}", {"xs": list(range(10_000))}, max_chars=50)
    assert done.text.startswith("[0,")
    assert "…[cut: 50 of " in done.text
    assert done.substitutions[0].truncated
