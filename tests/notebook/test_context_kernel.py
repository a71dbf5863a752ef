"""Notebook context, files and structured answers in a real kernel, against the fake server:
{In[n]}, {Out[n]}, {Err}, a DataFrame and a figure in a prompt, --attach, --dry-run
(nothing sent), --schema (the object live, the validated one saved, -o)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest

from pk_notebook.testing import FakeProviderServer, Script

from .conftest import Execution, KernelSession

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def k(kernel: KernelSession, server: FakeProviderServer) -> KernelSession:
    kernel.ok(
        "import matplotlib\nmatplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\nimport pandas as pd\n"
        "from pk_notebook import Pipeline, ProviderMiddleware\n"
        "from pk_notebook.providers import create_provider\n"
        "pipe = Pipeline(ProviderMiddleware(create_provider("
        f"'openai:gpt-4o-mini', base_url={server.base_url!r}, api_key='sk-test')))\n"
        "from pydantic import BaseModel\n"
        "class Trip(BaseModel):\n    city: str\n    days: int\n    sights: list[str]",
        interactive=False,
    )
    return kernel


@pytest.fixture
def fake(server: FakeProviderServer) -> FakeProviderServer:
    server.reset()
    return server


def count(execution: Execution) -> int:
    return int(execution.reply["content"]["execution_count"])


def texts(parts: list[dict[str, Any]]) -> str:
    return "\n".join(p["text"] for p in parts if p["type"] == "text")


def test_cells_outputs_errors_and_a_dataframe_reach_the_model(
    k: KernelSession, fake: FakeProviderServer
) -> None:
    source = k.ok("6 * 7", interactive=False)
    failing = k.run("{}['missing_key']", interactive=False)
    assert failing.reply["content"]["status"] == "error"
    k.ok("df = pd.DataFrame({'city': ['Lisbon', 'Oslo', 'Paris'], 'rain_mm': [2.5, 7.0, 4.1]})")
    n = count(source)
    k.ok(f"%%stream --pipeline pipe\nCell {{In[{n}]}} gave {{Out[{n}]}}.\n{{Err}}\nData: {{df}}")
    (request,) = fake.requests
    prompt = texts(request.content_parts())
    assert "Cell 6 * 7 gave 42." in prompt
    assert "KeyError: 'missing_key'" in prompt and "Traceback" in prompt
    assert f"{{Err[{count(failing)}]}}" not in prompt
    assert "DataFrame with 3 rows and 2 columns" in prompt
    assert "| 1 | Oslo | 7.0 |" in prompt
    # The cell said what it substituted (the last cell's line, %stream last).
    last = k.ok("%stream last", interactive=False).stdout
    assert f"{{In[{n}]}}" in last and "{df}" in last and "{Err}" in last


def test_a_figure_is_sent_as_an_image_part(k: KernelSession, fake: FakeProviderServer) -> None:
    k.ok("fig, ax = plt.subplots(figsize=(3, 2)); ax.plot([1, 3, 2]); plt.close(fig)")
    k.ok("%%stream --pipeline pipe\nWhat does {fig} show?")
    (request,) = fake.requests
    parts = request.content_parts()
    images = [p for p in parts if p["type"] == "image"]
    assert len(images) == 1 and images[0]["mime_type"] == "image/png"
    assert images[0]["data"].startswith(b"\x89PNG")
    assert "What does [image 1: fig.png] show?" in texts(parts)
    body = request.json["messages"][-1]["content"]
    assert any(p.get("type") == "image_url" for p in body)  # OpenAI's own part type


def test_attach_sends_files(k: KernelSession, fake: FakeProviderServer, tmp_path: Any) -> None:
    from PIL import Image

    path = tmp_path / "dot.png"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 128, 255)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    k.ok(f"%%stream --pipeline pipe --attach {path}\nWhat colour is this?")
    (request,) = fake.requests
    images = [p for p in request.content_parts() if p["type"] == "image"]
    assert [i["data"] for i in images] == [path.read_bytes()]
    bad = k.run(f"%%stream --pipeline pipe --attach {tmp_path}/nope.png\nhi", interactive=False)
    assert bad.reply["content"]["ename"] == "UsageError"
    assert "--attach" in bad.reply["content"]["evalue"] and len(fake.requests) == 1


def test_dry_run_shows_what_would_be_sent_and_sends_nothing(
    k: KernelSession, fake: FakeProviderServer
) -> None:
    k.ok("df = pd.DataFrame({'city': ['Lisbon', 'Oslo', 'Paris'], 'rain_mm': [2.5, 7.0, 4.1]})")
    k.ok("fig2, ax2 = plt.subplots(figsize=(2, 2)); plt.close(fig2)")
    run = k.ok("%%stream --pipeline pipe --dry-run\nCompare {df} with {fig2}", interactive=False)
    assert fake.requests == []
    (output,) = run.outputs
    md = output["data"]["text/markdown"]
    assert md.startswith("**Dry run: nothing was sent.**")
    assert "DataFrame with 3 rows and 2 columns" in md
    assert "fig2.png (image/png" in md
    assert "input tokens (estimated, chars/4" in md
    assert "**Cost:** unknown (no price for gpt-4o-mini)" in md  # this pipeline has no prices
    again = k.ok("%%stream --pipeline pipe --dry-run\nCompare {df} with {fig2}", interactive=False)
    assert again.outputs == run.outputs  # deterministic
    assert fake.requests == []
    k.ok(
        "from pk_notebook import UsageMiddleware\n"
        "from pk_notebook.providers.pricing import DEFAULT_PRICES\n"
        "priced = Pipeline(UsageMiddleware(DEFAULT_PRICES), pipe.provider_middleware)"
    )
    priced = k.ok("%%stream --pipeline priced --dry-run\nHello there", interactive=False)
    md = priced.outputs[0]["data"]["text/markdown"]
    assert "**Cost:** ≈\\$0.00000045 for the input" in md and "gpt-4o-mini at \\$0.15 per" in md
    assert fake.requests == []


TRIP = '{"city": "Lisbon", "days": 3, "sights": ["Belém Tower", "Alfama"]}'


def test_schema_fills_in_live_and_saves_the_validated_object(
    k: KernelSession, fake: FakeProviderServer
) -> None:
    pieces = [TRIP[i : i + 6] for i in range(0, len(TRIP), 6)]
    fake.default = Script(text=pieces, pace=0.03)
    run = k.ok("%%stream --pipeline pipe --schema Trip -o trip\nPlan 3 days in Lisbon")
    assert fake.requests[0].requested_schema()["name"] == "Trip"
    updates = [
        m["content"]["data"].get("text/markdown", "") for m in run.of_type("update_display_data")
    ]
    live = [u for u in updates if u.startswith("**Trip**")]
    assert any("**sights**: …" in u for u in live), updates
    assert not any('{"city"' in u for u in updates), "no raw JSON while streaming"
    (final,) = run.outputs
    md = final["data"]["text/markdown"]
    assert md == (
        "**Trip**\n\n- **city**: Lisbon\n- **days**: 3\n- **sights**:\n"
        "  1. Belém Tower\n  2. Alfama"
    )
    assert k.value("trip") == "Trip(city='Lisbon', days=3, sights=['Belém Tower', 'Alfama'])"


def test_an_answer_that_does_not_validate_keeps_its_text(
    k: KernelSession, fake: FakeProviderServer
) -> None:
    fake.default = Script(text='{"city": "Lisbon", "days": "three"}')
    run = k.ok("%%stream --pipeline pipe --schema Trip -o trip\nPlan", interactive=False)
    (final,) = run.outputs
    md = final["data"]["text/markdown"]
    assert md.startswith('```json\n{"city": "Lisbon", "days": "three"}\n```')
    assert "**Failed:** the answer does not match Trip: days:" in md
    assert k.value("trip") == "None"


def test_a_missing_schema_is_one_line(k: KernelSession, fake: FakeProviderServer) -> None:
    bad = k.run("%%stream --pipeline pipe --schema Nowhere\nhi", interactive=False)
    assert bad.reply["content"]["ename"] == "UsageError"
    assert bad.reply["content"]["evalue"].startswith("--schema Nowhere: there is no 'Nowhere'")
    assert fake.requests == []


def test_the_chat_substitutes_context_too(k: KernelSession, fake: FakeProviderServer) -> None:
    k.ok("df = pd.DataFrame({'city': ['Lisbon', 'Oslo'], 'rain_mm': [2.5, 7.0]})")
    k.ok("fig3, ax3 = plt.subplots(figsize=(2, 2)); plt.close(fig3)")
    k.ok("from pk_notebook import Chat\nchat = Chat(pipe)\nplain = Chat(pipe, context=False)")
    k.ok("r = await chat.send('Compare {df} with {fig3}')", interactive=False)
    (request,) = fake.requests
    parts = request.content_parts()
    assert "DataFrame with 2 rows and 2 columns" in texts(parts)
    assert [p["mime_type"] for p in parts if p["type"] == "image"] == ["image/png"]
    k.ok("r = await plain.send('Keep {df} as typed')", interactive=False)
    assert texts(fake.requests[-1].content_parts()) == "Keep {df} as typed"
    bad = k.run("await chat.send('About {nothing_here}')", interactive=False)
    assert bad.reply["content"]["ename"] == "UsageError"
    assert "there is no variable 'nothing_here'" in bad.reply["content"]["evalue"]
    assert len(fake.requests) == 2
