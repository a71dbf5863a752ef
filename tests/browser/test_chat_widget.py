"""The chat widget in a real JupyterLab: Enter sends, the reply grows, Stop stops it,
and a second chat on the same session shows the history.

Screenshots land in test-artifacts/ (chat-*.png) for a human look at the layout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .jupyterlab import LabPage, write_notebook

# the live widget (each chat also writes a saved copy of its transcript, .pk-chat-saved)
LIVE_CHAT = ".pk-chat:not(.pk-chat-saved)"

pytestmark = pytest.mark.browser

SETUP = '''
from pk_notebook import Chat, Pipeline, ProviderMiddleware, UsageMiddleware
from pk_notebook.providers.mock import MockProvider, Scenario


QUICK = """Install it with pip:

```bash
pip install "pk-notebook[notebook]"
```

Then run `%load_ext pk_notebook` in a cell."""

LONG = """## How streaming works

A **stream** hands you the answer piece by piece, so you can read the first words
while the model is still writing the rest. Each piece is a *chunk*:

```python
async for chunk in stream:
    print(chunk.content, end="")
```

""" + "The pipeline keeps the text that has arrived, the session keeps the turn. " * 40

provider = MockProvider(
    [Scenario(QUICK, match="install"), Scenario(LONG)], chunk_delay=0.05, model="mock-docs"
)
pipe = Pipeline(UsageMiddleware(), ProviderMiddleware(provider))
'''

SHOW = '''chat = Chat(pipe, session_id="support-demo", title="Ask the docs")
chat'''

SECOND = 'Chat(pipe, session_id="support-demo", title="Same session, second widget")'


def _answer_length(page: Any, chat: int = 0) -> int:
    return int(
        page.evaluate(
            """(i) => {
                const chat = document.querySelectorAll('.pk-chat')[i];
                const answers = chat.querySelectorAll('.pk-answer');
                return answers.length ? answers[answers.length - 1].innerText.length : 0;
            }""",
            chat,
        )
    )


def _newest_message_in_view(page: Any) -> bool:
    return bool(
        page.evaluate(
            """() => {
                const chat = document.querySelector('.pk-chat');
                const box = chat.querySelector('.pk-chat-transcript').getBoundingClientRect();
                const msgs = chat.querySelectorAll('.pk-msg');
                const last = msgs[msgs.length - 1].getBoundingClientRect();
                return last.bottom <= box.bottom + 2 && last.bottom >= box.top;
            }"""
        )
    )


def _to_top(page: Any, chat: int) -> None:
    page.evaluate(
        "(i) => document.querySelectorAll('.pk-chat')[i].scrollIntoView({block: 'start'})", chat
    )
    time.sleep(0.2)


def _dark_theme(page: Any) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text="Settings").click()
    page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
    page.locator(".lm-Menu-itemLabel").get_by_text("JupyterLab Dark", exact=True).click()
    page.wait_for_function(
        "() => document.body.getAttribute('data-jp-theme-light') === 'false'", timeout=10_000
    )
    time.sleep(0.5)


def test_chat_streams_stops_and_shares_the_session(lab_page: LabPage, lab_root: Path) -> None:
    page = lab_page.page
    write_notebook(lab_root / "chat_widget.ipynb", [SETUP, SHOW, SECOND])
    lab_page.open("chat_widget.ipynb")
    lab_page.run_cell_and_wait(0)
    lab_page.run_cell_and_wait(1)
    first = page.locator(LIVE_CHAT).first
    box = first.locator(".pk-chat-input textarea")
    box.wait_for(state="visible", timeout=30_000)
    send = first.locator("button", has_text="Send")
    stop = first.locator("button", has_text="Stop")
    assert stop.is_disabled()
    first.locator(".pk-chat-empty").wait_for(timeout=10_000)
    _to_top(page, 0)
    lab_page.screenshot("chat-empty")

    # Shift+Enter adds a line and sends nothing; Enter sends.
    box.click()
    box.type("How do I install it")
    box.press("Shift+Enter")
    box.type("and load it?")
    assert box.input_value() == "How do I install it\nand load it?"
    assert first.locator(".pk-msg-user").count() == 0
    box.press("Enter")
    first.locator(".pk-msg-user").first.wait_for(timeout=10_000)
    assert box.input_value() == ""
    bubble = first.locator(".pk-msg-user .pk-bubble").first
    assert "How do I install it\nand load it?" in bubble.inner_text()
    # The quick answer finishes: Stop goes back to disabled, the code block is rendered.
    first.locator(".pk-answer pre").first.wait_for(timeout=20_000)
    page.wait_for_function(
        "() => document.querySelector('.pk-chat .pk-footer-status')"
        "?.textContent.includes('finished')",
        timeout=20_000,
    )
    assert stop.is_disabled() and send.is_enabled()

    # A long answer: it grows live, the transcript follows it, Stop ends it.
    box.click()
    box.type("Explain streaming")
    box.press("Enter")
    page.wait_for_function(
        """() => {
            const a = document.querySelector('.pk-chat').querySelectorAll('.pk-answer');
            return a.length === 2 && a[1].innerText.length > 20;
        }""",
        timeout=20_000,
    )
    assert stop.is_enabled()
    before = _answer_length(page)
    time.sleep(1.0)
    during = _answer_length(page)
    assert during > before, "the reply did not grow while streaming"
    time.sleep(2.0)
    assert _newest_message_in_view(page), "the transcript did not follow the newest text"
    _to_top(page, 0)
    lab_page.screenshot("chat-streaming")

    stop.click()
    first.locator(".pk-marker-stopped").wait_for(timeout=5_000)
    stopped_at = _answer_length(page)
    time.sleep(0.6)
    assert _answer_length(page) == stopped_at, "text kept arriving after Stop"
    assert stop.is_disabled()
    assert "stopped" in first.locator(".pk-chat-footer").inner_text()
    lab_page.screenshot("chat-stopped")

    # A second widget on the same session shows the whole history, stopped marker included.
    lab_page.run_cell_and_wait(2)
    second = page.locator(LIVE_CHAT).nth(1)
    second.locator(".pk-marker-stopped").wait_for(timeout=15_000)
    assert second.locator(".pk-msg-user").count() == 2
    assert "How do I install it" in second.locator(".pk-msg-user").first.inner_text()
    assert second.locator(".pk-answer pre").count() >= 2
    _to_top(page, 1)
    lab_page.screenshot("chat-history")
    _dark_theme(page)
    lab_page.screenshot("chat-history-dark")

    # New chat: a new, empty session; the old one stays in the store (the first widget).
    second.locator("button", has_text="New chat").click()
    second.locator(".pk-chat-empty").wait_for(timeout=10_000)
    assert "support-demo-2" in second.locator(".pk-chat-session").inner_text()
    assert first.locator(".pk-msg-user").count() == 2


def test_the_chat_works_in_notebook_7(nb7_page: LabPage, lab_root: Path) -> None:
    """Notebook 7 draws widgets with the same front ends: typed into, Enter sends, Stop."""
    page = nb7_page.page
    write_notebook(
        lab_root / "chat_nb7.ipynb",
        [
            "from pk_notebook import Chat, Pipeline\n"
            "from pk_notebook.providers import MockProvider\n"
            "chat = Chat(Pipeline(MockProvider.demo(chunk_delay=0.03)), session_id='nb7')\n"
            "chat"
        ],
    )
    nb7_page.open("chat_nb7.ipynb")
    nb7_page.run_cell_and_wait(0)
    chat = page.locator(LIVE_CHAT).first
    box = chat.locator(".pk-chat-input textarea")
    box.wait_for(state="visible", timeout=30_000)
    # Enter sends once the keyboard enhancer runs (it marks the chat at once when it does)
    # (a cold start loads anywidget's module first: generous)
    page.locator(".pk-chat.pk-chat-keys").first.wait_for(timeout=45_000)
    box.click()
    box.type("Write a haiku about the sea")
    box.press("Enter")
    chat.locator(".pk-answer").first.wait_for(timeout=20_000)
    page.wait_for_function(
        "() => document.querySelector('.pk-chat .pk-answer')?.innerText.includes('kettle')",
        timeout=20_000,
    )
    assert box.input_value() == ""
    box.click()
    box.type("Write a story about a dragon")
    box.press("Enter")
    stop = chat.locator("button", has_text="Stop")
    page.wait_for_function(
        "() => document.querySelectorAll('.pk-chat .pk-answer').length === 2", timeout=20_000
    )
    stop.click()
    chat.locator(".pk-marker-stopped").wait_for(timeout=10_000)
    nb7_page.screenshot("chat-notebook7")
