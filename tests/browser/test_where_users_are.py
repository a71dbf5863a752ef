"""Where notebook users really are (issue 13), in a real JupyterLab driven by Chromium.

Each test runs a setup users have (tests/browser/conftest.py): JupyterLab from a second
environment without anywidget's front end, or without any widget manager (a hub or a
conda kernel); Colab's ipykernel 6.17.1; and the normal setup for what survives a busy
kernel, a browser reload and a closed kernel. The mock provider answers throughout.

Screenshots land in test-artifacts/ (where-*.png).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pk_notebook.notebook.chat_input import HINT_NO_FRONT_END
from pk_notebook.notebook.live import HINT_NO_WIDGETS

from .jupyterlab import JupyterLab, LabPage

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The demo story (83 chunks): at 0.05 s a chunk it streams for about 4 s.
SLOW = (
    "%load_ext pk_notebook\n"
    "from pk_notebook import Pipeline\n"
    "from pk_notebook.providers import MockProvider\n"
    "slow = Pipeline(MockProvider.demo(chunk_delay=0.05))"
)
STORY_CELL = "%%stream --pipeline slow\nWrite a story about a dragon"
STORY_START = "The lighthouse keeper had not seen a ship in eleven years"
STORY_END = "every spring another paper boat arrived."

CHAT_SETUP = (
    "from pk_notebook import Chat, Pipeline\n"
    "from pk_notebook.providers import MockProvider\n"
    "pipe = Pipeline(MockProvider.demo(chunk_delay={delay}))"
)

# The live chat widget (its saved copy, hidden while it is on the page, is a .pk-chat too).
LIVE_CHAT = ".pk-chat:not(.pk-chat-saved)"

# The live chat's first answer is the demo haiku (its last line: "the kettle answers.").
HAIKU_ANSWERED = (
    f"() => document.querySelector('{LIVE_CHAT} .pk-answer')?.innerText.includes('kettle')"
)

# The chat's message box: an ipywidgets Textarea; before issue 13 the box was an anywidget
# <textarea class="pk-chat-input">, so tests of other features find either.
ANY_CHAT_BOX = ".pk-chat-input textarea, textarea.pk-chat-input"

# What the widget manager shows for a model whose front end is missing.
BROKEN_WIDGET_TEXT = ("Click to show javascript error", "Failed to load model class")

# The answer in cell ``index`` as rendered Markdown (the growing display, then the final one).
ANSWER_JS = """(index) => {
    const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
    if (!cell) return '';
    return Array.from(cell.querySelectorAll('.jp-OutputArea .jp-RenderedMarkdown'))
        .map((el) => el.innerText).join('\\n').trim();
}"""


def answer(page: LabPage, index: int) -> str:
    return str(page.page.evaluate(ANSWER_JS, index))


def running(page: LabPage, index: int) -> bool:
    return "[*]" in page.cell(index).locator(".jp-InputArea-prompt").inner_text()


def visible_text(page: LabPage) -> str:
    """Every text a user can see on the page (innerText leaves out display: none)."""
    return str(page.page.evaluate("() => document.body.innerText"))


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} (waited {timeout:g} s)")
        time.sleep(interval)
    return time.monotonic() - start


def story_grows(lab: JupyterLab, page: LabPage, name: str) -> None:
    """Open a notebook with the slow story in cell 1, run it, and check that its answer
    grows while the cell runs (not all at the end)."""
    lab.notebook(name, [SLOW, STORY_CELL])
    page.open(name)
    page.run_cell_and_wait(0)
    first = start_story(page, 1)
    time.sleep(1.0)
    second = answer(page, 1)
    assert running(page, 1)
    assert len(second) > len(first), "the answer did not grow while the cell ran"
    assert second.startswith(first[:20])


def start_story(page: LabPage, index: int) -> str:
    """Run the slow story cell ``index`` and return its answer once some text shows, while
    the cell still runs (the answer grows in the cell, not only at the end)."""
    page.run_cell(index)
    wait_for(lambda: len(answer(page, index)) > 20, 20, "no answer text showed in the cell")
    text = answer(page, index)
    assert running(page, index), "the cell had already ended: the text only came at the end"
    return text


def test_chat_in_a_split_environment_without_anywidgets_front_end(
    lab_without_anywidget: JupyterLab, page_without_anywidget: LabPage
) -> None:
    """A hub whose JupyterLab lacks anywidget: type, Send, answer, Stop; no red error box."""
    page = page_without_anywidget
    name = "where-chat-split.ipynb"
    lab_without_anywidget.notebook(
        name,
        [
            CHAT_SETUP.format(delay=0.05),
            'chat = Chat(pipe, session_id="split", title="JupyterHub chat")\nchat',
        ],
    )
    page.open(name)
    page.run_cell_and_wait(0)
    page.run_cell_and_wait(1)
    chat = page.page.locator(LIVE_CHAT).first
    box = chat.locator(".pk-chat-input textarea")
    box.wait_for(state="visible", timeout=30_000)

    # Typed into and sent with the Send button: an answer comes back.
    box.click()
    box.type("Write a haiku about the sea")
    assert box.input_value() == "Write a haiku about the sea"
    chat.locator(".pk-chat-send").click()
    chat.locator(".pk-msg-user").first.wait_for(timeout=15_000)
    page.page.wait_for_function(
        HAIKU_ANSWERED,
        timeout=20_000,
    )
    assert "Write a haiku about the sea" in chat.locator(".pk-msg-user").first.inner_text()
    assert box.input_value() == ""

    # One line says how to get Enter-to-send; nothing broken is on screen.
    hint = chat.locator(".pk-chat-hint")
    assert hint.is_visible()
    assert hint.inner_text().strip() == HINT_NO_FRONT_END
    seen = visible_text(page)
    for text in BROKEN_WIDGET_TEXT:
        assert text not in seen, f"{text!r} is visible"

    # A long answer can be stopped.
    box.click()
    box.type("Tell me a story")
    chat.locator(".pk-chat-send").click()
    page.page.wait_for_function(
        """() => {
            const a = document.querySelectorAll('.pk-chat:not(.pk-chat-saved) .pk-answer');
            return a.length === 2 && a[1].innerText.length > 20;
        }""",
        timeout=20_000,
    )
    stop = chat.locator(".pk-chat-stop")
    assert stop.is_enabled()
    stop.click()
    chat.locator(".pk-marker-stopped").wait_for(timeout=5_000)
    stopped = chat.locator(".pk-answer").nth(1).inner_text()
    assert STORY_END not in stopped, "the whole story arrived: Stop did nothing"
    chat.scroll_into_view_if_needed()
    page.screenshot("where-chat-split-environment")
    for text in BROKEN_WIDGET_TEXT:
        assert text not in visible_text(page), f"{text!r} is visible"


def test_stream_cell_grows_where_jupyterlab_lacks_anywidget(
    lab_without_anywidget: JupyterLab, page_without_anywidget: LabPage
) -> None:
    """A JupyterLab without anywidget's front end: the browser-rendered live view (delta
    transport) cannot load, so the kernel never shows it; the answer grows through display
    updates under a working Stop button, and no widget error is on screen."""
    page = page_without_anywidget
    story_grows(lab_without_anywidget, page, "where-stream-split.ipynb")
    assert page.cell(1).locator(".pk-tail-view").count() == 0
    for text in BROKEN_WIDGET_TEXT:
        assert text not in visible_text(page), f"{text!r} is visible"
    page.screenshot("where-stream-split-live")
    page.cell(1).locator(".pk-stop").click()
    page.wait_cell_done(1, timeout=20)
    final = page.cell(1).locator(".jp-RenderedMarkdown").inner_text()
    assert final.startswith(STORY_START) and STORY_END not in final


def test_stream_cell_grows_where_jupyterlab_has_no_widget_manager(
    lab_without_widgets: JupyterLab, page_without_widgets: LabPage
) -> None:
    """No jupyterlab_widgets: the answer grows in the cell under the Stop hint, ends once."""
    page = page_without_widgets
    story_grows(lab_without_widgets, page, "where-stream-no-widgets.ipynb")
    assert HINT_NO_WIDGETS in page.output_text(1)
    page.screenshot("where-stream-no-widgets-live")

    page.wait_cell_done(1, timeout=30)
    cell = page.cell(1)
    assert cell.locator(".jp-OutputArea-output").count() == 1, "one final output"
    final = cell.locator(".jp-RenderedMarkdown").inner_text()
    assert final.startswith(STORY_START) and final.rstrip().endswith(STORY_END)
    assert HINT_NO_WIDGETS not in page.output_text(1)


def test_ipykernel6_shows_the_hint_and_interrupt_keeps_the_partial_answer(
    page_ipykernel6: LabPage,
) -> None:
    """Colab's kernel: no dead Stop button but a hint; Interrupt keeps the partial answer and
    ends the cell in error (one line), so a Run All would stop there."""
    page = page_ipykernel6
    name = "where-ipykernel6.ipynb"
    page.lab.notebook(name, [SLOW, STORY_CELL, "print('after')"])
    page.open(name)
    page.run_cell_and_wait(0)

    start_story(page, 1)
    output = page.cell(1).locator(".jp-OutputArea").first
    assert output.locator("button", has_text="Stop").count() == 0, "a dead Stop button"
    assert "Stop needs ipykernel >= 7.4" in page.output_text(1)
    page.screenshot("where-ipykernel6-live")

    page.page.locator(
        '.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]'
    ).first.click()
    page.wait_cell_done(1, timeout=20)
    time.sleep(0.3)
    text = page.output_text(1)
    page.screenshot("where-ipykernel6-interrupted")
    final = answer(page, 1)
    assert final.startswith(STORY_START[:20]), text
    assert STORY_END not in final, "the whole story arrived: Interrupt did not stop it"
    assert "Stopped:" in text, text
    assert "CellInterrupted" in text, "the cell should end in error (Run All stops there)"
    assert "Traceback" not in text and "Stop needs" not in text


def test_a_message_sent_while_the_kernel_is_busy_shows_as_pending(lab_page: LabPage) -> None:
    """Enter while another cell runs: the message shows as pending at once, then is sent."""
    page = lab_page
    name = "where-pending.ipynb"
    page.lab.notebook(
        name,
        [
            CHAT_SETUP.format(delay=0.01),
            'chat = Chat(pipe, session_id="pending", title="Busy kernel")\nchat',
            "import time; time.sleep(4)",
        ],
    )
    page.open(name)
    page.run_cell_and_wait(0)
    page.run_cell_and_wait(1)
    chat = page.page.locator(LIVE_CHAT).first
    box = chat.locator(ANY_CHAT_BOX)
    box.wait_for(state="visible", timeout=30_000)
    # Enter sends once the keyboard enhancer has rendered (it marks the chat); before
    # the Textarea, the box was itself the anywidget that sent on Enter.
    page.page.wait_for_selector(".pk-chat.pk-chat-keys, textarea.pk-chat-input", timeout=15_000)

    page.run_cell(2)
    wait_for(lambda: running(page, 2), 5, "the sleep cell did not start")
    box.click()
    box.type("Write a haiku about the sea")
    box.press("Enter")
    took = wait_for(lambda: chat.locator(".pk-chat-pending").count() > 0, 3, "no pending message")
    assert took < 1.0, f"the pending message took {took:.1f} s"
    assert running(page, 2), "the kernel was no longer busy"
    pending = chat.locator(".pk-chat-pending")
    assert "Write a haiku about the sea" in pending.first.inner_text()
    assert chat.locator(".pk-msg-user").count() == 0
    page.screenshot("where-chat-pending")

    page.wait_cell_done(2, timeout=20)
    chat.locator(".pk-msg-user").first.wait_for(timeout=15_000)
    page.page.wait_for_function(
        HAIKU_ANSWERED,
        timeout=15_000,
    )
    wait_for(lambda: pending.count() == 0, 5, "the pending bubble stayed")
    assert "Write a haiku about the sea" in chat.locator(".pk-msg-user").first.inner_text()
    assert chat.locator(".pk-msg-user").count() == 1, "the message was sent once"


def test_stream_last_shows_the_whole_answer_after_a_reload(lab_page: LabPage) -> None:
    """A reload mid-stream loses the cell's view; %stream last shows the whole answer."""
    page = lab_page
    name = "where-reload.ipynb"
    page.lab.notebook(name, [SLOW, STORY_CELL, "%stream last"])
    page.open(name)
    page.run_cell_and_wait(0)
    start_story(page, 1)

    page.page.reload(wait_until="domcontentloaded")
    page.wait_ready()  # the kernel is idle: the answer has ended while no page was there
    page.run_cell_and_wait(2)
    text = page.output_text(2)
    page.screenshot("where-stream-last-after-reload")
    shown = answer(page, 2)
    assert shown.startswith(STORY_START), text
    assert shown.rstrip().endswith(STORY_END), text
    assert "83 chunks" in text and "finished" in text, text


