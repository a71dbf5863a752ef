"""%%stream -m A -m B -m C in a real kernel: columns, a Stop per column, one final output
(plus, where widgets show, the timings below it in an output nbval skips)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pk_notebook.notebook.live import WIDGET_MIME

from .conftest import Execution, KernelSession, button_comm_ids
from .test_compare_view import IGNORED, left_for_mathjax

pytestmark = pytest.mark.kernel

SETUP = r"""
from pk_notebook import Pipeline
from pk_notebook.providers import MockProvider, Fault
WORDS = ' '.join(f'word{i}' for i in range(60))
steady = Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.01))
broken = Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.01, fault=Fault('error', after=10)))
slow_model = MockProvider.scripted(WORDS, chunk_delay=0.1)
slow = Pipeline(slow_model)
from pk_notebook.providers.mock import Scenario
MATH = (
    "The area is $\\pi r^2$ for a circle of radius $r$.\n\n"
    "It costs \\$5 and \\$6 in two shops.\n\n"
    "$$\\href{javascript:alert(1)}{click}$$\n\n"
    "<script>alert(1)</script> and [a link](javascript:alert(2)).\n"
)
mathy = Pipeline(MockProvider.scripted(MATH, chunk_delay=0.02))
THOUGHT = "The user wants a count. Let me count to five, then stop."
thinker = Pipeline(MockProvider([Scenario("One, two, three, four, five.", reasoning=THOUGHT)],
                                chunk_delay=0.01))
"""


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def saved(execution: Execution) -> list[dict[str, Any]]:
    """The outputs a saved notebook holds that nbval compares (widget-only ones skipped)."""
    kept = []
    for out in execution.outputs:
        data = {k: v for k, v in out.get("data", {}).items() if k != WIDGET_MIME}
        if out["output_type"] in ("display_data", "execute_result") and not data:
            continue
        kept.append({**out, "data": data} if "data" in out else out)
    return kept


def the_output(execution: Execution) -> dict[str, str]:
    """The one output nbval compares: the final answers (no timings in it)."""
    outputs = saved(execution)
    assert len(outputs) == 1, outputs
    data = dict(outputs[0]["data"])
    assert "first chunk" not in data["text/plain"] and "tokens/s" not in data["text/html"]
    return data


def widget_values(execution: Execution) -> dict[str, list[dict[str, Any]]]:
    """Each widget's state after every message that changed it, by comm id, in order."""
    states: dict[str, list[dict[str, Any]]] = {}
    for msg in execution.of_type("comm_open", "comm_msg"):
        content = msg["content"]
        state = content.get("data", {}).get("state")
        if not state:
            continue
        history = states.setdefault(content["comm_id"], [])
        history.append({**(history[-1] if history else {}), **state})
    return states


def math_widgets(execution: Execution, css_class: str) -> list[list[str]]:
    """Every value each HTMLMath widget of ``css_class`` showed, widget by widget."""
    found = []
    for history in widget_values(execution).values():
        last = history[-1]
        if last.get("_model_name") == "HTMLMathModel" and css_class in last.get("_dom_classes", []):
            found.append([h.get("value", "") for h in history if h.get("value")])
    return found


def timings_widget(execution: Execution) -> str:
    """The timings table's HTML: the widget of the widget-only output after the answers."""
    outputs = execution.outputs
    widget_only = [o for o in outputs if set(o.get("data", {})) == {WIDGET_MIME}]
    assert len(widget_only) == 1, outputs
    model_id = widget_only[0]["data"][WIDGET_MIME]["model_id"]
    history = widget_values(execution)[model_id]
    return str(history[-1]["value"])


