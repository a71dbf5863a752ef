"""Run All with three ``%%stream`` cells: Interrupt stops the queue, Stop does not.

In Jupyter an interrupted cell ends in error and the kernel aborts the cells
queued behind it (more paid model calls); a Stop click ends only that answer.
The three cells are sent back to back as JupyterLab's Run All does
(``stop_on_error``), to a real kernel.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

import pytest

from .conftest import KernelSession, button_comm_ids

pytestmark = pytest.mark.kernel

SETUP = """
from pk_notebook import Pipeline
from pk_notebook.providers import MockProvider
slow = MockProvider.demo(chunk_delay=0.05, first_chunk_delay=0.0)
slow_pipe = Pipeline(slow)
"""

CELLS = [
    "%%stream --pipeline slow_pipe\nWrite a story about a dragon",
    "%%stream --pipeline slow_pipe\nWrite a haiku about rain",
    "%%stream --pipeline slow_pipe\nPlan a day in Rome.",
]


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def run_all(k: KernelSession, act: Any, timeout: float = 60) -> list[dict[str, Any]]:
    """Send every cell at once; ``act(first_cell_messages)`` may click or interrupt."""
    ids = [k.kc.execute(cell, allow_stdin=True, stop_on_error=True) for cell in CELLS]
    first: list[dict[str, Any]] = []
    replies: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(ids):
        assert time.monotonic() < deadline, f"replies so far: {list(replies)}"
        try:
            msg = k.kc.get_iopub_msg(timeout=0.05)
            if msg["parent_header"].get("msg_id") == ids[0]:
                first.append(msg)
                act(first)
        except Empty:
            act(first)
        try:
            reply = k.kc.get_shell_msg(timeout=0)
        except Empty:
            continue
        replies[reply["parent_header"]["msg_id"]] = reply["content"]
    # drain what is left on iopub so the next test starts clean
    while True:
        try:
            k.kc.get_iopub_msg(timeout=0.5)
        except Empty:
            break
    return [replies[i] for i in ids]


def answer_renders(messages: list[dict[str, Any]]) -> int:
    return sum(
        1
        for m in messages
        if m["msg_type"] == "update_display_data" and "text/markdown" in m["content"]["data"]
    )


def test_interrupt_during_the_first_cell_leaves_the_others_unexecuted(k: KernelSession) -> None:
    k.ok("slow.reset()", interactive=False)
    state: dict[str, bool] = {}

    def interrupt(first: list[dict[str, Any]]) -> None:
        if not state and answer_renders(first) >= 3:
            state["sent"] = True
            k.km.interrupt_kernel()

    statuses = [reply["status"] for reply in run_all(k, interrupt)]
    assert statuses == ["error", "aborted", "aborted"]
    assert k.value("len(slow.calls)") == "1"  # the queued cells never called the model


def test_stop_during_the_first_cell_lets_the_others_run(k: KernelSession) -> None:
    k.ok("slow.reset()", interactive=False)
    state: dict[str, bool] = {}

    def stop(first: list[dict[str, Any]]) -> None:
        if not state and answer_renders(first) >= 3:
            state["sent"] = True
            k.click(button_comm_ids_of(first)[0])

    statuses = [reply["status"] for reply in run_all(k, stop)]
    assert statuses == ["ok", "ok", "ok"]
    outcomes = k.value("[c.outcome for c in slow.calls]")
    assert outcomes == "['closed', 'finished', 'finished']"


def button_comm_ids_of(messages: list[dict[str, Any]]) -> list[str]:
    class _Run:
        def of_type(self, *types: str) -> list[dict[str, Any]]:
            return [m for m in messages if m["msg_type"] in types]

    return button_comm_ids(_Run())  # type: ignore[arg-type]
