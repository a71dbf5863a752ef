"""The offline mock provider: scenarios, files, demo set, pacing, usage and faults."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pk_notebook import ConfigurationError, Pipeline, ProviderMiddleware, RetryPolicy, StreamTimeout
from pk_notebook.providers import Fault, MockProvider, Scenario, create_provider, split_tokens


def pipe_for(provider: MockProvider, **options: object) -> Pipeline:
    return Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=1)), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing  ",
        "naïve café — 😄 emoji",
        "a\nb\n\n```py\nx = {1: 2}\n```",
        "",
    ],
)
def test_token_pieces_join_back_to_the_exact_text(text: str) -> None:
    pieces = split_tokens(text)
    assert "".join(pieces) == text
    assert all(len(p.strip()) <= 8 for p in pieces)


async def test_scenarios_match_on_the_prompt_with_named_groups() -> None:
    provider = MockProvider([Scenario("A poem on {topic}.", match=r"poem about (?P<topic>\w+)")])
    result = await pipe_for(provider).execute("user", "Write a POEM about rivers please")
    assert result.text == "A poem on rivers."


async def test_scenarios_match_on_the_turn_number() -> None:
    provider = MockProvider.scripted("first answer", "second answer")
    pipe = pipe_for(provider)
    assert (await pipe.execute_with_context("s", "user", "a")).text == "first answer"
    assert (await pipe.execute_with_context("s", "user", "b")).text == "second answer"
    third = await pipe.execute_with_context("s", "user", "c")
    assert third.text.startswith("**[offline mock answer]**")


async def test_an_unscripted_prompt_gets_a_clearly_labelled_offline_answer() -> None:
    result = await pipe_for(MockProvider()).execute("user", "What is the capital of Peru?")
    assert result.text.startswith("**[offline mock answer]**")
    assert "What is the capital of Peru?" in result.text


async def test_braces_in_answers_and_prompts_are_left_alone() -> None:
    provider = MockProvider([Scenario('code: {"a": {prompt}} and {unknown}')])
    result = await pipe_for(provider).execute("user", "x")
    assert result.text == 'code: {"a": x} and {unknown}'


def test_scenarios_load_from_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(
        "default: nothing matched\nscenarios:\n  - match: hi\n    response: hello\n"
        "  - match: boom\n    response: one two three\n    fault: {kind: error, after: 1}\n"
    )
    (tmp_path / "s.json").write_text(json.dumps([{"turn": 1, "response": "from json"}]))
    from_yaml = MockProvider.from_file(tmp_path / "s.yaml")
    assert from_yaml.default == "nothing matched"
    assert from_yaml.scenarios[1].fault == Fault("error", after=1)
    assert MockProvider.from_file(tmp_path / "s.json").scenarios[0].response == "from json"


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param("- match: hi\n", "no 'response'", id="no-response"),
        pytest.param("- response: x\n  colour: red\n", "unknown keys", id="unknown-key"),
        pytest.param("- response: x\n  match: '('\n", "bad regex", id="bad-regex"),
        pytest.param(
            "- response: x\n  fault: {kind: explode}\n", "unknown fault .explode.", id="bad-fault"
        ),
        pytest.param("a: [", "not valid YAML", id="bad-yaml"),
    ],
)
def test_bad_scenario_files_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        MockProvider.from_file(path)


async def test_the_demo_set_answers_the_tutorial_prompts() -> None:
    pipe = pipe_for(MockProvider.demo(chunk_delay=0, first_chunk_delay=0))
    haiku = await pipe.execute("user", "Write a haiku about autumn rain")
    assert "haiku about autumn rain" in haiku.text
    plan = await pipe.execute("user", "Plan a day in Lisbon. Keep it to 5 bullet points.")
    assert plan.text.startswith("## A day in Lisbon") and plan.text.count("\n- ") == 5
    code = await pipe.execute("user", "Write a python function for fizzbuzz")
    assert "```python" in code.text


async def test_the_demo_streams_at_a_readable_pace_by_default() -> None:
    provider = MockProvider.demo()
    assert provider.chunk_delay > 0 and provider.first_chunk_delay > 0
    t0 = time.monotonic()
    result = await pipe_for(provider).execute("user", "Write a haiku about tea")
    assert (
        time.monotonic() - t0
        >= provider.first_chunk_delay + provider.chunk_delay * (result.chunks - 1) * 0.9
    )


async def test_usage_is_estimated_from_the_conversation_and_the_pieces() -> None:
    result = await pipe_for(MockProvider([Scenario("one two three")])).execute("user", "x" * 40)
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (10, 3)


async def test_max_tokens_cuts_the_answer_with_finish_reason_length() -> None:
    from pk_notebook import ProviderConfig

    result = await pipe_for(MockProvider([Scenario("a b c d e")])).execute(
        "user", "x", config=ProviderConfig(max_tokens=2)
    )
    assert (result.text, result.finish_reason) == ("a b", "length")


async def test_a_stall_fault_is_caught_by_the_idle_timeout() -> None:
    provider = MockProvider([Scenario("a b c", fault=Fault("stall", after=1))])
    with pytest.raises(StreamTimeout):
        await pipe_for(provider, idle_timeout=0.1).execute("user", "x")
    assert provider.calls[0].outcome == "stalled"


def test_the_registry_builds_the_mock_by_name() -> None:
    provider = create_provider("mock:tiny", chunk_delay=0)
    assert isinstance(provider, MockProvider) and provider.model == "tiny"
    with pytest.raises(ConfigurationError, match="unknown provider 'nope'"):
        create_provider("nope:x")


async def test_recall_scenarios_answer_from_earlier_turns_only() -> None:
    pipe = pipe_for(MockProvider.demo(chunk_delay=0, first_chunk_delay=0))
    unknown = await pipe.execute_with_context("s", "user", "What is my name?")
    assert unknown.text.startswith("I don't know yet")
    await pipe.execute_with_context("s", "user", "Hello, my name is Grace")
    known = await pipe.execute_with_context("s", "user", "What is my name?")
    assert known.text.startswith("Your name is Grace")
    # Without the session's history, the same question has nothing to recall.
    assert (await pipe.execute("user", "What is my name?")).text.startswith("I don't know yet")