def test_three_models_one_fails_one_is_stopped_the_other_finishes(k: KernelSession) -> None:
    state: dict[str, Any] = {}

    def stop_the_slow_column(execution: Execution, msg: dict[str, Any]) -> None:
        ids = button_comm_ids(execution)
        if len(ids) == 4 and "clicked" not in state:
            values = [
                m["content"]["data"].get("state", {}).get("value", "")
                for m in execution.of_type("comm_msg")
            ]
            # wait until the slow column has some text, then press its Stop (the third)
            if sum("word" in str(v) for v in values) >= 3:
                state["clicked"] = True
                k.click(ids[2])

    run = k.ok(
        "%%stream -m steady -m broken -m slow -o compared\nCount", during=stop_the_slow_column
    )
    assert state.get("clicked")
    data = the_output(run)
    md = data["text/markdown"]
    assert md.startswith("### steady\n\nword0 word1")
    assert "### broken\n\nword0" in md and "> ⚠ **Failed:** mock: the model failed mid" in md
    assert "### slow\n\nword0" in md and "> ■ **Stopped:** partial answer" in md
    assert "| steady |" in md and "| stop |" in md and "| failed |" in md and "| stopped |" in md
    assert 'class="pk-compare pk-compare-final"' in data["text/html"]
    assert run.count("clear_output") == 1
    statuses = k.value("{label: r.status.value for label, r in compared.items()}")
    assert statuses == "{'steady': 'finished', 'broken': 'failed', 'slow': 'stopped'}"
    assert k.value("compared['steady'].text == WORDS") == "True"
    assert k.value("slow_model.calls[-1].outcome") == "'closed'"
    # every widget of the live view is closed again; the timings table stays, with its
    # layout and style
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    closed = {m["content"]["comm_id"] for m in run.of_type("comm_close")}
    assert len(opened - closed) == 3
    assert "pk-compare-timings" in timings_widget(run)


def test_stop_all_stops_every_column(k: KernelSession) -> None:
    def stop_all(execution: Execution, msg: dict[str, Any]) -> None:
        ids = button_comm_ids(execution)
        if len(ids) == 3 and not getattr(stop_all, "done", False):
            stop_all.done = True  # type: ignore[attr-defined]
            k.click(ids[2])  # two columns' Stop, then Stop all

    run = k.ok("%%stream -m slow,mock:other -o both\nWrite a story about a dragon", during=stop_all)
    statuses = k.value("sorted(r.status.value for r in both.values())")
    assert statuses == "['stopped', 'stopped']"
    assert "Stopped:" in the_output(run)["text/markdown"]


def test_batch_runs_show_only_the_final_output_and_sessions_are_per_model(
    k: KernelSession,
) -> None:
    run = k.ok("%%stream -m steady -m mock -s cmp\nPlan a day in Rome.", interactive=False)
    assert run.count("comm_open") == 0 and run.count("clear_output") == 0
    md = the_output(run)["text/markdown"]
    assert "### mock\n\n## A day in Rome" in md
    sessions = k.value(
        "sorted(s.session_id for s in steady.sync.run(steady.state_store.list_sessions()))"
    )
    assert "'cmp/steady'" in sessions


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-m steady -m broken --tools f", "--tools goes with one model"),
        ("-m steady -m nosuch:model", "unknown provider 'nosuch'"),
        ("-m steady -m steady", "given twice"),
        ("-m steady,slow --pipeline steady", "--pipeline goes with one model"),
    ],
)
def test_usage_errors_are_one_line(k: KernelSession, line: str, message: str) -> None:
    k.ok("def f():\n    return 1", interactive=False)
    run = k.run(f"%%stream {line}\nhi", interactive=False)
    assert run.reply["content"]["status"] == "error"
    assert run.stderr.startswith("UsageError: ") and message in run.stderr, run.stderr


def test_without_widgets_one_status_line_per_model_then_the_answers(k: KernelSession) -> None:
    run = k.ok("%%stream -m steady -m broken --live display\nCount")
    # no live widgets: the only widget is the timings table left at the end
    assert not button_comm_ids(run) and run.count("comm_open") == 3
    assert "pk-compare-timings" in timings_widget(run)
    statuses = [
        m["content"]["data"]["text/plain"]
        for m in run.of_type("display_data", "update_display_data")
        if set(m["content"]["data"]) == {"text/plain"}
    ]
    assert statuses and statuses[0].startswith("steady: ") and "\nbroken: " in statuses[0]
    assert "Kernel > Interrupt" in statuses[-1] or "Stop needs" in statuses[-1]
    md = the_output(run)["text/markdown"]
    assert "### steady" in md and "**Failed:**" in md


