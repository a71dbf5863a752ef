"""One fault vocabulary: the same name means the same thing in the mock and on the wire."""

from __future__ import annotations

import pytest

from pk_notebook import ConfigurationError, NetworkError, Pipeline, TruncatedStream
from pk_notebook.providers import Fault, MockProvider
from pk_notebook.providers.faults import FAULTS, MOCK_FAULTS
from pk_notebook.providers.openai import OpenAIProvider
from pk_notebook.testing import FAULTS as TESTING_FAULTS
from pk_notebook.testing import FakeProviderServer, Script


def test_one_list_and_the_mock_plays_a_part_of_it() -> None:
    assert TESTING_FAULTS is FAULTS
    assert set(MOCK_FAULTS) <= set(FAULTS)
    with pytest.raises(ConfigurationError, match="fake HTTP server plays the others"):
        Fault("endless_line")
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        Script(fault="nope")
    # the fake server's earlier names still work, as the shared ones
    assert Script(fault="drop").fault == "disconnect"
    assert Script(fault="eof").fault == "truncate"


@pytest.mark.parametrize(
    ("fault", "error"),
    [("disconnect", NetworkError), ("truncate", TruncatedStream)],
)
async def test_the_same_name_fails_the_same_way_in_process_and_on_the_wire(
    fault: str, error: type[Exception]
) -> None:
    text = "one two three four five six"
    mock = Pipeline(MockProvider.scripted(text, fault=Fault(fault, after=3)))
    with pytest.raises(error) as in_process:
        await mock.execute("user", "x")
    with FakeProviderServer() as server:
        server.enqueue(Script(text, fault=fault, after=3))
        wire = Pipeline(OpenAIProvider("m", base_url=server.base_url, api_key="test-key-000"))
        with pytest.raises(error) as on_the_wire:
            await wire.execute("user", "x")
        await wire.shutdown()
    await mock.shutdown()
    assert in_process.value.partial_text and on_the_wire.value.partial_text
