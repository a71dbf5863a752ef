"""%%stream in real kernels: what front ends and batch tools record, Stop, Interrupt, bursts."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .conftest import Execution, KernelSession, button_comm_ids

pytestmark = pytest.mark.kernel

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

SETUP = """
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider, Fault
slow = MockProvider.demo(chunk_delay=0.05, first_chunk_delay=0.0)
slow_pipe = Pipeline(ProviderMiddleware(slow))
waiting = MockProvider.demo(first_chunk_delay=5.0)
waiting_pipe = Pipeline(ProviderMiddleware(waiting))
city = "Lisbon"
"""


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def final_markdown(execution: Execution) -> str:
    outputs = execution.outputs
    assert len(outputs) == 1, outputs
    assert outputs[0]["output_type"] == "display_data"
    return str(outputs[0]["data"]["text/markdown"])


def answer_updates(execution: Execution) -> list[dict[str, Any]]:
    """The live answer's renders: updates of its display (the status line has its own)."""
    return [
        m
        for m in execution.of_type("update_display_data")
        if "text/markdown" in m["content"]["data"]
    ]


def nbval_view(execution: Execution) -> list[dict[str, Any]]:
    """What nbval compares: every display_data/stream (clear_output ignored), minus
    MIME types it skips (widget views)."""
    seen = []
    for msg in execution.of_type("display_data", "execute_result", "stream", "error"):
        data = {k: v for k, v in msg["content"].get("data", {}).items() if k != WIDGET_MIME}
        if msg["msg_type"] in ("display_data", "execute_result") and not data:
            continue
        seen.append({"type": msg["msg_type"], "data": data, "text": msg["content"].get("text")})
    return seen


def test_batch_run_records_one_final_markdown_output_and_is_byte_stable(k: KernelSession) -> None:
    cell = "%%stream -o answer\nPlan a day in {city}. Keep it to 5 bullet points."
    first = k.ok(cell, interactive=False)
    second = k.ok(cell, interactive=False)
    md = final_markdown(first)
    assert md.startswith("## A day in Lisbon")
    assert md.endswith("short night walk home.")
    # nbclient/nbval/papermill send no stdin: no live view, no widget state, no timings.
    assert first.count("comm_open") == 0 and first.count("clear_output") == 0
    assert [o["data"] for o in first.outputs] == [o["data"] for o in second.outputs]
    assert nbval_view(first) == [
        {"type": "display_data", "data": first.outputs[0]["data"], "text": None}
    ]
    assert k.value("answer.status.value") == "'finished'"


def test_interactive_run_streams_in_a_widget_then_leaves_one_final_output(k: KernelSession) -> None:
    run = k.ok("%%stream\nWrite a haiku about rain")
    assert button_comm_ids(run), "a Stop button was offered"
    widget_views = [m for m in run.of_type("display_data") if WIDGET_MIME in m["content"]["data"]]
    assert len(widget_views) == 1
    # A front end without a widget manager shows the fallback: a hint, not a blank.
    data = widget_views[0]["content"]["data"]
    assert set(data) == {WIDGET_MIME, "text/plain"}
    assert data["text/plain"].startswith("Stop needs Jupyter widgets in this front end")
    # The answer grows in a plain display that any front end shows.
    assert (
        answer_updates(run)
        and "Quiet rain" in answer_updates(run)[-1]["content"]["data"]["text/markdown"]
    )
    assert run.count("clear_output") == 1
    # The saved notebook (clear_output applied) holds exactly the final Markdown.
    assert "Quiet rain waits" in final_markdown(run)
    # Every widget the live view opened was closed again.
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    closed = {m["content"]["comm_id"] for m in run.of_type("comm_close")}
    assert opened == closed


def test_stop_button_stops_the_provider_and_keeps_the_partial_text(k: KernelSession) -> None:
    clicked: dict[str, float] = {}

    def click_after_some_text(execution: Execution, msg: dict[str, Any]) -> None:
        updates = answer_updates(execution)
        if not clicked and len(updates) >= 5:
            clicked["at"] = time.monotonic()
            k.click(button_comm_ids(execution)[0])
        if clicked and "ended" not in clicked and msg["msg_type"] == "clear_output":
            clicked["ended"] = time.monotonic()

    run = k.ok(
        "%%stream --pipeline slow_pipe -s stopper -o stopped\nWrite a story about a dragon",
        during=click_after_some_text,
    )
    latency = clicked["ended"] - clicked["at"]
    print(f"stop click -> final output: {latency * 1000:.0f} ms")
    assert latency < 2.0  # generous: the click is handled within milliseconds
    md = final_markdown(run)
    assert md.startswith("The lighthouse keeper")
    assert md.endswith("> ■ **Stopped:** partial answer; the rest was not generated.")
    assert k.value("slow.calls[-1].outcome") == "'closed'"
    assert k.value("stopped.status.value") == "'stopped'"
    text = k.value("stopped.text")
    assert 5 < len(eval(text)) < 400
    history = k.value(
        "[(m.role, m.status) for m in slow_pipe.sync.run(slow_pipe.state_store.load('stopper'))]"
    )
    assert history == "[('user', None), ('assistant', 'stopped')]"