def test_a_reopened_notebook_shows_the_chat_without_its_kernel(lab_page: LabPage) -> None:
    """Saved, kernel shut down, reopened: the cell shows the saved transcript of both turns."""
    page = lab_page
    name = "where-saved-chat.ipynb"
    path = page.lab.notebook(
        name,
        [
            CHAT_SETUP.format(delay=0),
            'chat = Chat(pipe, session_id="saved", title="Saved chat")\nchat',
            '_ = await chat.send("Write a haiku about the sea")\n'
            '_ = await chat.send("Tell me a story")',
        ],
    )
    page.open(name)
    page.run_cell_and_wait(0)
    page.run_cell_and_wait(1)
    page.page.locator(LIVE_CHAT).first.locator(ANY_CHAT_BOX).wait_for(timeout=30_000)
    page.run_cell_and_wait(2)
    chat = page.page.locator(LIVE_CHAT).first
    wait_for(lambda: chat.locator(".pk-msg-user").count() == 2, 10, "two turns in the chat")
    # While the live chat is on the page, its saved copy is not visible.
    assert not page.page.locator(".pk-chat-saved").first.is_visible()

    page.cell(0).locator(".jp-InputArea-prompt").click()
    page.page.keyboard.press("Control+s")
    wait_for(
        lambda: json.loads(path.read_text())["cells"][2]["execution_count"] is not None,
        15,
        "the notebook was not saved",
    )
    outputs = json.loads(path.read_text())["cells"][1]["outputs"]
    html = ["".join(out.get("data", {}).get("text/html", "")) for out in outputs]
    assert any("pk-chat-saved" in h and "Tell me a story" in h for h in html), (
        f"the file holds no transcript of both turns, only {[o.get('data') for o in outputs]}"
    )

    page.lab.api("DELETE", f"/api/kernels/{page.kernel_id(name)}")
    page.page.reload(wait_until="domcontentloaded")
    page.wait_ready()
    copy = page.cell(1).locator(".pk-chat-saved")
    copy.wait_for(state="visible", timeout=15_000)
    copy.scroll_into_view_if_needed()
    page.screenshot("where-chat-reopened")
    users = copy.locator(".pk-msg-user")
    assert users.count() == 2
    assert "Write a haiku about the sea" in users.nth(0).inner_text()
    assert "Tell me a story" in users.nth(1).inner_text()
    answers = copy.locator(".pk-answer")
    assert answers.count() == 2
    assert "kettle" in answers.nth(0).inner_text()
    assert STORY_END in answers.nth(1).inner_text()
    assert page.page.locator(LIVE_CHAT).count() == 0, "no live chat"
    # The widget's own output (it can only say "model not found") is hidden, not shown
    # above the transcript, also once the widget manager has given up on it.
    time.sleep(9)
    visible = page.page.locator("body").inner_text()
    assert "model not found" not in visible and "Loading widget" not in visible
    page.screenshot("where-chat-reopened-later")


