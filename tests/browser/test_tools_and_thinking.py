"""Tools and thinking in a real JupyterLab: the Thinking section and a tool card show while
the cell runs, Stop during a slow tool ends the cell, and the saved output stays collapsed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .jupyterlab import LabPage, write_notebook

pytestmark = pytest.mark.browser

SETUP = '''%load_ext pk_notebook
import asyncio
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider, Scenario

async def slow_tool(seconds: float) -> str:
    """Wait a while, then say so."""
    await asyncio.sleep(seconds)
    return f"waited {seconds} s"

mock = MockProvider([Scenario(
    reasoning="The user wants me to wait. The slow_tool does exactly that, "
              "so I will call it with seconds=30 and report what it says.",
    tool_calls=[{"name": "slow_tool", "arguments": {"seconds": 30}}],
    answer="The tool said: {result}",
)], chunk_delay=0.03)
pipe = Pipeline(ProviderMiddleware(mock))
'''

SHOT = Path("/tmp")


def test_thinking_and_a_tool_card_show_live_and_stop_ends_the_tool(
    lab_page: LabPage, lab_root: Path
) -> None:
    write_notebook(
        lab_root / "tools-thinking.ipynb",
        [
            SETUP,
            "%%stream --pipeline pipe --tools slow_tool -o turn\nPlease wait for me.",
            "print(turn.status.value, [r.status for r in turn.tool_results])",
        ],
    )
    lab = lab_page
    lab.open("tools-thinking.ipynb")
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    cell = lab.cell(1)

    # While the model thinks: an open Thinking section, its text rendered as Markdown.
    thinking = cell.locator("details.pk-thinking").first
    thinking.wait_for(state="visible", timeout=20_000)
    lab.page.wait_for_function(
        """() => [...document.querySelectorAll('details.pk-thinking')]
                 .some(d => d.open && d.innerText.includes('slow_tool'))""",
        timeout=20_000,
    )
    assert "Thinking" in thinking.locator("summary").inner_text()

    # Then the tool card, running; the Thinking section has collapsed.
    card = cell.locator("details.pk-tool-running")
    card.wait_for(state="visible", timeout=20_000)
    summary = card.locator("summary").inner_text()
    assert "slow_tool" in summary and '"seconds": 30' in summary and "running" in summary
    assert not cell.locator("details.pk-thinking").first.evaluate("d => d.open")
    assert card.evaluate("d => d.open"), "a card in progress is open: its arguments show"
    assert '"seconds": 30' in card.locator("pre").first.inner_text()
    lab.page.wait_for_timeout(1200)  # the running time ticks
    assert "running slow_tool" in cell.locator(".pk-status").inner_text()
    assert "s" in card.locator("summary").inner_text().split("running")[-1]
    lab.page.screenshot(path=str(SHOT / "tools-thinking-live.png"))
    lab.screenshot("tools-thinking-live")

    # Stop while the (async, 30 s) tool runs: the cell ends at once, the card says stopped.
    clicked = time.monotonic()
    cell.locator(".pk-stop").click()
    lab.wait_cell_done(1, timeout=15)
    assert time.monotonic() - clicked < 10
    out = lab.output_text(1)
    assert "■ Stopped: while slow_tool ran; the rest was not generated." in out
    assert cell.locator(".jp-OutputArea-output").count() == 1, "one final output"
    assert cell.locator(".pk-stop").count() == 0
    stopped = cell.locator("details.pk-tool-stopped")
    assert stopped.count() == 1 and "stopped" in stopped.locator("summary").inner_text()
    # The saved view: everything collapsed, no durations.
    assert cell.locator("details[open]").count() == 0
    assert "Thinking · " in cell.locator("details.pk-thinking summary").inner_text()
    stopped.locator("summary").click()  # a reader can open the card
    assert "Stopped" in stopped.inner_text()
    lab.page.screenshot(path=str(SHOT / "tools-thinking-stopped.png"))
    lab.screenshot("tools-thinking-stopped")

    lab.run_cell(2)
    lab.wait_cell_done(2)
    assert lab.output_text(2).strip() == "stopped ['stopped']"


def test_the_saved_tutorial_shows_collapsed_sections_when_reopened(
    lab_page: LabPage, lab_root: Path
) -> None:
    # A notebook opened from disk is untrusted: JupyterLab sanitises its Markdown outputs.
    # <details>/<summary> survive, folded; the Thinking text and the card open on a click.
    source = Path(__file__).parents[2] / "notebooks" / "08-tools-and-thinking.ipynb"
    (lab_root / "saved-tools.ipynb").write_text(source.read_text(encoding="utf-8"))
    lab = lab_page
    lab.open("saved-tools.ipynb")
    out = lab.page.locator(".jp-RenderedMarkdown.jp-OutputArea-output").filter(
        has=lab.page.locator("details")
    )
    out.first.wait_for(state="visible", timeout=20_000)
    thinking = out.first.locator("details.pk-thinking")
    card = out.first.locator("details.pk-tool-ok")
    assert thinking.count() == 2 and card.count() == 1
    assert out.first.locator("details[open]").count() == 0
    assert "get_weather" in card.locator("summary").inner_text()
    assert not card.locator("pre").first.is_visible()
    card.locator("summary").click()
    assert "light rain, 14 °C" in card.inner_text()
    thinking.first.locator("summary").click()
    assert "get_weather tool is available" in thinking.first.inner_text()
    out.first.scroll_into_view_if_needed()
    lab.page.screenshot(path=str(SHOT / "tools-thinking-saved.png"))
    lab.screenshot("tools-thinking-saved")


def test_the_chat_shows_thinking_and_cards_in_the_bubble_and_asks_before_a_call(
    lab_page: LabPage, lab_root: Path
) -> None:
    write_notebook(
        lab_root / "chat-tools.ipynb",
        [
            "from pk_notebook import Chat, Pipeline, ProviderMiddleware\n"
            "from pk_notebook.providers import MockProvider\n"
            "def get_weather(city: str) -> str:\n"
            '    """Current weather for a city."""\n'
            '    return f"light rain, 14 °C in {city}"\n'
            "pipe = Pipeline(ProviderMiddleware(MockProvider.demo(chunk_delay=0.01)))\n"
            "chat = Chat(pipe, tools=[get_weather], approve=True, height='520px')\n"
            "chat",
        ],
    )
    lab = lab_page
    lab.open("chat-tools.ipynb")
    lab.run_cell_and_wait(0)
    box = lab.cell(0).locator(".pk-chat-input textarea")
    box.fill("Should I take an umbrella in Paris?")
    lab.cell(0).locator(".pk-chat-send").click()
    ask = lab.cell(0).locator(".pk-chat-approve")
    ask.wait_for(state="visible", timeout=20_000)
    assert "get_weather" in ask.inner_text() and "Paris" in ask.inner_text()
    lab.page.screenshot(path=str(SHOT / "chat-tools-approve.png"))
    ask.locator(".pk-chat-run").click()
    card = lab.cell(0).locator(".pk-chat:not(.pk-chat-saved) details.pk-tool-ok")
    card.wait_for(state="attached", timeout=20_000)
    lab.page.wait_for_function("() => !document.querySelector('.pk-chat-busy')", timeout=20_000)
    bubble = lab.cell(0).locator(".pk-chat:not(.pk-chat-saved) .pk-msg-assistant").last
    assert bubble.locator("details.pk-thinking").count() == 2
    assert bubble.locator("details[open]").count() == 0
    assert "I asked the get_weather tool about Paris" in bubble.inner_text()
    bubble.locator("details.pk-tool-ok summary").click()
    assert "light rain, 14 °C in Paris" in bubble.inner_text()
    assert ask.count() == 0
    lab.page.screenshot(path=str(SHOT / "chat-tools.png"))
    lab.screenshot("chat-tools")