def test_interrupt_stops_every_model_and_ends_the_cell_in_error(k: KernelSession) -> None:
    state: dict[str, float] = {}

    def interrupt(execution: Execution, msg: dict[str, Any]) -> None:
        import time

        if msg["msg_type"] == "execute_input":
            state["start"] = time.monotonic()
        if "start" in state and "sent" not in state and time.monotonic() - state["start"] > 1.0:
            state["sent"] = 1
            k.km.interrupt_kernel()

    run = k.run(
        "%%stream -m slow -m mock:other -o cut\nWrite a story about a dragon", during=interrupt
    )
    reply = run.reply["content"]
    assert reply["status"] == "error" and reply["ename"] == "CellInterrupted"
    answer, error = saved(run)
    assert error["output_type"] == "error"
    assert answer["data"]["text/markdown"].count("**Stopped:**") == 2
    assert k.value("sorted(r.status.value for r in cut.values())") == "['stopped', 'stopped']"


def test_math_is_typeset_in_the_columns_but_never_an_open_delimiter(k: KernelSession) -> None:
    run = k.ok("%%stream -m mathy -m steady -o m\nShow some math")
    pieces = [v for values in math_widgets(run, "pk-compare-piece") for v in values]
    tails = [v for values in math_widgets(run, "pk-compare-tail") for v in values]
    assert pieces and tails, "finished blocks and the tail are HTMLMath views"
    # finished blocks typeset their formulas...
    assert any('<span class="pk-math">$\\pi r^2$</span>' in v for v in pieces)
    # ...the tail showed the formula's opening "$" before it closed, inert, then typeset it
    opened = [v for v in tails if "The area is " + IGNORED + "$</span>" in v]
    assert opened, tails[:5]
    for value in pieces + tails:
        # nothing but the math spans is left for MathJax: no escaped dollar, no open one
        assert "$" not in left_for_mathjax(value) and "\\" not in left_for_mathjax(value)
        # the safe-HTML guarantees hold: raw HTML inert, dangerous links dead
        assert "<script" not in value and 'href="javascript' not in value
    # TeX that would make a link is shown as source, not typeset
    assert any(
        'class="pk-math pk-math-display mathjax_ignore tex2jax_ignore">$$\\href' in v
        for v in pieces
    )
    html_final = the_output(run)["text/html"]
    assert '<span class="pk-math">$\\pi r^2$</span>' in html_final
    assert "costs " + IGNORED + "$</span>5" in html_final
    assert "$" not in left_for_mathjax(html_final)
    assert k.value("m['mathy'].text == MATH") == "True"


def test_reasoning_shows_as_a_thinking_section_closed_once_the_answer_starts(
    k: KernelSession,
) -> None:
    run = k.ok("%%stream -m thinker -m steady -o t\nCount")
    (thinking,) = math_widgets(run, "pk-compare-thinking")
    assert thinking[0].startswith('<details class="pk-thinking" open><summary>Thinking…')
    assert 'class="pk-thinking-body"><p>The' in thinking[0]
    # once the answer starts it is rendered closed, once, with its length and duration
    assert thinking[-1].startswith('<details class="pk-thinking"><summary>Thinking · 56 characters')
    assert "Let me count to five, then stop." in thinking[-1]
    assert sum(" open>" not in v for v in thinking) == 1
    answer = "".join(v for values in math_widgets(run, "pk-compare-piece") for v in values)
    assert "Let me count" not in answer  # never mixed into the answer
    data = the_output(run)
    thinker_md = data["text/markdown"].split("### steady")[0]
    assert thinker_md.startswith(
        '### thinker\n\n<details class="pk-thinking">\n<summary>Thinking · 56 characters</summary>'
        "\n\nThe user wants a count. Let me count to five, then stop.\n\n</details>\n\n"
        "One, two, three, four, five."
    )
    assert (
        '<details class="pk-thinking"><summary>Thinking · 56 characters</summary>'
        in data["text/html"]
    )
    assert "[thinker]\n▸ Thinking · 56 characters\nOne, two" in data["text/plain"]
    assert k.value("t['thinker'].reasoning == THOUGHT") == "True"


