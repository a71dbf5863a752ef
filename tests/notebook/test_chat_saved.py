"""A chat's conversation survives in the saved notebook and its HTML export.

The live widget cannot be drawn without its kernel (a reopened notebook, nbconvert,
GitHub), so the chat keeps a saved copy of the transcript as a second output,
updated after every finished turn. Run as nbclient runs notebooks (real kernel).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.kernel

CELLS = [
    "from pk_notebook import Chat, Pipeline\n"
    "from pk_notebook.providers import MockProvider, Scenario\n"
    "pipe = Pipeline(MockProvider([Scenario('Paris is the capital: $p < 0.05$ <b>bold?</b>')]))",
    "chat = Chat(pipe, session_id='saved', title='Geography')\nchat",
    "await chat.send('What is the capital of France?')",
    "await chat.send('And of Italy?')",
]


def run_notebook(tmp_path: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    path = tmp_path / "chat.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4)


def test_the_saved_notebook_and_its_html_export_show_the_conversation(tmp_path: Path) -> None:
    nb = run_notebook(tmp_path)
    outputs = nb.cells[1].outputs
    widget, saved = outputs
    assert "application/vnd.jupyter.widget-view+json" in widget["data"]
    html = saved["data"]["text/html"]
    # as of the last finished turn: both questions and both answers
    assert html.count("What is the capital of France?") == 1
    assert "And of Italy?" in html
    assert html.count("Paris is the capital") == 2
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html and "<b>bold?</b>" not in html
    assert "What is the capital of France?" in saved["data"]["text/plain"]

    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    assert "And of Italy?" in body and "Paris is the capital" in body
    assert "<b>bold?</b>" not in body
