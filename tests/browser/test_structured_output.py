"""Structured output in a real JupyterLab: the object fills in live as a tree (partial
strings, fields to come as "…", a list of objects as a table), then the validated object
stays; and the chat shows an attached figure as a thumbnail in the user's bubble."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jupyterlab import LabPage, write_notebook

pytestmark = pytest.mark.browser

SETUP = """%load_ext pk_notebook
from pydantic import BaseModel
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider, Scenario

class Sight(BaseModel):
    name: str
    hours: float

class Trip(BaseModel):
    city: str
    days: int
    sights: list[Sight]
    tip: str

TRIP = ('{"city": "Lisbon", "days": 3, "sights": [{"name": "Belém Tower", "hours": 1.5}, '
        '{"name": "Alfama on foot", "hours": 3}, {"name": "LX Factory", "hours": 2}], '
        '"tip": "Buy a Viva Viagem card for trams 28 and 15, and ride them early in the '
        'morning before the crowds arrive at the viewpoints."}')
pipe = Pipeline(ProviderMiddleware(MockProvider(
    [Scenario(TRIP, schema="Trip")], chunk_delay=0.12)))
"""

CHAT = """import io
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pk_notebook import Chat
fig, ax = plt.subplots(figsize=(3, 2)); ax.bar(["a", "b", "c"], [3, 1, 2]); plt.close(fig)
chat = Chat(Pipeline(ProviderMiddleware(MockProvider([Scenario("Got it. {attachments}")]))))
chat.attach(fig)
chat"""


def test_the_object_fills_in_live_then_the_validated_one_stays(
    lab_page: LabPage, lab_root: Path
) -> None:
    write_notebook(
        lab_root / "structured.ipynb",
        [SETUP, "%%stream --pipeline pipe --schema Trip -o trip\nPlan three days in Lisbon.",
         "print(type(trip).__name__, trip.sights[2].name)", CHAT],
    )  # fmt: skip
    lab = lab_page
    lab.open("structured.ipynb")
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    cell = lab.cell(1)
    # Mid-way: the table of sights is there, and "tip" is still to come ("…").
    lab.page.wait_for_function(
        """() => {
            const out = document.querySelectorAll('.jp-Cell')[1];
            const text = out ? out.innerText : '';
            return out && out.querySelector('table') && /tip\\s*:\\s*…/.test(text)
                && text.includes('Belém Tower');
        }""",
        timeout=30_000,
    )
    live = cell.locator(".jp-OutputArea").inner_text()
    assert "city: Lisbon" in live and "days: 3" in live
    assert '{"city"' not in live, "no raw JSON while it streams"
    table = cell.locator("table").first
    assert table.locator("th").all_inner_texts()[0] == "name"  # columns come as they arrive
    lab.page.screenshot(path="/tmp/structured-live.png")
    lab.screenshot("structured-live")

    # A partial string: the tip grows.
    lab.page.wait_for_function(
        """() => /tip\\s*:\\s*Buy a Viva/
                 .test(document.querySelectorAll('.jp-Cell')[1].innerText)""",
        timeout=30_000,
    )
    lab.wait_cell_done(1, timeout=60)
    final = cell.locator(".jp-OutputArea").inner_text()
    assert "…" not in final and "before the crowds arrive at the viewpoints." in final
    assert cell.locator("table tr").count() == 4  # header + three sights
    assert cell.locator(".pk-stop").count() == 0
    lab.screenshot("structured-final")
    lab.page.screenshot(path="/tmp/structured-final.png")
    lab.run_cell_and_wait(2)
    assert "Trip LX Factory" in lab.output_text(2)

    # The chat: an attached figure shows above the box, then as a thumbnail in the bubble.
    lab.run_cell_and_wait(3)
    chat = lab.cell(3)
    strip = chat.locator(".pk-attach-strip .pk-thumb")
    strip.wait_for(state="visible", timeout=30_000)
    chat.locator("textarea").fill("What is in this chart?")
    chat.locator(".pk-chat-send").click()
    bubble = chat.locator(".pk-msg-user .pk-bubble img.pk-thumb").first  # then the saved copy
    bubble.wait_for(state="visible", timeout=30_000)
    lab.page.wait_for_function(
        """() => document.querySelectorAll('.jp-Cell')[3].innerText
                 .includes('I received 1 image')""",
        timeout=30_000,
    )
    width = bubble.evaluate("img => img.naturalWidth")
    assert 0 < width <= 160
    assert chat.locator(".pk-attach-strip").count() == 0
    lab.page.screenshot(path="/tmp/structured-chat.png")
    lab.screenshot("structured-chat")
