"""``%%stream --tools ... --schema NAME`` in a real kernel: the model calls a tool, then
answers with structured output. The saved output is the turn's thinking and tool card
(collapsed, as with ``--tools`` alone) and then the validated object (as with ``--schema``
alone), in that order, byte-identical from one run to the next."""

from __future__ import annotations

import re

import pytest

from .conftest import Execution, KernelSession

pytestmark = pytest.mark.kernel

SETUP = '''
from pydantic import BaseModel
from pk_notebook import Pipeline, ProviderMiddleware
from pk_notebook.providers import MockProvider, Scenario
from pk_notebook.notebook.runner import last_result

class Forecast(BaseModel):
    city: str
    umbrella: bool
    summary: str

def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Light rain, 14 °C in {city}"

def forecaster(answer, **more):
    return Pipeline(ProviderMiddleware(MockProvider([Scenario(
        schema="Forecast",
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}],
        answer=answer,
        **({"reasoning": "I should check the weather first."} | more),
    )], chunk_delay=0.002)))

good = forecaster('{"city": "Paris", "umbrella": true, "summary": "{result}"}')
chatty = forecaster(
    '{"city": "Paris", "umbrella": true, "summary": "{result}"}',
    reasoning="",
    response="Let me check the weather first.",
)
wrong = forecaster('{"city": "Paris", "umbrella": "maybe", "summary": "{result}"}')
'''

CELL = "%%stream --pipeline {pipe} --tools get_weather --schema Forecast -o fc\nUmbrella in Paris?"

OBJECT_MD = (
    "**Forecast**\n\n- **city**: Paris\n- **umbrella**: `true`\n"
    "- **summary**: Light rain, 14 °C in Paris"
)
OBJECT_PLAIN = "Forecast\ncity: Paris\numbrella: true\nsummary: Light rain, 14 °C in Paris"


@pytest.fixture(scope="module")
def k(kernel: KernelSession) -> KernelSession:
    kernel.ok(SETUP, interactive=False)
    return kernel


def saved(execution: Execution) -> dict[str, str]:
    """The cell's one saved output (what nbclient and nbval record)."""
    outputs = execution.outputs
    assert len(outputs) == 1, outputs
    assert outputs[0]["output_type"] == "display_data"
    return dict(outputs[0]["data"])


def test_tools_with_schema_save_the_tool_card_then_the_object(k: KernelSession) -> None:
    data = saved(k.ok(CELL.format(pipe="good"), interactive=False))
    md, plain = data["text/markdown"], data["text/plain"]
    # The thinking and the tool card, collapsed, as --tools alone saves them...
    assert md.startswith('<details class="pk-thinking">\n<summary>Thinking · ')
    assert '<details class="pk-tool pk-tool-ok">' in md and " open" not in md
    assert "<strong>get_weather</strong>" in md and "Light rain, 14 °C in Paris" in md
    assert not re.search(r"\d\.\d+ s\b", md), "no durations in the saved output"
    # ...then the validated object, as --schema alone saves it, and not its JSON text.
    assert md.endswith("</details>\n\n" + OBJECT_MD)
    assert md.index("pk-thinking") < md.index("pk-tool") < md.index("**Forecast**")
    assert '"umbrella": true' not in md and '"umbrella": true' not in plain
    assert plain == (
        "▸ Thinking · 33 characters\n\n"
        '✓ get_weather {"city": "Paris"}\n  → Light rain, 14 °C in Paris\n\n' + OBJECT_PLAIN
    )
    assert k.value("fc") == (
        "Forecast(city='Paris', umbrella=True, summary='Light rain, 14 °C in Paris')"
    )
    assert k.value("[r.status for r in last_result().tool_results]") == "['ok']"


def test_tools_with_schema_saved_output_is_byte_stable(k: KernelSession) -> None:
    first = k.ok(CELL.format(pipe="good"), interactive=False)
    second = k.ok(CELL.format(pipe="good"), interactive=False)
    assert first.outputs == second.outputs
    # A run in a front end (live widget) ends with the same saved output.
    live = k.ok(CELL.format(pipe="good"))
    assert saved(live) == saved(first)


def test_tools_with_schema_an_invalid_answer_keeps_the_card_then_its_json(
    k: KernelSession,
) -> None:
    data = saved(k.ok(CELL.format(pipe="wrong"), interactive=False))
    md = data["text/markdown"]
    assert md.startswith('<details class="pk-thinking">')
    assert '<details class="pk-tool pk-tool-ok">' in md
    card_end = md.rindex("</details>")
    json_at = md.index('```json\n{"city": "Paris", "umbrella": "maybe"')
    assert card_end < json_at < md.index("umbrella: Input should be a valid boolean")
    assert "**Forecast**" not in md
    assert k.value("fc") == "None"


def test_tools_with_schema_text_said_before_a_tool_call_stays_text(k: KernelSession) -> None:
    data = saved(k.ok(CELL.format(pipe="chatty"), interactive=False))
    md = data["text/markdown"]
    said = "Let me check the weather first."
    assert md.startswith(said + '\n\n<details class="pk-tool pk-tool-ok">')
    assert md.endswith("</details>\n\n" + OBJECT_MD)
    assert data["text/plain"].startswith(said + "\n\n✓ get_weather")
