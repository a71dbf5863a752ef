"""%%stream in a real JupyterLab: the text grows live, Stop stops it, the provider sees it.

Two providers: the mock (``MockProvider.calls[-1].outcome``) and the OpenAI
provider against the fake HTTP server (``RecordedRequest.disconnected``), both
run inside the notebook's kernel so the next cell can check what they saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .jupyterlab import LabPage, write_notebook

pytestmark = pytest.mark.browser

SETUPS = {
    "mock": (
        "%load_ext pk_notebook\n"
        "from pk_notebook import Pipeline, ProviderMiddleware\n"
        "from pk_notebook.providers import MockProvider\n"
        "slow = MockProvider.demo(chunk_delay=0.08)\n"
        "pipe = Pipeline(ProviderMiddleware(slow))\n"
        "def provider_saw():\n"
        "    return slow.calls[-1].outcome\n"
    ),
    "fake-server": (
        "%load_ext pk_notebook\n"
        "from pk_notebook import Pipeline, ProviderMiddleware\n"
        "from pk_notebook.providers import create_provider\n"
        "from pk_notebook.testing import FakeProviderServer, Script\n"
        "server = FakeProviderServer(default=Script(' "
        "'.join(f'word{i}' for i in range(400)), pace=0.05)).start()\n"
        "pipe = Pipeline(ProviderMiddleware(create_provider('openai:gpt-4o-mini', "
        "base_url=server.base_url, api_key='test-key')))\n"
        "def provider_saw():\n"
        "    request = server.requests[-1]\n"
        "    request.wait_ended(5)\n"
        "    return 'closed' if request.disconnected else 'completed'\n"
    ),
}

PROMPT = {"mock": "Write a story about a dragon", "fake-server": "Count for me"}

ANSWER_TEXT_JS = """(index) => {
    const cell = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[index];
    const out = cell && cell.querySelector('.jp-OutputArea');
    if (!out) return '';
    // The answer only: drop the status line and the note under a stopped answer.
    const body = out.querySelector('.pk-body');
    const text = (body || out).innerText;
    return text.split('■')[0].trim();
}"""


def answer_text(lab: LabPage, index: int) -> str:
    return str(lab.page.evaluate(ANSWER_TEXT_JS, index))


@pytest.mark.parametrize(
    "front_end, provider",
    [
        pytest.param("lab", "mock", id="jupyterlab-mock"),
        pytest.param("lab", "fake-server", id="jupyterlab-fake-http-server"),
        pytest.param("notebook7", "mock", id="notebook7-mock"),
    ],
)
def test_stop_button_stops_a_streaming_cell(
    request: pytest.FixtureRequest, lab_root: Path, front_end: str, provider: str
) -> None:
    page_fixture = "lab_page" if front_end == "lab" else "nb7_page"
    lab_page: LabPage = request.getfixturevalue(page_fixture)
    name = f"stream-stop-{front_end}-{provider}.ipynb"
    write_notebook(
        lab_root / name,
        [
            SETUPS[provider],
            f"%%stream --pipeline pipe -s demo -o answer\n{PROMPT[provider]}",
            "print(provider_saw(), answer.status.value, "
            "pipe.sync.run(pipe.state_store.load('demo'))[-1].status)",
        ],
    )
    lab = lab_page
    lab.open(name)
    lab.run_cell_and_wait(0)

    lab.run_cell(1)
    stop = lab.cell(1).locator(".pk-stop")
    stop.wait_for(state="visible", timeout=20_000)
    lab.page.wait_for_function(f"() => ({ANSWER_TEXT_JS})(1).length > 20", timeout=20_000)
    first = answer_text(lab, 1)
    time.sleep(0.6)
    second = answer_text(lab, 1)
    assert len(second) > len(first), "the text grows while the cell runs"
    assert "[*]" in lab.cell(1).locator(".jp-InputArea-prompt").inner_text()
    # both front ends render the live text themselves from the kernel's edits (tail_view.py)
    assert lab.cell(1).locator(".pk-tail-view").count() == 1
    status = lab.cell(1).locator(".pk-status").inner_text()
    assert "chunks" in status and "first chunk" in status
    lab.screenshot(f"stream-magic-{front_end}-{provider}-live")

    stop.click()
    clicked = time.monotonic()
    # Poll the page until the stopped note replaces the live view.
    while "Stopped:" not in lab.output_text(1) and time.monotonic() - clicked < 10:
        time.sleep(0.02)
    latency = time.monotonic() - clicked
    time.sleep(max(0.0, 0.5 - latency))
    at_half_second = answer_text(lab, 1)
    lab.wait_cell_done(1, timeout=20)
    time.sleep(0.5)
    final = answer_text(lab, 1)
    print(
        f"{provider}: stopped note shown {latency * 1000:.0f} ms after the "
        f"click; {len(at_half_second)} chars at +0.5 s, {len(final)} final"
    )
    assert final == at_half_second, "the text stopped growing within 0.5 s"
    output = lab.output_text(1)
    assert "■ Stopped: partial answer; the rest was not generated." in output
    assert lab.cell(1).locator(".pk-stop").count() == 0, "the Stop button is gone"
    assert lab.cell(1).locator(".jp-OutputArea-output").count() == 1, "one final output"
    lab.screenshot(f"stream-magic-{front_end}-{provider}-stopped")

    lab.run_cell(2)
    lab.wait_cell_done(2)
    assert lab.output_text(2).strip() == "closed stopped stopped"


def test_a_finished_answer_renders_as_markdown_once(lab_page: LabPage, lab_root: Path) -> None:
    write_notebook(
        lab_root / "stream-finish.ipynb",
        [
            "%load_ext pk_notebook\ncity = 'Lisbon'",
            "%%stream -s trip\nPlan a day in {city}. Keep it to 5 bullet points.",
        ],
    )
    lab = lab_page
    lab.open("stream-finish.ipynb")
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    lab.wait_cell_done(1, timeout=30)
    cell = lab.cell(1)
    assert cell.locator(".jp-OutputArea-output").count() == 1
    assert cell.locator(".jp-RenderedMarkdown h2").inner_text().startswith("A day in Lisbon")
    assert cell.locator(".jp-RenderedMarkdown li").count() == 5
    assert cell.locator(".pk-stop").count() == 0
    lab.screenshot("stream-magic-finished")


def test_html_in_an_answer_is_shown_as_text_and_never_runs(
    lab_page: LabPage, lab_root: Path
) -> None:
    # A model can be talked into answering with markup (prompt injection). In a live
    # kernel JupyterLab treats outputs as trusted, so inert rendering is our job.
    evil = "<img src=x onerror=\"document.title=\\'pwned\\'\"> and <b>bold?</b>"
    write_notebook(
        lab_root / "stream-html.ipynb",
        [
            "%load_ext pk_notebook\n"
            "from pk_notebook import Pipeline, ProviderMiddleware\n"
            "from pk_notebook.providers import MockProvider, Scenario\n"
            f"provider = MockProvider([Scenario('{evil}')], chunk_delay=0.01)\n"
            "pipe = Pipeline(ProviderMiddleware(provider))",
            "%%stream --pipeline pipe\nanything",
        ],
    )
    lab = lab_page
    lab.open("stream-html.ipynb")
    title = lab.page.title()
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    lab.wait_cell_done(1, timeout=30)
    rendered = lab.cell(1).locator(".jp-RenderedMarkdown")
    assert rendered.locator("img").count() == 0 and rendered.locator("b").count() == 0
    assert "<b>bold?</b>" in rendered.inner_text()
    lab.page.wait_for_timeout(300)
    assert lab.page.title() == title != "pwned"


def test_a_10000_chunk_burst_arrives_whole_through_jupyter_server(
    lab_page: LabPage, lab_root: Path
) -> None:
    # jupyter_server drops iopub messages above 1000/s; the magic's throttling must keep
    # a burst far below that, and the final text must still arrive whole.
    write_notebook(
        lab_root / "stream-burst.ipynb",
        [
            "%load_ext pk_notebook\n"
            "from pk_notebook import Pipeline, ProviderMiddleware\n"
            "from pk_notebook.providers import MockProvider, Scenario\n"
            "words = ' '.join(f'w{i}' for i in range(10_000))\n"
            "pipe = Pipeline(ProviderMiddleware(MockProvider([Scenario(words)])))",
            "%%stream --pipeline pipe -f text -o burst\nburst",
            "print(burst.chunks, burst.status.value)",
        ],
    )
    lab = lab_page
    lab.open("stream-burst.ipynb")
    lab.run_cell_and_wait(0)
    lab.run_cell(1)
    lab.wait_cell_done(1, timeout=60)
    lab.run_cell(2)
    lab.wait_cell_done(2, timeout=30)
    text = lab.output_text(1)
    assert text.startswith("w0 w1 w2") and text.rstrip().endswith("w9998 w9999")
    assert len(text.split()) == 10_000  # nothing lost in the middle either
    assert lab.output_text(2).strip() == "10000 finished"
    page_text = lab.page.locator(".jp-NotebookPanel").inner_text()
    assert "IOPub message rate exceeded" not in page_text
    assert "rate exceeded" not in lab.lab.log()
