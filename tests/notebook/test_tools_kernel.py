"""``%%stream --tools`` in a real kernel: thinking and tool cards live, the saved output,
Stop while a tool runs, Run / Deny."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import Execution, KernelSession, button_comm_ids

pytestmark = pytest.mark.kernel

SETUP = '''
import asyncio, time
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider, Scenario

def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Light rain, 14 °C in {city}"

async def slow_tool(seconds: float) -> str:
    """Wait a while (async)."""
    await asyncio.sleep(seconds)
    return "slept"

def slow_sync_tool(seconds: float) -> str:
    """Wait a while (in a thread)."""
    time.sleep(seconds)
    return "slept"

def scripted(name):
    return Pipeline(ProviderMiddleware(MockProvider([Scenario(
        reasoning="I will call the slow tool and wait for it.",
        tool_calls=[{"name": name, "arguments": {"seconds": 20}}],
        answer="It said: {result}",
    )], chunk_delay=0.01)))

slow_pipe = scripted("slow_tool")
sync_pipe = scripted("slow_sync_tool")
'''

UMBRELLA = "%%stream --tools get_weather -o res\nShould I take an umbrella in Paris?"


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def final_markdown(execution: Execution) -> str:
    outputs = execution.outputs
    assert len(outputs) == 1, outputs
    return str(outputs[0]["data"]["text/markdown"])


def markdown_updates(execution: Execution) -> list[str]:
    return [
        m["content"]["data"]["text/markdown"]
        for m in execution.of_type("update_display_data")
        if "text/markdown" in m["content"]["data"]
    ]


def test_the_saved_output_is_byte_stable_with_thinking_and_a_tool_card(k: KernelSession) -> None:
    first = k.ok(UMBRELLA, interactive=False)
    second = k.ok(UMBRELLA, interactive=False)
    md = final_markdown(first)
    assert [o["data"] for o in first.outputs] == [o["data"] for o in second.outputs]
    assert md.startswith('<details class="pk-thinking">\n<summary>Thinking · ')
    assert '<details class="pk-tool pk-tool-ok">' in md and " open" not in md
    assert not re.search(r"\d\.\d+ s\b", md), "no durations in the saved output"
    assert md.index("pk-tool") < md.index("I asked the `get_weather` tool about **Paris**")
    assert "Light rain, 14 °C in Paris" in md
    assert k.value("[r.status for r in res.tool_results]") == "['ok']"


def test_live_parts_get_displays_of_their_own_then_one_final_output(k: KernelSession) -> None:
    batch = k.ok(UMBRELLA, interactive=False)
    run = k.ok(UMBRELLA)
    updates = markdown_updates(run)
    assert any(u.startswith('<details class="pk-thinking" open>') for u in updates)
    assert any('<details class="pk-tool pk-tool-calling" open>' in u for u in updates)
    # The live displays: the first part took the answer's display, the others got new ones.
    displays = [
        m
        for m in run.of_type("display_data")
        if m["content"].get("transient", {}).get("display_id")
    ]
    assert len(displays) >= 4  # status, thinking, card, thinking, answer (display surface)...
    assert final_markdown(run) == final_markdown(batch)


def stop_while(k: KernelSession, pipe: str, tool: str) -> tuple[Execution, dict[str, Any]]:
    clicked: dict[str, Any] = {}

    def click_when_running(execution: Execution, msg: dict[str, Any]) -> None:
        if clicked:
            return
        if any("· running" in u for u in markdown_updates(execution)):
            k.click(button_comm_ids(execution)[0])
            clicked["done"] = True

    run = k.ok(
        f"%%stream --pipeline {pipe} --tools {tool} -o stopped\ngo", during=click_when_running
    )
    return run, clicked


def test_stop_while_an_async_tool_runs(k: KernelSession) -> None:
    run, clicked = stop_while(k, "slow_pipe", "slow_tool")
    assert clicked, "the tool never showed as running"
    assert run.elapsed < 15, "Stop did not end the 20 s tool"
    statuses = [
        str(m["content"]["data"].get("state", {}).get("value", "")) for m in run.of_type("comm_msg")
    ]
    assert any("running slow_tool" in s for s in statuses), "the status line names the tool"
    md = final_markdown(run)
    assert '<details class="pk-tool pk-tool-stopped">' in md and "· stopped</summary>" in md
    assert md.endswith("> ■ **Stopped:** while slow\\_tool ran; the rest was not generated.")
    assert k.value("[r.status for r in stopped.tool_results]") == "['stopped']"
    assert k.value("stopped.status.value") == "'stopped'"


def test_stop_while_a_sync_tool_runs_abandons_its_thread(k: KernelSession) -> None:
    run, clicked = stop_while(k, "sync_pipe", "slow_sync_tool")
    assert clicked and run.elapsed < 15
    md = final_markdown(run)
    assert '<details class="pk-tool pk-tool-abandoned">' in md and "· abandoned</summary>" in md
    assert "thread is left to finish" in md
    assert k.value("[r.status for r in stopped.tool_results]") == "['abandoned']"


@pytest.mark.parametrize(("button", "status"), [(1, "ok"), (2, "denied")])
def test_approve_shows_run_and_deny(k: KernelSession, button: int, status: str) -> None:
    clicked: dict[str, Any] = {}

    def click(execution: Execution, msg: dict[str, Any]) -> None:
        ids = button_comm_ids(execution)
        if not clicked and len(ids) >= 3:  # Stop, then Run and Deny
            clicked["ids"] = ids
            k.click(ids[button])

    run = k.ok(
        "%%stream --tools get_weather --approve -o approved\nShould I take an umbrella in Paris?",
        during=click,
    )
    assert clicked, "no Run / Deny buttons were offered"
    assert k.value("[r.status for r in approved.tool_results]") == repr([status])
    texts = [
        m["content"]["data"].get("text/plain", "")
        for m in run.of_type("display_data", "update_display_data")
    ]
    assert any(t.startswith("Run / Deny need Jupyter widgets") for t in texts), "a fallback hint"
    assert f"get_weather: {'run' if status == 'ok' else 'denied'}" in texts
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    closed = {m["content"]["comm_id"] for m in run.of_type("comm_close")}
    assert opened == closed, "every widget was closed"


def test_approve_in_a_batch_run_denies_and_says_why(k: KernelSession) -> None:
    run = k.ok(
        "%%stream --tools get_weather --approve -o approved\nShould I take an umbrella in Paris?",
        interactive=False,
    )
    md = final_markdown(run)
    assert "· denied</summary>" in md
    assert md.endswith(
        "> ⚠ **Note:** --approve: nobody can click Run in a batch run (nbconvert, nbval, "
        "papermill), so every tool call is denied."
    )


def test_a_missing_or_wrong_tool_is_one_line(k: KernelSession) -> None:
    run = k.run("%%stream --tools nowhere\nhi", interactive=False)
    content = run.reply["content"]
    assert content["status"] == "error" and content["ename"] == "UsageError"
    assert "there is no function 'nowhere' in this notebook" in content["evalue"]
    assert "Traceback" not in run.stderr
    k.ok("not_a_function = 42", interactive=False)
    run = k.run("%%stream --tools not_a_function\nhi", interactive=False)
    assert "'not_a_function' is not a function (its type is int)" in run.reply["content"]["evalue"]


@pytest.mark.slow
def test_approve_on_colabs_kernel_denies_with_a_hint_and_no_dead_button(
    old_kernel: KernelSession,
) -> None:
    old_kernel.ok(
        'def get_weather(city: str) -> str:\n    """Current weather."""\n    return "rain"',
        interactive=False,
    )
    run = old_kernel.ok(
        "%%stream --tools get_weather --approve -o approved\nShould I take an umbrella in Paris?"
    )
    assert not button_comm_ids(run), "no button on a kernel that cannot handle its click"
    hint = "--approve: Run / Deny buttons need ipykernel >= 7.4 (this kernel has 6.17.1)"
    statuses = [
        m["content"]["data"].get("text/plain", "")
        for m in run.of_type("display_data", "update_display_data")
    ]
    assert any(hint in s for s in statuses), "the live status says why"
    md = final_markdown(run)
    escaped = hint.replace(">", "\\>")  # Markdown-escaped in the note
    assert "· denied</summary>" in md and md.endswith(escaped + ", so every tool call is denied.")
    assert old_kernel.value("[r.status for r in approved.tool_results]") == "['denied']"


def test_stop_while_waiting_for_approval(k: KernelSession) -> None:
    clicked: dict[str, Any] = {}

    def stop_at_the_question(execution: Execution, msg: dict[str, Any]) -> None:
        ids = button_comm_ids(execution)
        if not clicked and len(ids) >= 3:
            clicked["ids"] = ids
            k.click(ids[0])  # Stop, not Run nor Deny

    run = k.ok(
        "%%stream --tools get_weather --approve -o waited\nShould I take an umbrella in Paris?",
        during=stop_at_the_question,
    )
    assert clicked
    assert k.value("waited.status.value") == "'stopped'"
    texts = [
        m["content"]["data"].get("text/plain", "")
        for m in run.of_type("display_data", "update_display_data")
    ]
    assert "get_weather: not decided (the turn ended)" in texts
    md = final_markdown(run)
    assert "pk-tool-running" not in md and "pk-tool-ok" not in md
    assert "■ **Stopped:**" in md
    opened = {m["content"]["comm_id"] for m in run.of_type("comm_open")}
    closed = {m["content"]["comm_id"] for m in run.of_type("comm_close")}
    assert opened == closed
