"""Reasoning and tool calls, rendered: chunks in, Markdown / HTML / plain text out (no kernel)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError

from pk_notebook.notebook.live import LiveOutput, approve_hint, render_bundle
from pk_notebook.notebook.options import parse_cell_options
from pk_notebook.notebook.parts_view import (
    OUTPUT_LIMIT,
    TextBlock,
    ThinkingBlock,
    ToolCard,
    TurnParts,
    group_turns,
    parts_html,
    split_answer,
    thinking_markdown,
    tool_markdown,
    turn_bundle,
)
from pk_notebook.notebook.status import Note
from pk_notebook.runtime.types import Message, ToolCall, ToolEvent, ToolResult


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def weather_events(output: str = "Rain, 14 °C", kind: str = "result") -> Iterator[ToolEvent]:
    base = {"call_id": "call_1", "name": "get_weather", "index": 0, "round": 1}
    yield ToolEvent("start", **base)
    so_far = ""
    for piece in ('{"ci', 'ty": "Pa', 'ris"}'):
        so_far += piece
        yield ToolEvent("arguments", **base, arguments=so_far, delta=piece)
    yield ToolEvent("call", **base, arguments=so_far)
    yield ToolEvent("running", **base, arguments=so_far)
    yield ToolEvent(kind, **base, arguments=so_far, output=output, duration=0.31)  # type: ignore[arg-type]


def a_turn(clock: Clock | None = None) -> tuple[TurnParts, str]:
    parts = TurnParts(clock=clock or Clock())
    text = ""
    parts.add_reasoning("I should call ")
    parts.add_reasoning("**get_weather**.")
    for event in weather_events():
        parts.add_tool_event(event)
    parts.add_reasoning("It rains.")
    for piece in ("Take ", "an umbrella."):
        parts.add_text(piece)
        text += piece
    return parts, text


def render_text(piece: str) -> str:
    return render_bundle(piece)["text/markdown"]


def test_parts_keep_their_order_and_never_mix_reasoning_into_text() -> None:
    parts, text = a_turn()
    kinds = [type(b).__name__ for b in parts.blocks]
    assert kinds == ["ThinkingBlock", "ToolCard", "ThinkingBlock", "TextBlock"]
    first, card, second, answer = parts.blocks
    assert isinstance(first, ThinkingBlock) and first.text == "I should call **get_weather**."
    assert first.done and isinstance(second, ThinkingBlock) and second.done
    assert isinstance(card, ToolCard)
    assert (card.name, card.arguments, card.state) == ("get_weather", '{"city": "Paris"}', "ok")
    assert card.output == "Rain, 14 °C" and card.duration == 0.31
    assert isinstance(answer, TextBlock) and text[answer.start : answer.end] == text
    assert "rains" not in text


def test_thinking_is_open_live_and_collapsed_when_something_follows() -> None:
    clock = Clock()
    parts = TurnParts(clock=clock)
    block = parts.add_reasoning("Let me think.")
    clock.now += 2.5
    live = thinking_markdown(block, live=True, now=clock.now)
    assert live.startswith('<details class="pk-thinking" open>\n<summary>Thinking…')
    assert "13 characters · 2.5 s" in live
    parts.add_text("Answer")
    assert block.done
    closed = thinking_markdown(block, live=True, now=clock.now + 10)
    assert " open" not in closed.split("\n")[0] and "2.5 s" in closed  # its own duration
    final = thinking_markdown(block)
    assert final == (
        '<details class="pk-thinking">\n<summary>Thinking · 13 characters</summary>\n\n'
        "Let me think.\n\n</details>"
    )


def test_reasoning_goes_through_the_safe_renderer() -> None:
    evil = "<img src=x onerror=alert(1)>\n\n</details>\n\n[x](javascript:alert(1))\n\n```\nopen"
    block = ThinkingBlock(evil, ended=1.0)
    md = thinking_markdown(block)
    body = md.split("</summary>\n\n", 1)[1]
    assert "<img" not in body and "&lt;img" in body
    assert body.count("</details>") == 1 and body.endswith("</details>")  # only ours
    assert "&#91;x](javascript" in body
    assert "```\nopen\n```" in body, "an open fence is closed before our </details>"


def test_a_tool_card_escapes_its_summary_and_fences_its_body() -> None:
    card = ToolCard(
        "search",
        "c1",
        arguments='{"q": "<b>$x$ \\\\(y\\\\)</b>"}',
        state="ok",
        output="```\n<script>alert(1)</script>\n```",
        duration=1.5,
    )
    md = tool_markdown(card)
    summary = md.split("\n")[1]
    assert "<b>" not in summary and "&lt;b&gt;" in summary
    assert "$" not in summary and "&#36;" in summary and "\\" not in summary
    assert "1.5 s" not in md, "no duration in the final (saved) card"
    # The output is fenced with a longer fence than any run of backticks inside it.
    assert "````\n```\n<script>alert(1)</script>\n```\n````" in md
    assert md.startswith('<details class="pk-tool pk-tool-ok">')
    live = tool_markdown(card, live=True, now=0)
    assert "· 1.5 s" in live.split("\n")[1]


def test_a_card_is_open_while_in_progress_and_shows_the_running_time() -> None:
    clock = Clock()
    parts = TurnParts(clock=clock)
    events = list(weather_events())
    for event in events[:3]:
        parts.add_tool_event(event)
    card = parts.cards[0]
    assert card.state == "calling" and card.arguments == '{"city": "Pa'
    assert tool_markdown(card, live=True, now=clock.now).startswith(
        '<details class="pk-tool pk-tool-calling" open>'
    )
    for event in events[3:6]:
        parts.add_tool_event(event)
    clock.now += 3.0
    live = tool_markdown(card, live=True, now=clock.now)
    assert "running · 3.0 s" in live and " open>" in live


def test_long_outputs_are_cut_for_display_and_say_so() -> None:
    output = "x" * (OUTPUT_LIMIT + 500)
    card = ToolCard("dump", "c1", arguments="{}", state="ok", output=output)
    md = tool_markdown(card)
    assert "x" * OUTPUT_LIMIT + "\n```" in md and "x" * (OUTPUT_LIMIT + 1) not in md
    assert "2,000 of 2,500 characters shown; the whole output is in result.tool_results" in md
    html = parts_html(TurnParts(blocks=[card]))
    assert "2,000 of 2,500 characters shown" in html


@pytest.mark.parametrize(
    ("kind", "word", "mark"),
    [("error", "error", "✗"), ("denied", "denied", "⊘"), ("stopped", "stopped", "■")],
)
def test_each_ending_has_its_mark(kind: str, word: str, mark: str) -> None:
    parts = TurnParts(clock=Clock())
    for event in weather_events("boom", kind):
        parts.add_tool_event(event)
    md = tool_markdown(parts.cards[0])
    assert f"{mark} <strong>get_weather</strong>" in md and f"· {word}</summary>" in md
    assert f"**{kind.capitalize()}**" in md


def test_the_result_decides_the_final_status_abandoned_included() -> None:
    parts = TurnParts(clock=Clock())
    for event in list(weather_events())[:5]:  # running when the turn ended
        parts.add_tool_event(event)
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    parts.finish([ToolResult(call, "abandoned: still running", "abandoned", 2.0)])
    assert parts.cards[0].state == "abandoned"
    other = TurnParts(clock=Clock())
    for event in list(weather_events())[:5]:
        other.add_tool_event(event)
    other.finish([])
    assert other.cards[0].state == "stopped", "a card left in progress ended with the turn"


def test_the_final_bundle_is_byte_stable_whatever_the_timing() -> None:
    one, text = a_turn(Clock())
    slow_clock = Clock()
    slow_clock.now = 5000.0
    two, _ = a_turn(slow_clock)
    two.cards[0].duration = 9.99
    for parts in (one, two):
        parts.finish()
    notes = [Note("■", "Stopped:", "partial answer.")]
    kwargs = {
        "render_text": render_text,
        "notes_markdown": "\n>\n".join(n.markdown() for n in notes),
        "notes_plain": "\n".join(n.plain() for n in notes),
    }
    first = turn_bundle(one, text, **kwargs)  # type: ignore[arg-type]
    second = turn_bundle(two, text, **kwargs)  # type: ignore[arg-type]
    assert first == second
    md = first["text/markdown"]
    assert " open" not in md and not re.search(r"\d s\b", md)
    assert md.index("Thinking · 30 characters") < md.index("get_weather") < md.index("Take an")
    assert md.endswith("Take an umbrella.\n\n> ■ **Stopped:** partial answer.")
    assert first["text/plain"].startswith("▸ Thinking · 30 characters\n\n✓ get_weather")


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_a_turn_without_reasoning_or_tools_renders_exactly_as_before() -> None:
    async def main() -> tuple[dict[str, str], dict[str, str]]:
        live = LiveOutput(surface="none")
        live.show()
        for piece in ("Hello <b>there</b>", " and `code`"):
            live.push(piece)
        notes = [Note("■", "Stopped:", "x")]
        return live.finish(notes), render_bundle(live.text, notes=notes)

    got, expected = run(main())
    assert got == expected


def test_the_live_output_collects_parts_in_batch_runs_too() -> None:
    async def main() -> dict[str, str]:
        live = LiveOutput(surface="none")
        live.show()
        live.push_reasoning("Thinking hard.")
        for event in weather_events():
            live.tool_event(event)
        live.push("Rain: ")
        live.push("take an umbrella.")
        return live.finish()

    bundle = run(main())
    md = bundle["text/markdown"]
    assert md.startswith('<details class="pk-thinking">\n<summary>Thinking · 14 characters')
    assert md.endswith("Rain: take an umbrella.")


def test_a_terminal_gets_one_line_per_part(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        live = LiveOutput(surface="text", interval=0)
        live.show()
        live.push_reasoning("Hmm.")
        for event in weather_events():
            live.tool_event(event)
        live.push("Take an umbrella.")
        live.finish()

    run(main())
    out = capsys.readouterr().out
    assert out == (
        "▸ Thinking · 4 characters\n"
        '✓ get_weather {"city": "Paris"}\n  → Rain, 14 °C\n'
        "Take an umbrella.\n"
    )


def test_approval_where_no_button_can_be_clicked_is_a_no_at_once() -> None:
    async def main() -> tuple[bool, str]:
        live = LiveOutput(surface="none")
        live.show()
        for event in list(weather_events())[:5]:
            live.tool_event(event)
        call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
        return await live.ask_approval(call), live.parts.cards[0].state

    approved, state = run(main())
    assert approved is False and state == "approval"
    assert "batch run" in approve_hint("none") and "every tool call is denied" in approve_hint(
        "none"
    )
    assert "notebook front end" in approve_hint("text")


def test_the_chat_html_escapes_everything() -> None:
    parts = TurnParts(clock=Clock())
    parts.add_reasoning("<script>x</script> **bold**")
    parts.add_tool_event(ToolEvent("start", "c1", "t<b>"))
    parts.add_tool_event(
        ToolEvent("result", "c1", "t<b>", arguments='{"a": "<i>"}', output="<u>x</u>")
    )
    parts.finish()
    out = parts_html(parts)
    assert "<script>" not in out and "<strong>bold</strong>" in out
    assert "<i>" not in out and "<u>" not in out and "t&lt;b&gt;" in out
    assert out.startswith('<details class="pk-thinking"><summary>Thinking · 27 characters')


def test_stored_turns_are_grouped_into_one_bubble() -> None:
    call = ToolCall("c1", "get_weather", '{"city": "Paris"}')
    messages = [
        Message("user", "Umbrella?"),
        Message("assistant", "", tool_calls=(call,), reasoning="Call the tool."),
        Message("tool", "Rain", tool_call_id="c1", name="get_weather"),
        Message("assistant", "Yes.", reasoning="It rains."),
        Message("user", "Thanks"),
        Message("assistant", "You're welcome."),
    ]
    grouped = group_turns(messages)
    assert [(m.role, m.content) for m, _, _ in grouped] == [
        ("user", "Umbrella?"),
        ("assistant", "Yes."),
        ("user", "Thanks"),
        ("assistant", "You're welcome."),
    ]
    parts = grouped[1][1]
    assert parts is not None
    assert [type(b).__name__ for b in parts.blocks] == [
        "ThinkingBlock",
        "ToolCard",
        "ThinkingBlock",
        "TextBlock",
    ]
    assert parts.cards[0].state == "ok" and parts.cards[0].output == "Rain"
    assert split_answer(parts, grouped[1][2])[1] == "Yes."
    assert grouped[3][1] is None and grouped[3][2] == "You're welcome."


def test_text_said_before_a_tool_call_is_part_of_the_turn() -> None:
    """An assistant message with text and a tool call is the start of its turn, not a
    bubble of its own: its text, then its card with the result, then the answer."""
    call = ToolCall("c1", "get_weather", '{"city": "Paris"}')
    messages = [
        Message("user", "Umbrella?"),
        Message("assistant", "Let me check.", tool_calls=(call,)),
        Message("tool", "Rain", tool_call_id="c1", name="get_weather"),
        Message("assistant", "Take an umbrella."),
    ]
    grouped = group_turns(messages)
    assert [(m.role, m.content) for m, _, _ in grouped] == [
        ("user", "Umbrella?"),
        ("assistant", "Take an umbrella."),
    ]
    _, parts, text = grouped[1]
    assert parts is not None and text == "Let me check.Take an umbrella."
    assert [type(b).__name__ for b in parts.blocks] == ["TextBlock", "ToolCard", "TextBlock"]
    assert parts.cards[0].state == "ok" and parts.cards[0].output == "Rain"
    head, answer = split_answer(parts, text)
    assert head is not None and answer == "Take an umbrella."
    said = head.blocks[0]
    assert isinstance(said, TextBlock) and text[said.start : said.end] == "Let me check."
    # A turn that ended inside its calls, then a new question: still one turn, then the user.
    stopped = [*messages[:2], Message("user", "Well?")]
    (_, _, _), (answer_message, parts, text), (user, _, _) = group_turns(stopped)
    assert answer_message.content == "Let me check." and user.content == "Well?"
    assert parts is not None and parts.cards[0].state == "stopped"
    assert split_answer(parts, text)[1] == ""


def test_the_tool_options() -> None:
    options = parse_cell_options("--tools get_weather,search_docs --max-tool-rounds 3 --approve")
    assert options.tools == ("get_weather", "search_docs")
    assert options.max_tool_rounds == 3 and options.approve
    with pytest.raises(UsageError, match="--approve goes with --tools"):
        parse_cell_options("--approve")
    with pytest.raises(UsageError, match="not a Python function name"):
        parse_cell_options("--tools get-weather")


def test_tools_in_a_terminal_and_in_history(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_cell("def get_weather(city: str) -> str:\n    return f'Light rain in {city}'")
    ip.run_cell("%%stream --tools get_weather -s wet -o wet\nShould I take an umbrella in Paris?")
    out = capsys.readouterr().out
    assert out.startswith("▸ Thinking · ")
    assert '✓ get_weather {"city": "Paris"}\n  → Light rain in Paris\n▸ Thinking · ' in out
    assert out.rstrip().endswith("otherwise you can leave it at home.")
    assert [r.status for r in ip.user_ns["wet"].tool_results] == ["ok"]
    ip.run_line_magic("stream", "history wet")
    history = capsys.readouterr().out
    # One user message and one answer; the calls and results are inside the answer.
    assert history.count("[user]") == 1 and history.count("[assistant]") == 1
    assert "[tool]" not in history
    assert '[assistant]\n▸ Thinking · 193 characters\n\n✓ get_weather {"city": "Paris"}' in history


def test_a_stored_stopped_call_reads_as_stopped() -> None:
    call = ToolCall("c1", "slow", "{}")
    messages = [
        Message("user", "go"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "stopped", status="stopped", tool_call_id="c1", name="slow", is_error=True),
    ]
    (_, _, _), (answer, parts, _) = group_turns(messages)
    assert answer.role == "assistant" and parts is not None
    assert parts.cards[0].state == "stopped"
