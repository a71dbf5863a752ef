"""Notebook 7 (the ``notebook`` package's front end), offline on the mock provider: tool calls
asked with Run / Deny buttons, structured output filling in live, and two models compared
side by side with a Stop per column. The same features are tested in JupyterLab by
test_tools_and_thinking.py, test_structured_output.py and test_live_view.py.

Screenshots (test-artifacts/): ``nb7-tools-approve``, ``nb7-tools-run``, ``nb7-tools-denied``,
``nb7-structured-live``, ``nb7-structured-final``, ``nb7-compare-live``, ``nb7-compare-final``.
"""

from __future__ import annotations

from typing import Any

import pytest

from .jupyterlab import LabPage, write_notebook
from .test_structured_output import SETUP as STRUCTURED_SETUP
from .test_where_users_are import TOOLS_CELL, TOOLS_SETUP

pytestmark = pytest.mark.browser


def cell_text_js(index: int) -> str:
    """A JS expression: the text of cell ``index`` of the notebook."""
    return (
        "(document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')"
        f"[{index}]?.innerText || '')"
    )


def start(nb: LabPage, name: str, cells: list[str]) -> Any:
    """Write notebook ``name``, open it, run its setup cell and start cell 1; cell 1."""
    write_notebook(nb.lab.root / name, cells)
    nb.open(name)
    nb.run_cell_and_wait(0)
    nb.run_cell(1)
    return nb.cell(1)


def test_tool_calls_wait_for_run_or_deny_in_notebook_7(nb7_page: LabPage) -> None:
    nb = nb7_page
    cell = start(
        nb,
        "nb7-tools.ipynb",
        [
            TOOLS_SETUP,
            TOOLS_CELL,
            TOOLS_CELL.replace("-o turn", "-o denied"),
            "print([r.status for r in turn.tool_results], [r.status for r in denied.tool_results])",
        ],
    )
    # Run: the card waits for approval with both buttons enabled; a click runs the tool.
    ask = cell.locator(".pk-approve")
    ask.wait_for(state="visible", timeout=30_000)
    assert "get_weather" in ask.inner_text() and "Paris" in ask.inner_text()
    run, deny = ask.locator("button.pk-approve-run"), ask.locator("button.pk-approve-deny")
    assert run.is_enabled() and deny.is_enabled()
    card = cell.locator("details.pk-tool-approval")
    assert card.count() == 1 and "waiting for approval" in card.locator("summary").inner_text()
    assert cell.locator("details.pk-thinking").count() >= 1
    assert "[*]" in cell.locator(".jp-InputArea-prompt").inner_text(), "the cell waits"
    nb.screenshot("nb7-tools-approve")
    run.click()
    nb.wait_cell_done(1, timeout=30)
    out = nb.output_text(1)
    assert "The tool said: Paris: light rain" in out, out
    assert cell.locator(".pk-approve").count() == 0, "the buttons are gone"
    assert cell.locator(".jp-OutputArea button").count() == 0
    ok = cell.locator("details.pk-tool-ok")
    assert ok.count() == 1 and "get_weather" in ok.locator("summary").inner_text()
    ok.locator("summary").click()
    assert "Paris: light rain" in ok.inner_text()
    nb.screenshot("nb7-tools-run")

    # Deny: the tool does not run, the model is told so and the answer goes on.
    nb.run_cell(2)
    cell = nb.cell(2)
    deny = cell.locator(".pk-approve button.pk-approve-deny")
    deny.wait_for(state="visible", timeout=30_000)
    assert deny.is_enabled()
    deny.click()
    nb.wait_cell_done(2, timeout=30)
    out = nb.output_text(2)
    assert cell.locator(".pk-approve").count() == 0
    denied = cell.locator("details.pk-tool-denied")
    assert denied.count() == 1 and "denied" in denied.locator("summary").inner_text(), out
    assert "The tool said: The user declined" in out and "Paris: light rain" not in out, out
    denied.locator("summary").click()
    nb.screenshot("nb7-tools-denied")

    nb.run_cell_and_wait(3)
    assert nb.output_text(3).strip() == "['ok'] ['denied']"


