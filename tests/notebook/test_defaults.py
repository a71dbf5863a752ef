"""The notebook-wide defaults: one pipeline and one store shared by %%stream and Chat."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pk_notebook import ConfigurationError
from pk_notebook.notebook.defaults import default_pipeline, defaults, open_store, reset_defaults
from pk_notebook.sessions import MemoryStore, SQLiteStore


@pytest.fixture(autouse=True)
def fresh_defaults() -> Iterator[None]:
    reset_defaults()
    yield
    reset_defaults()


def test_the_default_is_offline_and_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PK_NOTEBOOK_PROVIDER", raising=False)
    reset_defaults()
    pipe = default_pipeline()
    assert pipe.provider.name == "mock"
    assert isinstance(pipe.state_store, MemoryStore)
    assert default_pipeline() is pipe  # one shared pipeline


def test_the_environment_can_choose_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PK_NOTEBOOK_PROVIDER", "mock:other")
    reset_defaults()
    assert default_pipeline().provider.model == "other"


def test_changing_settings_rebuilds_the_pipeline_but_keeps_the_store() -> None:
    first = default_pipeline()
    defaults().update(temperature=0.3, max_tokens=50)
    second = default_pipeline()
    assert second is not first
    assert second.state_store is first.state_store  # sessions survive a config change
    assert second.provider_middleware.config.temperature == 0.3
    with pytest.raises(ConfigurationError, match="unknown setting"):
        defaults().update(colour="blue")


@pytest.mark.parametrize(
    "spec, kind",
    [("memory", MemoryStore), ("sqlite", SQLiteStore), ("sessions.sqlite3", SQLiteStore)],
)
def test_store_specs(
    spec: str, kind: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_store(spec), kind)


def test_a_bad_store_spec_says_what_works() -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        open_store("postgres://x")


@pytest.mark.redis
async def test_a_redis_store_is_shared_by_the_default_pipeline_and_a_chat(redis_server) -> None:  # type: ignore[no-untyped-def]
    from pk_notebook import Chat
    from pk_notebook.sessions import RedisStore

    defaults().update(store=redis_server.url)
    pipe = default_pipeline()
    assert isinstance(pipe.state_store, RedisStore)
    session = f"nb-{uuid.uuid4().hex[:8]}"
    await pipe.execute_with_context(session, "user", "My name is Ada")  # as a %%stream cell would
    chat = Chat(session_id=session)  # no pipeline: the notebook default, on Redis
    await chat.refresh()
    assert chat.history[0].content == "My name is Ada"
    result = await chat.send("What is my name?")
    assert result.text.startswith("Your name is Ada")
    # A second store object (another kernel) on the same Redis sees the whole conversation.
    other = RedisStore.from_url(redis_server.url)
    assert len(await other.load(session)) == 4
    await other.aclose()
    chat.close()
    await pipe.state_store.aclose()


async def test_a_replaced_pipeline_closes_once_its_running_streams_end() -> None:
    """%stream config replaces the pipeline; a chat reply still running on the old one
    finishes, then the old one is shut down (its connections closed, not left to GC)."""
    import asyncio

    from pk_notebook.providers import MockProvider

    defaults().update(provider="mock")
    old = default_pipeline()
    stream = old.stream("a long answer please")
    await stream.open()
    defaults().update(temperature=0.5)
    await asyncio.sleep(0.05)
    assert not old.closed  # the reply keeps going
    assert isinstance(old.provider, MockProvider)
    await stream.collect()
    await asyncio.sleep(0.05)
    assert old.closed and stream.result.complete
    assert default_pipeline() is not old and not default_pipeline().closed
