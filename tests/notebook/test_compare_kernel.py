"""%%stream -m A -m B -m C in a real kernel: columns, a Stop per column, one final output."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Execution, KernelSession, button_comm_ids

pytestmark = pytest.mark.kernel

SETUP = """
from pk_notebook import Pipeline
from pk_notebook.providers import MockProvider, Fault
WORDS = ' '.join(f'word{i}' for i in range(60))
steady = Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.01))
broken = Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.01, fault=Fault('error', after=10)))
slow_model = MockProvider.scripted(WORDS, chunk_delay=0.1)
slow = Pipeline(slow_model)
"""


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def the_output(execution: Execution) -> dict[str, str]:
    outputs = execution.outputs
    assert len(outputs) == 1, outputs
    return dict(outputs[0]["data"])


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
    # every widget of the live view is closed again
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    closed = {m["content"]["comm_id"] for m in run.of_type("comm_close")}
    assert opened == closed


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
    assert run.count("comm_open") == 0
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
    answer, error = run.outputs
    assert error["output_type"] == "error"
    assert answer["data"]["text/markdown"].count("**Stopped:**") == 2
    assert k.value("sorted(r.status.value for r in cut.values())") == "['stopped', 'stopped']"