def test_a_comparison_cell_saves_the_same_output_every_run(k: KernelSession) -> None:
    cell = "%%stream -m thinker -m mathy -m broken\nCount"
    first, second = k.ok(cell), k.ok(cell)  # as JupyterLab runs it: live columns
    batch = k.ok(cell, interactive=False)  # as nbclient / nbval run it
    assert first.count("comm_open") and batch.count("comm_open") == 0
    assert saved(first) == saved(second) == saved(batch)
    assert len(saved(first)) == 1 and "**Failed:**" in the_output(first)["text/markdown"]
    # each run showed its timings, in the widget the saved output does not compare
    for run in (first, second):
        table = timings_widget(run)
        assert all(f"<td>{label}</td>" in table for label in ("thinker", "mathy", "broken"))
    assert "Timings" not in the_output(first)["text/markdown"]


def test_the_timings_are_shown_below_the_answers(k: KernelSession) -> None:
    for live in ("widget", "display"):  # display: no Stop button, widgets still show
        run = k.ok(f"%%stream -m steady -m thinker --live {live}\nCount")
        outputs = run.outputs
        assert "text/markdown" in outputs[0]["data"]  # the answers first, then the timings
        assert set(outputs[1]["data"]) == {WIDGET_MIME}
        table = timings_widget(run)
        assert "<caption" in table and "Timings of this run" in table
        heads = re.findall(r"<th>([^<]*)</th>", table)
        assert heads == ["model", "first chunk", "tokens/s", "total"]
        rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", table)
        assert [r[0] for r in rows] == ["steady", "thinker"]
        for _, first_chunk, rate in rows:
            assert re.fullmatch(r"\d+\.\d\d s", first_chunk) and rate.isdigit()
        # the table is still alive (not closed with the live view), so it keeps showing
        model_id = outputs[1]["data"][WIDGET_MIME]["model_id"]
        assert model_id not in {m["content"]["comm_id"] for m in run.of_type("comm_close")}


def test_nbval_accepts_a_comparison_saved_from_an_interactive_run(
    k: KernelSession, tmp_path: Any
) -> None:
    """What a user does: run the cell in JupyterLab, save, let CI check it with nbval."""
    import os
    import subprocess
    import sys

    import nbformat

    from .conftest import kernel_env

    setup = "%load_ext pk_notebook\n" + SETUP
    cell = "%%stream -m thinker -m mathy -m broken\nCount"
    k.ok(setup, interactive=False)
    run = k.ok(cell)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    code = nbformat.v4.new_code_cell(cell)
    code.outputs = [nbformat.from_dict(o) for o in run.outputs]
    assert len(code.outputs) == 2  # the answers, and the timings nbval skips
    code.execution_count = 2  # nbval: a cell with outputs and no count was never run
    nb.cells = [nbformat.v4.new_code_cell(setup, execution_count=1), code]

    def nbval(path: Any) -> subprocess.CompletedProcess[str]:
        env = kernel_env(tmp_path / "home")
        return subprocess.run(
            [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
             "-p", "no:cacheprovider", "-q", str(path)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**os.environ, **env},
        )  # fmt: skip

    good = tmp_path / "saved.ipynb"
    nbformat.write(nb, good)
    proc = nbval(good)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 passed" in proc.stdout
    # nbval does compare the answers: a changed one fails
    data = code.outputs[0]["data"]
    data["text/markdown"] = data["text/markdown"].replace("One, two", "One, too")
    bad = tmp_path / "changed.ipynb"
    nbformat.write(nb, bad)
    proc = nbval(bad)
    assert proc.returncode != 0 and "1 failed" in proc.stdout, proc.stdout[-3000:]
