"""compare(): several models on one prompt at once; one failing or stopped leaves the rest."""

from __future__ import annotations

import asyncio

import pytest

from pk_notebook import Pipeline, compare
from pk_notebook.providers import Fault, MockProvider
from pk_notebook.runtime import ConfigurationError, StreamStatus

WORDS = "one two three four five six seven eight nine ten"


def pipes() -> dict[str, Pipeline]:
    return {
        "steady": Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.01)),
        "broken": Pipeline(
            MockProvider.scripted(WORDS, chunk_delay=0.01, fault=Fault("error", after=3))
        ),
        "stopped": Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.05)),
    }


async def test_a_failure_and_a_stop_leave_the_other_model_streaming() -> None:
    cmp = compare(pipes(), "go")
    seen: dict[str, str] = {}
    order = []
    async with cmp:
        async for event in cmp:
            if event.chunk is not None:
                seen[event.label] = seen.get(event.label, "") + event.chunk.content
                if event.label == "stopped" and len(seen["stopped"].split()) >= 2:
                    cmp.stop("stopped")
            else:
                order.append(event.label)
    results = cmp.results
    assert results["steady"].status is StreamStatus.FINISHED
    assert results["steady"].text == WORDS == seen["steady"]
    assert results["broken"].status is StreamStatus.FAILED
    assert results["broken"].text == "one two three"
    assert "broken" in cmp.errors
    assert results["stopped"].status is StreamStatus.STOPPED
    assert 0 < len(results["stopped"].text) < len(WORDS)
    assert order[0] == "broken" and sorted(order) == ["broken", "steady", "stopped"]


async def test_collect_returns_results_in_label_order_and_labels_come_from_providers() -> None:
    a = MockProvider.scripted("a b", model="first")
    b = MockProvider.scripted("c d e f g h", model="first", chunk_delay=0.01)
    results = await compare([a, Pipeline(b)], "go").collect()
    assert list(results) == ["mock:first", "mock:first (2)"]
    assert [r.text for r in results.values()] == ["a b", "c d e f g h"]


async def test_sessions_are_per_model_and_stateless_without_one() -> None:
    both = pipes()
    del both["broken"], both["stopped"]
    both["other"] = Pipeline(MockProvider.scripted("x y", "second answer"))
    await compare(both, "first", session="trip").collect()
    await compare(both, "again", session="trip").collect()
    other = both["other"].state_store
    history = await other.load("trip/other")
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[-1].content == "second answer"
    assert await both["steady"].state_store.load("trip/other") == []
    before = len(await other.list_sessions())
    await compare(both, "no session").collect()
    assert len(await other.list_sessions()) == before


async def test_cancelling_the_consumer_stops_every_stream_and_keeps_partial_text() -> None:
    slow = {
        "a": Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.05)),
        "b": Pipeline(MockProvider.scripted(WORDS, chunk_delay=0.05)),
    }
    cmp = compare(slow, "go")
    task = asyncio.ensure_future(cmp.collect())
    await asyncio.sleep(0.18)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {r.status for r in cmp.results.values()} == {StreamStatus.STOPPED}
    assert all(0 < len(r.text) < len(WORDS) for r in cmp.results.values())


def test_names_are_not_pipelines() -> None:
    with pytest.raises(ConfigurationError, match="create_provider"):
        compare(["openai:gpt-4o-mini"], "go")


async def test_reasoning_arrives_as_its_own_chunks_per_model() -> None:
    from pk_notebook.providers.mock import Scenario

    thinker = Pipeline(MockProvider([Scenario("Five.", reasoning="Count to five first.")]))
    plain = Pipeline(MockProvider.scripted(WORDS))
    reasoning: dict[str, str] = {}
    text: dict[str, str] = {}
    async with compare({"thinker": thinker, "plain": plain}, "Count") as cmp:
        async for event in cmp:
            if event.chunk is not None:
                reasoning[event.label] = reasoning.get(event.label, "") + event.chunk.reasoning
                text[event.label] = text.get(event.label, "") + event.chunk.content
    assert reasoning == {"thinker": "Count to five first.", "plain": ""}
    assert text == {"thinker": "Five.", "plain": WORDS}  # never mixed into the answer
    assert cmp.results["thinker"].reasoning == "Count to five first."