def test_stop_while_waiting_for_the_first_chunk(k: KernelSession) -> None:
    def click_at_once(execution: Execution, msg: dict[str, Any]) -> None:
        ids = button_comm_ids(execution)
        if ids and not getattr(click_at_once, "done", False):
            click_at_once.done = True  # type: ignore[attr-defined]
            k.click(ids[0])

    run = k.ok("%%stream --pipeline waiting_pipe\nWrite a haiku about snow", during=click_at_once)
    assert run.elapsed < 4.0  # did not wait for the 5 s first chunk
    assert final_markdown(run) == "> ■ **Stopped:** before any text arrived."
    assert k.value("waiting.calls[-1].outcome") == "'closed'"


def test_kernel_interrupt_keeps_partial_text_and_ends_the_cell_in_error(k: KernelSession) -> None:
    state: dict[str, float] = {}

    def interrupt_after_a_while(execution: Execution, msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "execute_input":
            state["start"] = time.monotonic()
        if "start" in state and "sent" not in state and time.monotonic() - state["start"] > 1.0:
            state["sent"] = time.monotonic()
            k.km.interrupt_kernel()

    run = k.run(
        "%%stream --pipeline slow_pipe -s interrupted\nWrite a story about a dragon",
        interactive=False,  # as nbclient does when a cell times out
        during=interrupt_after_a_while,
    )
    # In error, as any interrupted cell (so Run All stops), with one line, no traceback.
    reply = run.reply["content"]
    assert reply["status"] == "error" and reply["ename"] == "CellInterrupted"
    (error,) = run.of_type("error")
    assert len(error["content"]["traceback"]) == 1
    assert "what arrived is kept above" in error["content"]["traceback"][0]
    answer, failure = run.outputs
    assert failure["output_type"] == "error"
    md = answer["data"]["text/markdown"]
    assert md.startswith("The lighthouse keeper") and md.endswith(
        "**Stopped:** partial answer; the rest was not generated."
    )
    history = k.value(
        "[(m.role, m.status) for m in "
        "slow_pipe.sync.run(slow_pipe.state_store.load('interrupted'))]"
    )
    assert history == "[('user', None), ('assistant', 'stopped')]"
    assert k.value("slow.calls[-1].outcome") == "'closed'"
    # The kernel is fine afterwards.
    assert k.value("1 + 1") == "2"


def text_updates(run: Execution, live: str) -> list[dict[str, Any]]:
    # Both surfaces render the answer as a display of its own (the status line is apart).
    return answer_updates(run)


@pytest.mark.parametrize("live", ["widget", "display"])
def test_a_10000_chunk_burst_is_throttled_and_arrives_whole(k: KernelSession, live: str) -> None:
    k.ok(
        "burst = Pipeline(ProviderMiddleware(MockProvider.scripted(' "
        "'.join(f'w{i}' for i in range(10_000)))))\n"
        "paced = Pipeline(ProviderMiddleware(MockProvider.scripted(' "
        "'.join(f'p{i}' for i in range(1_000)), chunk_delay=0.002)))\n",
        interactive=False,
    )
    run = k.ok(f"%%stream --pipeline burst --live {live} -o burst_result\nGo", timeout=120)
    print(
        f"burst/{live}: {len(text_updates(run, live))} text updates, "
        f"{len(run.messages)} iopub messages in {run.elapsed:.2f} s"
    )
    assert k.value("burst_result.chunks") == "10000"
    assert len(text_updates(run, live)) <= 20 * run.elapsed + 3  # at most 20 renders a second
    md = final_markdown(run)
    assert md.startswith("w0 w1 ") and md.endswith("w9998 w9999")

    # The same at a pace that lasts a few seconds: the rate limit is what bounds it.
    run = k.ok(f"%%stream --pipeline paced --live {live}\nGo", timeout=120)
    updates, iopub = len(text_updates(run, live)), len(run.messages)
    print(f"paced/{live}: {updates} text updates, {iopub} iopub messages in {run.elapsed:.2f} s")
    assert run.elapsed > 1.0
    assert updates <= 20 * run.elapsed + 3
    assert iopub <= 50 * run.elapsed + 50  # jupyter_server drops above 1000/s
    assert final_markdown(run).endswith("p998 p999")


def test_errors_show_inline_with_the_partial_text(k: KernelSession) -> None:
    k.ok(
        "broken = Pipeline(ProviderMiddleware(MockProvider.scripted("
        "'one two three four five six seven', fault=Fault('error', after=3))))",
        interactive=False,
    )
    run = k.ok("%%stream --pipeline broken\nanything", interactive=False)
    md = final_markdown(run)
    assert md.startswith("one two three")
    assert "> ⚠ **Failed:** mock: the model failed mid" in md
    assert not run.of_type("error")


def test_usage_errors_are_one_line(k: KernelSession) -> None:
    for cell, expected in [
        ("%%stream --bogus\nhi", "unrecognized arguments: --bogus"),
        ("%%stream\n   \n", "the cell has no prompt"),
        ("%%stream\nTell me about {nowhere}", "no variable 'nowhere'"),
        ("%%stream -t 7\nhi", "temperature must be between 0 and 2"),
        ("%%stream -p nosuch\nhi", "unknown provider 'nosuch'"),
    ]:
        run = k.run(cell, interactive=False)
        assert run.reply["content"]["status"] == "error"
        assert run.stderr.startswith("UsageError: ") and expected in run.stderr, run.stderr
        assert run.stderr.count("\n") == 1 and not run.of_type("error")


def test_help_prints_without_a_body(k: KernelSession) -> None:
    run = k.ok("%%stream --help", interactive=False)
    assert "--session" in run.stdout and "{name}" in run.stdout


def test_two_streams_in_one_cell_keep_their_own_outputs(k: KernelSession) -> None:
    code = (
        "import asyncio\n"
        "from pk_notebook.notebook.runner import run_cell\n"
        "await asyncio.gather(run_cell('--pipeline slow_pipe', 'Write a haiku about rain'),\n"
        "                     run_cell('', 'Plan a day in Rome.'));\n"
    )
    run = k.ok(code)
    outputs = run.outputs
    assert [o["output_type"] for o in outputs] == ["display_data", "display_data"]
    assert "Quiet rain waits" in outputs[0]["data"]["text/markdown"]
    assert outputs[1]["data"]["text/markdown"].startswith("## A day in Rome")


def test_nest_asyncio_applied_by_the_user_changes_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    session = KernelSession(tmp_path_factory.mktemp("nest_home"))
    try:
        session.ok(
            "import nest_asyncio; nest_asyncio.apply()\n%load_ext pk_notebook\n" + SETUP,
            interactive=False,
        )
        assert final_markdown(
            session.ok("%%stream\nPlan a day in Oslo.", interactive=False)
        ).startswith("## A day in Oslo")

        def click(execution: Execution, msg: dict[str, Any]) -> None:
            if len(answer_updates(execution)) == 3:
                session.click(button_comm_ids(execution)[0])

        run = session.ok(
            "%%stream --pipeline slow_pipe\nWrite a story about a dragon", during=click
        )
        assert final_markdown(run).endswith("partial answer; the rest was not generated.")
        assert "nest_asyncio" not in json.dumps(
            session.value(
                "sorted(m for m in __import__('sys').modules if m.startswith('pk_notebook'))"
            )
        )
    finally:
        session.close()


def test_nbclient_saves_the_final_text_and_nbval_accepts_a_rerun(tmp_path: Any) -> None:
    import subprocess
    import sys

    import nbformat
    from nbclient import NotebookClient

    cells = [
        "%load_ext pk_notebook\ncity = 'Lisbon'",
        "%%stream --session trip -o answer\nPlan a day in {city}. Keep it to 5 bullet points.",
        "%%stream --session trip -f code --lang python\nWrite "
        "a Python function that reverses a string",
        "print(answer.status.value, answer.finish_reason)",
        "%stream history trip",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [cell.outputs for cell in nb.cells]
    assert [o.output_type for o in outputs[1]] == ["display_data"]
    assert outputs[1][0].data["text/markdown"].startswith("## A day in Lisbon")
    assert (
        outputs[2][0].data["text/markdown"].startswith("````python\nHere is")
    )  # the answer holds ``` itself
    assert outputs[3][0].text == "finished stop\n"
    assert "[assistant]" in outputs[4][0].data["text/plain"]
    assert "widgets" not in nb.metadata  # no widget state saved by a batch run
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    # nbval re-runs the notebook and compares every output with the saved ones.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "5 passed" in proc.stdout
