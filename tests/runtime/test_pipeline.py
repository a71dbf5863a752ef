"""The pipeline: middleware, results, retries, shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from pk_notebook import (
    ConfigurationError,
    Delta,
    Finish,
    LoggingMiddleware,
    Message,
    Pipeline,
    Price,
    ProviderConfig,
    ProviderMiddleware,
    RateLimitError,
    Request,
    RetryPolicy,
    ServerError,
    StreamStatus,
    UsageError,
    UsageMiddleware,
)
from pk_notebook.providers import Fault, MockProvider, Scenario

LONG = " ".join(f"w{i}" for i in range(300))


async def test_execute_returns_a_complete_result() -> None:
    pipe = Pipeline(ProviderMiddleware(MockProvider([Scenario("Hello there.")])))
    result = await pipe.execute("user", "Say hello")
    assert result.text == "Hello there."
    assert result.status is StreamStatus.FINISHED and result.complete
    assert result.finish_reason == "stop"
    assert [m.role for m in result.messages] == ["user", "assistant"]
    assert result.messages[0].content == "Say hello"
    assert result.messages[1].content == "Hello there."
    assert result.usage is not None and result.usage.output_tokens == 3  # "Hello", " there", "."
    assert result.provider == "mock" and result.model == "mock-1"
    assert result.time_to_first_chunk is not None and result.duration >= result.time_to_first_chunk
    assert result.attempts == 1
    assert result.to_dict()["status"] == "finished"


async def test_middleware_sees_and_changes_the_request_and_the_chunks() -> None:
    seen_prompts = []

    async def redact_names(request: Request, call_next):  # type: ignore[no-untyped-def]
        seen_prompts.append(request.prompt)
        messages = (
            *request.messages[:-1],
            Message("user", request.prompt.replace("Ada", "[name]")),
        )
        async for event in call_next(request.replace(messages=messages)):
            yield event

    async def shout(request: Request, call_next):  # type: ignore[no-untyped-def]
        async for event in call_next(request):
            if isinstance(event, Delta):
                event.text = event.text.upper()
            yield event

    provider = MockProvider([Scenario("you said: {prompt}")])
    pipe = Pipeline(shout, redact_names, ProviderMiddleware(provider))
    result = await pipe.execute("user", "I am Ada")
    assert seen_prompts == ["I am Ada"]
    assert provider.calls[0].request.prompt == "I am [name]"
    assert result.text == "YOU SAID: I AM [NAME]"


async def test_usage_middleware_puts_cost_on_results_and_keeps_totals() -> None:
    usage = UsageMiddleware({"mock-*": Price(input=1.0, output=2.0)})
    pipe = Pipeline(usage, ProviderMiddleware(MockProvider([Scenario("a b c d")])))
    first = await pipe.execute("user", "12345678")  # 2 input tokens, 4 output
    assert first.cost == pytest.approx((2 * 1.0 + 4 * 2.0) / 1e6)
    await pipe.execute("user", "12345678")
    assert usage.totals.calls == 2
    assert usage.totals.usage.output_tokens == 8
    assert usage.totals.cost == pytest.approx(2 * first.cost)


async def test_an_unpriced_model_has_no_cost_rather_than_zero() -> None:
    usage = UsageMiddleware({"gpt-4o": Price(1, 1)})
    pipe = Pipeline(usage, ProviderMiddleware(MockProvider([Scenario("a")])))
    result = await pipe.execute("user", "x")
    assert result.cost is None
    assert usage.totals.unpriced_calls == 1


async def test_logging_middleware_logs_outcomes_but_never_the_prompt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe = Pipeline(
        LoggingMiddleware(), ProviderMiddleware(MockProvider([Scenario("secret answer")]))
    )
    with caplog.at_level(logging.INFO, logger="pk_notebook.calls"):
        await pipe.execute("user", "my private question")
    text = caplog.text
    assert "call start" in text and "finished (stop)" in text
    assert "private" not in text and "secret" not in text


async def test_config_given_per_call_overrides_the_middleware_defaults() -> None:
    provider = MockProvider([Scenario("one two three four five")])
    pipe = Pipeline(
        ProviderMiddleware(provider, ProviderConfig(model="base", max_tokens=100, temperature=0.2))
    )
    result = await pipe.execute("user", "x", config=ProviderConfig(max_tokens=2))
    sent = provider.calls[0].request.config
    assert (sent.model, sent.max_tokens, sent.temperature) == ("base", 2, 0.2)
    assert result.text == "one two" and result.finish_reason == "length"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"temperature": 3}, "temperature", id="temperature"),
        pytest.param({"max_tokens": 0}, "max_tokens", id="max-tokens"),
        pytest.param({"top_p": 0}, "top_p", id="top-p"),
    ],
)
def test_bad_config_fails_at_construction_with_a_clear_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ProviderConfig(**kwargs)


def test_a_pipeline_without_a_provider_link_explains_itself() -> None:
    with pytest.raises(ConfigurationError, match="ProviderMiddleware"):
        Pipeline()
    with pytest.raises(ConfigurationError, match="last middleware"):
        Pipeline(LoggingMiddleware())
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        Pipeline(ProviderMiddleware(MockProvider()), idle_timeout=-1)


async def test_retry_before_the_first_chunk_recovers_and_counts_attempts() -> None:
    provider = MockProvider(
        [Scenario("ok now", fault=Fault("rate_limit", times=2, retry_after=0.01))]
    )
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=3, initial_backoff=0.01))
    )
    result = await pipe.execute("user", "x")
    assert result.text == "ok now"
    assert result.attempts == 3
    assert [c.outcome for c in provider.calls] == ["error", "error", "finished"]


async def test_retries_give_up_with_the_typed_error() -> None:
    provider = MockProvider([Scenario("never", fault=Fault("server_error", times=5))])
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))
    )
    with pytest.raises(ServerError):
        await pipe.execute("user", "x")
    assert len(provider.calls) == 2


async def test_a_retry_after_beyond_the_cap_is_not_waited_for() -> None:
    provider = MockProvider([Scenario("x", fault=Fault("rate_limit", times=1, retry_after=3600))])
    pipe = Pipeline(ProviderMiddleware(provider, retry=RetryPolicy(max_retry_after=5)))
    with pytest.raises(RateLimitError) as info:
        await pipe.execute("user", "x")
    assert info.value.retry_after == 3600
    assert len(provider.calls) == 1


async def test_no_retry_after_the_first_chunk() -> None:
    provider = MockProvider([Scenario("one two three", fault=Fault("disconnect", after=1))])
    pipe = Pipeline(
        ProviderMiddleware(provider, retry=RetryPolicy(max_attempts=5, initial_backoff=0))
    )
    from pk_notebook import NetworkError

    with pytest.raises(NetworkError) as info:
        await pipe.execute("user", "x")
    assert info.value.partial_text == "one"
    assert len(provider.calls) == 1  # text was shown: a retry would show it twice


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=1, max_backoff=4, jitter=False)
    error = ServerError("x", status_code=503)
    assert [policy.delay(n, error) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 4]
    assert policy.delay(10, error) is None
    assert policy.delay(1, ConfigurationError("x")) is None  # not retryable


async def test_shutdown_waits_for_running_streams_then_refuses_new_calls() -> None:
    provider = MockProvider([Scenario("a b c d e f")], chunk_delay=0.02)
    closed = []
    provider.aclose = lambda: closed.append(True) or asyncio.sleep(0)  # type: ignore[method-assign]
    pipe = Pipeline(ProviderMiddleware(provider))
    stream = await pipe.execute_stream("user", "x")
    consumer = asyncio.ensure_future(stream.collect())
    await pipe.shutdown(grace=5)
    assert consumer.done() and consumer.result().text == "a b c d e f"
    assert closed == [True]
    with pytest.raises(UsageError, match="shut down"):
        await pipe.execute("user", "again")


async def test_shutdown_stops_streams_that_outlive_the_grace_period() -> None:
    provider = MockProvider([Scenario(LONG)], chunk_delay=0.05)
    pipe = Pipeline(ProviderMiddleware(provider))
    stream = await pipe.execute_stream("user", "x")
    consumer = asyncio.ensure_future(stream.collect())
    await pipe.shutdown(grace=0.1)
    assert stream.status is StreamStatus.STOPPED
    assert provider.calls[-1].outcome == "closed"
    from pk_notebook import StreamCancelled

    with pytest.raises(StreamCancelled):
        await consumer


async def test_history_can_be_passed_without_a_session() -> None:
    provider = MockProvider([Scenario("second", turn=2)])
    pipe = Pipeline(ProviderMiddleware(provider))
    result = await pipe.execute_stream(
        "user", "and now?", history=[Message("user", "first"), Message("assistant", "ok")]
    )
    assert (await result.collect()).text == "second"


class EchoProvider:
    """A provider written from scratch against the Protocol: the one-method contract is enough."""

    name = "echo"
    model = "echo-1"

    async def stream(self, request: Request) -> AsyncIterator[Delta | Finish]:
        for word in request.prompt.split():
            yield Delta(word + " ")
        yield Finish("stop")

    async def aclose(self) -> None:
        return None


async def test_any_object_with_the_provider_protocol_plugs_in() -> None:
    pipe = Pipeline(ProviderMiddleware(EchoProvider()))
    assert (await pipe.execute("user", "a b c")).text == "a b c "
    with pytest.raises(ConfigurationError, match="not a provider"):
        ProviderMiddleware(object())  # type: ignore[arg-type]


async def test_a_cost_is_computed_once_where_provider_and_middleware_both_have_prices() -> None:
    from pk_notebook import Price, UsageMiddleware
    from pk_notebook.providers.pricing import lookup_price as provider_lookup

    # one lookup function, wherever it is imported from
    from pk_notebook.runtime.pricing import lookup_price

    assert provider_lookup is lookup_price
    cheap = {"mock-*": Price(1.0, 1.0)}
    dear = {"mock-*": Price(1000.0, 1000.0)}

    class PricedMock(MockProvider):
        async def stream(self, request):  # type: ignore[no-untyped-def]
            async for event in super().stream(request):
                if isinstance(event, Finish) and event.usage is not None:
                    event.cost = lookup_price(cheap, event.model).cost(event.usage)  # type: ignore[union-attr]
                yield event

    usage = UsageMiddleware(dear)
    pipe = Pipeline(usage, ProviderMiddleware(PricedMock.scripted("one two", model="mock-1")))
    result = await pipe.execute("user", "x")
    assert result.cost is not None and result.cost == usage.totals.cost
    assert result.cost == Price(1.0, 1.0).cost(result.usage)  # type: ignore[arg-type]
    await pipe.shutdown()