TOOLS_SETUP = (
    "%load_ext pk_notebook\n"
    "from pk_notebook import Pipeline\n"
    "from pk_notebook.providers import MockProvider, Scenario\n"
    "def get_weather(city: str) -> str:\n"
    '    """Current weather for a city."""\n'
    "    return f'{city}: light rain'\n"
    "tools_pipe = Pipeline(MockProvider([Scenario(\n"
    "    reasoning='Rain question: I should call get_weather.',\n"
    "    tool_calls=[{'name': 'get_weather', 'arguments': {'city': 'Paris'}}],\n"
    "    answer='The tool said: {result}',\n"
    "    without_tools='No tool to ask.',\n"
    ")], chunk_delay=0.02))"
)
TOOLS_CELL = "%%stream --pipeline tools_pipe --tools get_weather --approve -o turn\nUmbrella?"


@pytest.mark.parametrize("where", ["ipykernel6", "no-widgets"])
def test_tools_and_thinking_where_run_deny_cannot_be_clicked(
    where: str, request: pytest.FixtureRequest
) -> None:
    """Colab's kernel (ipykernel 6), or a JupyterLab without a widget front end: the Thinking
    section and the tool card still show, and --approve says in one line why every call is
    denied instead of showing a dead Run button (or waiting for a click that cannot come)."""
    page: LabPage = request.getfixturevalue(
        "page_ipykernel6" if where == "ipykernel6" else "page_without_widgets"
    )
    name = f"where-tools-{where}.ipynb"
    page.lab.notebook(
        name, [TOOLS_SETUP, TOOLS_CELL, "print([r.status for r in turn.tool_results])"]
    )
    page.open(name)
    page.run_cell_and_wait(0)
    page.run_cell(1)
    cell = page.cell(1)
    if where == "no-widgets":
        # The kernel (ipykernel 7.4) could take a click, but it cannot know the front end
        # draws no buttons: the hint says so and Kernel > Interrupt ends the turn.
        cell.locator("text=Run / Deny need Jupyter widgets").wait_for(timeout=40_000)
        assert cell.locator("details.pk-thinking").count() >= 1
        page.screenshot("where-tools-no-widgets-waiting")
        page.page.locator(
            '.jp-NotebookPanel-toolbar [data-command="notebook:interrupt-kernel"]'
        ).first.click()
    page.wait_cell_done(1, timeout=40)
    text = page.output_text(1)
    page.screenshot(f"where-tools-{where}")
    assert cell.locator("details.pk-thinking").count() >= 1, text
    assert cell.locator("details", has_text="get_weather").count() >= 1, text
    assert cell.locator("button", has_text="Run").count() == 0, "a dead Run button"
    if where == "ipykernel6":
        assert "Run / Deny buttons need ipykernel >= 7.4" in text, text
        page.run_cell_and_wait(2)
        assert "['denied']" in page.output_text(2)
    else:
        assert "Stopped:" in text, text