def test_structured_output_fills_in_live_in_notebook_7(nb7_page: LabPage) -> None:
    nb = nb7_page
    cell = start(
        nb,
        "nb7-structured.ipynb",
        [
            STRUCTURED_SETUP,
            "%%stream --pipeline pipe --schema Trip -o trip\nPlan three days in Lisbon.",
            "print(type(trip).__name__, trip.days, trip.sights[2].name)",
        ],
    )
    # Mid-way: the sights table is there, "tip" is still to come ("…").
    nb.page.wait_for_function(
        f"""() => {{
            const text = {cell_text_js(1)};
            return /tip\\s*:\\s*…/.test(text) && text.includes('Belém Tower')
                && document.querySelectorAll('.jp-Cell')[1].querySelector('table');
        }}""",
        timeout=30_000,
    )
    live = cell.locator(".jp-OutputArea").first.inner_text()
    assert "city: Lisbon" in live and "days: 3" in live, live
    assert '{"city"' not in live, "no raw JSON while it streams"
    assert cell.locator(".pk-stop").is_enabled()
    nb.screenshot("nb7-structured-live")
    # A partial string: the tip grows before the cell ends.
    nb.page.wait_for_function(
        f"() => /tip\\s*:\\s*Buy a Viva/.test({cell_text_js(1)})", timeout=30_000
    )
    nb.wait_cell_done(1, timeout=60)
    final = cell.locator(".jp-OutputArea").first.inner_text()
    assert "…" not in final and "before the crowds arrive at the viewpoints." in final
    assert "city: Lisbon" in final and "LX Factory" in final
    assert cell.locator("table tr").count() == 4  # header + three sights
    assert cell.locator(".pk-stop").count() == 0
    assert cell.locator(".jp-OutputArea-output").count() == 1, "one final output"
    cell.locator(".jp-OutputArea").first.evaluate("el => el.scrollIntoView({block: 'end'})")
    nb.screenshot("nb7-structured-final")
    nb.run_cell_and_wait(2)
    assert nb.output_text(2).strip() == "Trip 3 LX Factory"


def test_two_mock_models_side_by_side_one_stopped_in_notebook_7(nb7_page: LabPage) -> None:
    nb = nb7_page
    cell = start(
        nb,
        "nb7-compare.ipynb",
        [
            "%load_ext pk_notebook",
            "%%stream -m mock:a -m mock:b -o compared\nExplain how a lighthouse works.",
            "print({k: v.status.value for k, v in compared.items()})",
        ],
    )
    columns = cell.locator(".pk-compare-live .pk-compare-col")
    columns.nth(1).wait_for(state="visible", timeout=30_000)
    # Stop b as soon as its text shows; a goes on.
    nb.page.wait_for_function(
        """() => {
            const cols = document.querySelectorAll('.pk-compare-live .pk-compare-col');
            return cols.length === 2 && cols[1].querySelector('.pk-compare-body')
                && cols[1].querySelector('.pk-compare-body').innerText.trim().length > 0;
        }""",
        timeout=30_000,
    )
    stops = [columns.nth(i).locator("button.pk-compare-stop") for i in range(2)]
    assert all(s.is_enabled() for s in stops)
    assert cell.locator("button.pk-compare-stop-all").is_enabled()
    stops[1].click()
    nb.page.wait_for_function(
        """() => {
            const b = document.querySelectorAll('.pk-compare-live .pk-compare-col')[1]
                ?.querySelector('button.pk-compare-stop');
            return b && b.disabled && b.innerText.trim() !== 'Stop';  // Stopping… / Ended
        }""",
        timeout=10_000,
    )
    a_text = columns.nth(0).inner_text()
    assert stops[0].is_enabled(), f"a's Stop stays enabled while a streams: {a_text}"
    boxes = [columns.nth(i).bounding_box() for i in range(2)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] < boxes[1]["x"], "side by side"
    nb.screenshot("nb7-compare-live")
    nb.wait_cell_done(1, timeout=60)
    nb.page.wait_for_timeout(300)

    # The answers side by side, then (if shown apart) the timings of this run.
    outs = cell.locator(".jp-OutputArea-output")
    assert outs.first.locator(".pk-compare-final").count() == 1
    extra = [outs.nth(i).inner_text() for i in range(1, outs.count())]
    assert all("Timings of this run" in text for text in extra), extra
    assert cell.locator(".pk-compare-live").count() == 0
    assert cell.locator(".jp-OutputArea button").count() == 0, "no Stop buttons left"
    final = cell.locator(".pk-compare-final .pk-compare-col")
    assert final.count() == 2
    a, b = final.nth(0).inner_text(), final.nth(1).inner_text()
    assert a.startswith("mock:a") and b.startswith("mock:b")
    assert "Stopped:" not in a and "Stopped:" in b
    assert len(b) < len(a), "b was cut short"
    rows = cell.locator(".pk-compare-summary:not(.pk-compare-timings) tbody tr")
    assert rows.count() == 2
    summary = [rows.nth(i).inner_text() for i in range(2)]
    assert summary[0].startswith("mock:a") and "stop" in summary[0] and "stopped" not in summary[0]
    assert summary[1].startswith("mock:b") and "stopped" in summary[1]
    outs.last.evaluate("el => el.scrollIntoView({block: 'end'})")
    nb.screenshot("nb7-compare-final")
    nb.run_cell_and_wait(2)
    assert nb.output_text(2).strip() == "{'mock:a': 'finished', 'mock:b': 'stopped'}"
