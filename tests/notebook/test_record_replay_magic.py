"""%stream record / replay on the notebook's provider, %stream config --api, the new cell
options (--schema, --attach, --dry-run) and the rows cap, against the fake server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

from pk_notebook.notebook import defaults as defaults_module
from pk_notebook.notebook.options import parse_cell_options
from pk_notebook.testing import FakeProviderServer, Script


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeProviderServer) -> FakeProviderServer:
    server.reset()
    return server


def use_openai(ip: Any, fake: FakeProviderServer, api: str = "") -> None:
    ip.run_line_magic(
        "stream", "config --provider openai:gpt-4o-mini" + (f" --api {api}" if api else "")
    )
    settings = defaults_module.defaults()
    options = {**settings.provider_options, "base_url": fake.base_url, "api_key": "sk-test"}
    settings.update(provider_options=options)


def test_record_then_replay_offline(
    ip: Any, fake: FakeProviderServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cassette = tmp_path / "run.json"
    use_openai(ip, fake)
    fake.default = Script(text="Recorded answer, word by word.", usage=(9, 6))
    ip.run_line_magic("stream", f"record {cassette}")
    assert f"recording the openai provider's calls to {cassette}" in capsys.readouterr().out
    ip.run_cell_magic("stream", "-o first", "Say something")
    assert len(fake.requests) == 1
    stored = json.loads(cassette.read_text())
    assert len(stored["interactions"]) == 1
    assert "sk-test" not in cassette.read_text()

    ip.run_line_magic("stream", f"replay {cassette}")
    assert "offline: nothing is sent" in capsys.readouterr().out
    fake.reset()
    ip.run_cell_magic("stream", "-o again", "Say something")
    assert fake.requests == []  # answered from the cassette
    first, again = ip.user_ns["first"], ip.user_ns["again"]
    assert again.text == first.text == "Recorded answer, word by word."
    assert (again.usage, again.finish_reason) == (first.usage, first.finish_reason)

    capsys.readouterr()
    ip.run_cell_magic("stream", "-o other", "Something else")
    note = capsys.readouterr().out
    assert f"Failed: the cassette {cassette} has no recorded answer for this request" in note
    assert fake.requests == []

    ip.run_line_magic("stream", "replay off")
    assert "off" in capsys.readouterr().out
    ip.run_cell_magic("stream", "", "Say something")
    assert len(fake.requests) == 1  # live again


def test_replay_paces_and_checks_its_arguments(
    ip: Any, fake: FakeProviderServer, tmp_path: Path
) -> None:
    use_openai(ip, fake)
    with pytest.raises(UsageError, match="no cassette at"):
        ip.run_line_magic("stream", f"replay {tmp_path}/missing.json")
    with pytest.raises(UsageError, match="--pace must be 0 or more"):
        ip.run_line_magic("stream", f"replay {tmp_path}/missing.json --pace -1")


def test_the_mock_has_nothing_to_record(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ip.run_line_magic("stream", "config --provider mock")
    capsys.readouterr()
    ip.run_line_magic("stream", "record somewhere.json")
    out = capsys.readouterr().out.strip()
    assert out.startswith("record: the mock provider makes no HTTP calls")
    assert "\n" not in out
    assert defaults_module.defaults().cassette is None
    ip.run_line_magic("stream", "replay somewhere.json")
    assert "nothing to replay" in capsys.readouterr().out


def test_config_api_responses_goes_to_the_responses_endpoint(
    ip: Any, fake: FakeProviderServer
) -> None:
    use_openai(ip, fake, api="responses")
    assert defaults_module.defaults().describe()["api"] == "responses"
    ip.run_cell_magic("stream", "-o res", "Hello")
    (request,) = fake.requests
    assert request.path.endswith("/responses") and request.dialect == "responses"
    assert ip.user_ns["res"].text == "Hello from the fake provider server."
    # A new provider starts from its own default API.
    ip.run_line_magic("stream", "config --provider openai:gpt-4o")
    assert "api" not in defaults_module.defaults().provider_options


def test_config_api_is_checked(ip: Any) -> None:
    with pytest.raises(UsageError, match="the mock provider has no choice of API"):
        ip.run_line_magic("stream", "config --provider mock --api responses")
    with pytest.raises(UsageError, match="openai speaks chat or responses"):
        ip.run_line_magic("stream", "config --provider openai:gpt-4o --api graphql")


def test_cell_options_parse() -> None:
    options = parse_cell_options("--schema Trip -o trip --attach a.png --attach b.pdf --dry-run")
    assert (options.schema, options.out, options.attach, options.dry_run) == (
        "Trip",
        "trip",
        ("a.png", "b.pdf"),
        True,
    )
    with pytest.raises(UsageError):
        parse_cell_options("--schema 'not a name'")


def test_rows_cap_is_a_setting(ip: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    ip.user_ns["frame"] = pd.DataFrame({"n": range(30)})
    ip.run_line_magic("stream", "config --max-var-rows 3")
    capsys.readouterr()
    ip.run_cell_magic("stream", "--dry-run", "Look: {frame}")
    out = capsys.readouterr().out
    assert "(first 3 of 30 rows)" in out and "| 3 | 3 |" not in out
