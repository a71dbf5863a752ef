"""Issue 13 in real kernels: %%time / %%capture around %%stream, and one-line errors.

Each check runs a cell as JupyterLab (or nbclient) would and reads what the kernel
sent back: the outputs, the stdout/stderr streams and the execute reply.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Execution, KernelSession, button_comm_ids

pytestmark = pytest.mark.kernel

SETUP = """
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider
slow = MockProvider.demo(chunk_delay=0.05, first_chunk_delay=0.0)
slow_pipe = Pipeline(ProviderMiddleware(slow))
city = "Lisbon"
"""


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def markdown_outputs(execution: Execution) -> list[str]:
    return [
        str(o["data"]["text/markdown"])
        for o in execution.outputs
        if o["output_type"] == "display_data" and "text/markdown" in o.get("data", {})
    ]


def one_line_usage_error(execution: Execution) -> str:
    """The execution failed with IPython's one-line UsageError (no traceback)."""
    assert execution.reply["content"]["status"] == "error"
    assert not execution.of_type("error"), "a traceback was sent"
    stderr = execution.stderr
    assert stderr.startswith("UsageError: ") and stderr.count("\n") == 1, stderr
    return stderr


@pytest.mark.parametrize("interactive", [True, False], ids=["lab", "batch"])
def test_time_above_stream_times_the_answer(k: KernelSession, interactive: bool) -> None:
    run = k.ok("%%time\n%%stream -o timed\nPlan a day in {city}.", interactive=interactive)
    assert "CPU times: user " in run.stdout and "\nWall time: " in run.stdout, run.stdout
    (md,) = markdown_outputs(run)
    assert md.startswith("## A day in Lisbon")
    assert k.value("timed.status.value") == "'finished'"


def test_stop_still_works_under_time(k: KernelSession) -> None:
    def click_after_some_text(execution: Execution, msg: dict[str, Any]) -> None:
        updates = [
            m
            for m in execution.of_type("update_display_data")
            if "text/markdown" in m["content"]["data"]
        ]
        if len(updates) == 5:
            k.click(button_comm_ids(execution)[0])

    run = k.ok(
        "%%time\n%%stream --pipeline slow_pipe -o stopped\nWrite a story about a dragon",
        during=click_after_some_text,
    )
    (md,) = markdown_outputs(run)
    assert md.endswith("**Stopped:** partial answer; the rest was not generated.")
    assert "Wall time: " in run.stdout
    assert k.value("stopped.status.value") == "'stopped'"


def test_capture_above_stream_captures_the_final_answer_only(k: KernelSession) -> None:
    run = k.ok("%%capture out\n%%stream -o captured\nPlan a day in {city}.")
    assert run.outputs == [] and run.stdout == "" and run.stderr == ""
    assert run.count("comm_open") == 0  # no live view that nobody would see
    assert k.value("len(out.outputs)") == "1"
    assert k.value("out.outputs[0].data['text/markdown'][:17]") == "'## A day in Lisbo'"
    assert k.value("out.stdout") == "''"
    assert k.value("captured.status.value") == "'finished'"


def test_time_and_capture_nest_in_either_order(k: KernelSession) -> None:
    run = k.ok("%%time\n%%capture out2\n%%stream\nPlan a day in {city}.")
    assert run.outputs[0]["output_type"] == "stream" and "Wall time: " in run.stdout
    assert markdown_outputs(run) == []
    assert k.value("len(out2.outputs)") == "1"

    run = k.ok("%%capture out3\n%%time\n%%stream\nPlan a day in {city}.")
    assert run.outputs == []
    assert "Wall time: " in eval(k.value("out3.stdout"))


def test_capture_without_display_keeps_the_live_view(k: KernelSession) -> None:
    run = k.ok("%%capture out4 --no-display\n%%stream\nWrite a haiku about rain")
    assert button_comm_ids(run), "the live view with its Stop button was shown"
    (md,) = markdown_outputs(run)
    assert "Quiet rain waits" in md


@pytest.mark.parametrize("magic", ["timeit", "timeit -n1 -r1", "prun", "debug"])
def test_wrappers_that_cannot_work_are_refused_in_one_line(k: KernelSession, magic: str) -> None:
    k.ok("slow.calls.clear()", interactive=False)
    run = k.run(f"%%{magic}\n%%stream --pipeline slow_pipe\nhi", interactive=False)
    stderr = one_line_usage_error(run)
    assert stderr.startswith(f"UsageError: %%{magic.split()[0]} ") and "%%stream" in stderr
    assert k.value("len(slow.calls)") == "0"  # nothing was sent


def test_usage_errors_inside_a_wrapper_stay_one_line(k: KernelSession) -> None:
    run = k.run("%%capture\n%%stream\nTell me about {nowhere}", interactive=False)
    assert "no variable 'nowhere'" in one_line_usage_error(run)


def test_store_down_is_one_line_in_a_kernel(k: KernelSession) -> None:
    k.ok("%stream config --store redis://127.0.0.1:1/0", interactive=False)
    try:
        for command in ("sessions", "history trip", "reset trip"):
            stderr = one_line_usage_error(k.run(f"%stream {command}", interactive=False))
            assert "redis://127.0.0.1:1/0" in stderr and "--store memory" in stderr
    finally:
        k.ok("%stream config --store memory", interactive=False)


def test_chat_without_a_key_is_one_line_in_a_kernel(k: KernelSession) -> None:
    k.ok("%stream config --provider openai", interactive=False)
    try:
        run = k.run("from pk_notebook import Chat\nchat = Chat()", interactive=False)
        assert "set OPENAI_API_KEY" in one_line_usage_error(run)
        # Nothing half-built is left to complain later (a widget's __del__ closes it).
        after = k.ok("import gc; gc.collect(); print('clean')", interactive=False)
        assert after.stdout == "clean\n" and after.stderr == ""
    finally:
        k.ok("%stream config --provider mock", interactive=False)
