"""The incremental live view in a real JupyterLab: half-written Markdown, side-by-side models.

Screenshots (test-artifacts/): ``live-open-fence``, ``live-table-mid-row``,
``compare-live``, ``compare-final``, ``compare-math-thinking``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .jupyterlab import LabPage, write_notebook

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]

SETUP = (
    "%load_ext pk_notebook\n"
    "import sys\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    "from benchmarks.live_answers import StepProvider\n"
    "from pk_notebook import Pipeline\n"
    "from pk_notebook.providers import MockProvider, Fault\n"
    "intro = '## Half-written\\n\\nA paragraph that is finished.\\n\\n'\n"
    "fence = Pipeline(StepProvider([(intro + 'Cost $x + ', 3),\n"
    "    ('y$ typeset.\\n\\n```python\\ndef area(r):\\n', 0.3),\n"
    "    ('    return 3.14 * r ** 2\\n\\n# more to come', 60)]), idle_timeout=None)\n"
    "table = Pipeline(StepProvider([(intro, 0.3), ('| city | rain |\\n|---|---:|\\n', 0.3),\n"
    "    ('| Lisbon | 12 |\\n| Oslo | 3', 60)]), idle_timeout=None)\n"
)

OUTPUTS_JS = """(index) => {
    const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
    const area = cell.querySelector('.jp-OutputArea');
    const md = [...area.querySelectorAll('.jp-RenderedMarkdown')];
    return {
        outputs: area.querySelectorAll('.jp-OutputArea-output').length,
        pre: md.map((m) => [...m.querySelectorAll('pre')].map((p) => p.innerText)).flat(),
        paragraphs: md.map((m) => [...m.querySelectorAll('p')].map((p) => p.innerText)).flat(),
        rows: md.map((m) => [...m.querySelectorAll('tbody tr')].map((r) => r.innerText)).flat(),
        headers: md.map((m) => [...m.querySelectorAll('thead th')].map((h) => h.innerText)).flat(),
        math: area.querySelectorAll('mjx-container').length,
        text: area.innerText,
    };
}"""


def outputs(lab: LabPage, index: int) -> dict:
    return dict(lab.page.evaluate(OUTPUTS_JS, index))


def test_an_unfinished_code_fence_and_table_render_calmly_mid_stream(
    lab_page: LabPage, lab_root: Path
) -> None:
    write_notebook(
        lab_root / "live-half-written.ipynb",
        [SETUP, "%%stream --pipeline fence\nshow code", "%%stream --pipeline table\nshow a table"],
    )
    lab = lab_page
    lab.open("live-half-written.ipynb")
    lab.run_cell_and_wait(0)

    lab.run_cell(1)
    lab.page.wait_for_function(f"() => ({OUTPUTS_JS})(1).text.includes('Cost $x +')")
    assert outputs(lab, 1)["math"] == 0, "an unclosed $ is not typeset"
    lab.screenshot("live-open-math")
    lab.page.wait_for_function(
        f"() => ({OUTPUTS_JS})(1).pre.some((p) => p.includes('# more to come'))",
        timeout=30_000,
    )
    lab.page.wait_for_timeout(300)
    seen = outputs(lab, 1)
    lab.screenshot("live-open-fence")
    code = next(p for p in seen["pre"] if "def area" in p)
    assert "return 3.14 * r ** 2" in code and "# more to come" in code  # one code block
    assert not any("def area" in p for p in seen["paragraphs"]), "the open fence shows as code"
    assert "A paragraph that is finished." in seen["paragraphs"]
    assert seen["math"] == 1, "closed math is typeset"
    # JupyterLab renders the live text itself: the kernel sent edits, not displays
    # (tail_view.py); finished blocks and the tail are apart inside that view.
    view = lab.cell(1).locator(".pk-tail-view")
    assert view.count() == 1
    assert "def area" in view.locator(".pk-tail").inner_text()
    assert "A paragraph that is finished." not in view.locator(".pk-tail").inner_text()
    lab.cell(1).locator(".pk-stop").click()
    lab.wait_cell_done(1, timeout=20)
    assert outputs(lab, 1)["outputs"] == 1

    lab.run_cell(2)
    lab.page.wait_for_function(f"() => ({OUTPUTS_JS})(2).text.includes('Lisbon')")
    lab.page.wait_for_timeout(300)
    seen = outputs(lab, 2)
    lab.cell(2).evaluate("(el) => el.scrollIntoView()")
    lab.screenshot("live-table-mid-row")
    assert seen["headers"] == ["city", "rain"]
    # the last row is held back until its line is complete; then the table goes on
    assert [r.split() for r in seen["rows"]] == [["Lisbon", "12"]]
    assert "Oslo" not in seen["text"]
    lab.cell(2).locator(".pk-stop").click()
    lab.wait_cell_done(2, timeout=20)
    final = outputs(lab, 2)
    assert final["outputs"] == 1 and "Stopped:" in final["text"]


COMPARE_SETUP = (
    "%load_ext pk_notebook\n"
    "from pk_notebook import Pipeline\n"
    "from pk_notebook.providers import MockProvider, Fault\n"
    "story = 'The lighthouse keeper counted ships. ' * 40\n"
    "fast = Pipeline(MockProvider.scripted(story, chunk_delay=0.02))\n"
    "failing = Pipeline(MockProvider.scripted(story, chunk_delay=0.02,"
    " fault=Fault('error', after=40)))\n"
    "slow = Pipeline(MockProvider.scripted(story, chunk_delay=0.08))\n"
)


def test_three_models_side_by_side_one_fails_one_is_stopped(
    lab_page: LabPage, lab_root: Path
) -> None:
    write_notebook(
        lab_root / "live-compare.ipynb",
        [
            COMPARE_SETUP,
            "%%stream -m fast -m failing -m slow -o compared\nTell a story",
            "print({k: v.status.value for k, v in compared.items()})",
        ],
    )
    lab = lab_page
    lab.open("live-compare.ipynb")
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    cell = lab.cell(1)
    columns = cell.locator(".pk-compare-col")
    columns.nth(2).wait_for(state="visible", timeout=20_000)
    lab.page.wait_for_function(
        """() => {
            const cols = document.querySelectorAll('.pk-compare-col');
            return cols.length === 3 && cols[2].innerText.includes('lighthouse keeper');
        }""",
        timeout=20_000,
    )
    boxes = [columns.nth(i).bounding_box() for i in range(3)]
    assert boxes[0]["y"] == boxes[1]["y"] == boxes[2]["y"], "three columns side by side"
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
    lab.screenshot("compare-live")
    columns.nth(2).locator(".pk-compare-stop").click()
    clicked = time.monotonic()
    lab.wait_cell_done(1, timeout=30)
    print(f"compare cell ended {time.monotonic() - clicked:.1f} s after the click")
    lab.page.wait_for_timeout(300)
    lab.screenshot("compare-final")
    # the answers, then the timings (a widget output, which nbval skips)
    assert cell.locator(".jp-OutputArea-output").count() == 2
    final = cell.locator(".pk-compare-final .pk-compare-col")
    assert final.count() == 3
    assert "Failed:" in final.nth(1).inner_text() and "Stopped:" in final.nth(2).inner_text()
    assert cell.locator(".pk-compare-summary:not(.pk-compare-timings) tbody tr").count() == 3
    timings = cell.locator("table.pk-compare-timings")
    assert timings.locator("tbody tr").count() == 3
    assert "first chunk" in timings.inner_text() and "Timings of this run" in timings.inner_text()
    timings.scroll_into_view_if_needed()
    lab.screenshot("compare-summary")
    # a narrow window stacks the columns
    lab.page.set_viewport_size({"width": 640, "height": 900})
    lab.page.wait_for_timeout(300)
    tops = [final.nth(i).bounding_box()["y"] for i in range(3)]
    assert tops[0] < tops[1] < tops[2]
    lab.page.set_viewport_size({"width": 1280, "height": 900})
    lab.run_cell(2)
    lab.wait_cell_done(2)
    assert lab.output_text(2).strip() == (
        "{'fast': 'finished', 'failing': 'failed', 'slow': 'stopped'}"
    )


MATH_SETUP = COMPARE_SETUP + (
    "from pk_notebook.providers.mock import Scenario\n"
    "MATH = ('Area: $\\\\pi r^2$ here.\\n\\nPrices: \\\\$5 and \\\\$6.\\n\\n'\n"
    "        + 'The lighthouse keeper counted ships. ' * 30)\n"
    "mathy = Pipeline(MockProvider([Scenario(MATH, reasoning='Think about $x$ first. ' * 5)],\n"
    "                              chunk_delay=0.03))\n"
)


def test_columns_typeset_math_and_fold_the_thinking(lab_page: LabPage, lab_root: Path) -> None:
    write_notebook(
        lab_root / "compare-math.ipynb",
        [MATH_SETUP, "%%stream -m mathy -m fast\nShow math"],
    )
    lab = lab_page
    lab.open("compare-math.ipynb")
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    cell = lab.cell(1)
    # while it streams: the thinking section, then typeset math in a finished block
    cell.locator(".pk-compare-thinking details.pk-thinking").first.wait_for(timeout=20_000)
    piece = cell.locator(".pk-compare-live .pk-compare-piece mjx-container")
    piece.first.wait_for(timeout=20_000)
    thinking = cell.locator(".pk-compare-live details.pk-thinking").first
    lab.page.wait_for_function(
        "() => { const d = document.querySelector('.pk-compare-live details.pk-thinking');"
        " return d && !d.open; }",
        timeout=20_000,
    )
    assert "Thinking ·" in thinking.inner_text()
    lab.screenshot("compare-math-thinking")
    lab.wait_cell_done(1, timeout=30)
    lab.page.wait_for_timeout(300)
    col = cell.locator(".pk-compare-final .pk-compare-col").first
    # one formula typeset; the escaped prices stay text, not math
    assert col.locator(":scope > p mjx-container").count() == 1
    assert "$5 and $6" in col.inner_text()
    details = col.locator("details.pk-thinking")
    assert details.count() == 1 and details.evaluate("d => d.open") is False
