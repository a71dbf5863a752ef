"""Usage a provider did not send is estimated, labelled, and priced as an estimate."""

from __future__ import annotations

from typing import Any

import pytest

from pk_notebook import Delta, Finish, Pipeline, Price, StreamStatus, Usage
from pk_notebook.runtime import tokens


class Quiet:
    """Streams an answer and reports no usage (as Ollama's /v1 does)."""

    name = "quiet"
    model = "llama3.2"

    def __init__(self, text: str = "one two three four", usage: Usage | None = None) -> None:
        self.text, self.usage = text, usage
        self.prices = {"llama3.2": Price(input=1.0, output=2.0)}

    async def stream(self, request: Any):  # type: ignore[no-untyped-def]
        for word in self.text.split(" "):
            yield Delta(word + " ")
        yield Finish("stop", self.usage, model="llama3.2")

    async def aclose(self) -> None:
        pass


async def test_a_finished_answer_without_usage_gets_a_labelled_estimate() -> None:
    async with Pipeline(Quiet()) as pipe:
        result = await pipe.execute("user", "Count to four, please")  # 21 characters
    usage = result.usage
    assert usage is not None and usage.estimated == "chars/4"
    assert usage.input_tokens == 6  # ceil(21 / 4)
    assert usage.output_tokens == 5  # "one two three four " is 19 characters
    assert usage.to_dict()["estimated"] == "chars/4"
    assert result.cost == pytest.approx((6 * 1.0 + 5 * 2.0) / 1_000_000)
    stored = result.messages[-1].meta["usage"]
    assert stored["estimated"] == "chars/4"


async def test_a_stopped_stream_is_estimated_too_and_reported_usage_is_not() -> None:
    async with Pipeline(Quiet("a b c d e f g h")) as pipe:
        stream = pipe.stream("go")
        async with stream:
            async for chunk in stream:
                if chunk.index == 2:
                    stream.stop()
        assert stream.result.status is StreamStatus.STOPPED
        assert stream.result.usage is not None and stream.result.usage.estimated

        reported = Usage(7, 3)
        pipe.provider.usage = reported
        result = await pipe.execute("user", "go")
        assert result.usage == reported and result.usage.estimated is None


async def test_a_registered_tokenizer_is_used_and_named() -> None:
    tokens.register_tokenizer("llama", lambda text: len(text.split()), method="words")
    try:
        async with Pipeline(Quiet()) as pipe:
            result = await pipe.execute("user", "Count to four, please")
    finally:
        tokens._TOKENIZERS.pop("llama")
    assert result.usage == Usage(4, 4, estimated="words")


def test_the_status_line_says_estimated() -> None:
    from pk_notebook import Result
    from pk_notebook.notebook.status import format_status

    result = Result("x", StreamStatus.FINISHED, usage=Usage(3, 12, estimated="chars/4"))
    assert "≈12 tokens (estimated)" in format_status(result)
    assert " 12 tokens" in format_status(Result("x", StreamStatus.FINISHED, usage=Usage(3, 12)))


async def test_the_mock_without_usage_and_a_stopped_mock_stream_are_labelled() -> None:
    from pk_notebook.notebook.status import format_status
    from pk_notebook.providers import MockProvider, Scenario

    quiet = MockProvider([Scenario("one two three four five six")], usage=False)
    async with Pipeline(quiet) as pipe:
        result = await pipe.execute("user", "count")
        assert result.usage is not None and result.usage.estimated == "chars/4"
        assert "tokens (estimated)" in format_status(result)

    talkative = MockProvider([Scenario("one two three four five six seven")], chunk_delay=0.01)
    async with Pipeline(talkative) as pipe:
        stream = pipe.stream("count")
        async with stream:
            async for chunk in stream:
                if chunk.index == 2:
                    stream.stop()
    assert stream.result.status is StreamStatus.STOPPED
    assert stream.result.usage is not None and stream.result.usage.estimated == "chars/4"
    assert "≈" in format_status(stream.result)
