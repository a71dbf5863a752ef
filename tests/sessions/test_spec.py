"""Store specs: one meaning for ``%stream config --store`` and ``pk-notebook serve --store``,
and a description that never shows a password."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pk_notebook.runtime import ConfigurationError
from pk_notebook.runtime.store import StateStore
from pk_notebook.sessions import MemoryStore, SQLiteStore
from pk_notebook.sessions.spec import (
    ACCEPTED_FORMS,
    StoreSpec,
    describe_store,
    open_store,
    parse_store_spec,
)

SECRET = "s3cret-pass-word"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default SQLite file and relative paths land in this test's directory."""
    monkeypatch.setenv("PK_NOTEBOOK_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def identity(store: StateStore) -> tuple[str, str]:
    """What makes two stores the same store: their kind and where their data lives."""
    if isinstance(store, SQLiteStore):
        return "sqlite", str(Path(store.path).resolve())
    if isinstance(store, MemoryStore):
        return "memory", ""
    return type(store).__name__, str(getattr(store, "url", ""))


SPECS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite-default-file"),
    pytest.param("sqlite:chats", id="sqlite-any-name"),
    pytest.param("sqlite:sub/chats.db", id="sqlite-relative-path"),
    pytest.param("sessions.sqlite3", id="path-sqlite3"),
    pytest.param(f"redis://alice:{SECRET}@127.0.0.1:1/0", id="redis", marks=pytest.mark.redis),
]


# --- parsing and describing ----------------------------------------------------------------


def test_the_forms_parse_to_one_meaning(home: Path) -> None:
    assert parse_store_spec("memory") == StoreSpec("memory")
    assert parse_store_spec(" sqlite ") == StoreSpec("sqlite")
    assert parse_store_spec("sqlite:x") == StoreSpec("sqlite", "x")
    assert parse_store_spec("sqlite:~/x") == StoreSpec("sqlite", str(Path.home() / "x"))
    assert parse_store_spec("a/b.db") == StoreSpec("sqlite", "a/b.db")
    assert parse_store_spec("rediss://h:6380/1") == StoreSpec("redis", "rediss://h:6380/1")
    assert parse_store_spec("unix:///run/redis.sock") == StoreSpec(
        "redis", "unix:///run/redis.sock"
    )
    default = open_store("sqlite")
    assert isinstance(default, SQLiteStore)
    assert default.path == home / "home" / "sessions.sqlite3"


@pytest.mark.parametrize(
    "spec, shown",
    [
        ("memory", "memory"),
        ("sqlite", "sqlite"),
        ("sqlite:/tmp/x", "sqlite:/tmp/x"),
        (f"redis://user:{SECRET}@host/0", "redis://user:***@host/0"),
        (f"rediss://:{SECRET}@host:6380", "rediss://:***@host:6380"),
        (f"redis://host/0?password={SECRET}&db=1", "redis://host/0?password=***&db=1"),
    ],
)
def test_describe_store_never_shows_a_password(spec: str, shown: str) -> None:
    assert describe_store(spec) == shown
    assert SECRET not in describe_store(spec)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(f"postgres://bob:{SECRET}@db/0", id="other-url"),
        pytest.param("sessions", id="bare-name"),
        pytest.param("sqlite:", id="sqlite-without-path"),
        pytest.param("", id="empty"),
        pytest.param(42, id="not-a-string"),
    ],
)
def test_a_bad_spec_lists_the_accepted_forms_without_secrets(spec: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(spec)
    message = str(caught.value)
    assert all(form in message for form in ACCEPTED_FORMS), message
    assert SECRET not in message


# --- the two callers -----------------------------------------------------------------------


@pytest.fixture
def ip() -> Iterator[Any]:
    from IPython.testing.globalipapp import get_ipython

    from pk_notebook.notebook import defaults as defaults_module

    shell = get_ipython()
    shell.run_line_magic("load_ext", "pk_notebook")
    defaults_module.reset_defaults()
    yield shell
    shell.run_line_magic("unload_ext", "pk_notebook")


def notebook_store(ip: Any, spec: str) -> StateStore:
    """The store ``%stream config --store SPEC`` installs."""
    from pk_notebook.notebook.defaults import defaults

    ip.run_line_magic("stream", f"config --store {spec}")
    return defaults().state_store()


def serve_store(spec: str, monkeypatch: pytest.MonkeyPatch) -> StateStore:
    """The store ``pk-notebook serve --store SPEC`` runs with (the server itself is skipped)."""
    uvicorn = pytest.importorskip("uvicorn")
    from pk_notebook.web import app as app_module
    from pk_notebook.web import cli

    seen: list[StateStore] = []

    def create_app(pipe: Any, *args: Any, **kwargs: Any) -> object:
        seen.append(pipe.state_store)
        return object()

    async def serve(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(app_module, "create_app", create_app)
    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    assert cli.main(["serve", "--store", spec, "--log-level", "warning"]) == 0
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("spec", SPECS)
def test_notebook_and_server_open_the_same_store(
    spec: str, ip: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    in_notebook = notebook_store(ip, spec)
    printed = capsys.readouterr().out
    in_server = serve_store(spec, monkeypatch)
    assert identity(in_notebook) == identity(in_server) == identity(open_store(spec))
    # What %stream config prints is the redacted description.
    assert describe_store(spec) in printed
    assert SECRET not in printed + capsys.readouterr().err


@pytest.mark.parametrize("spec", ["sessions", f"postgres://bob:{SECRET}@db/0"])
def test_notebook_and_server_refuse_the_same_specs_alike(
    spec: str, ip: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("stream", f"config --store {spec}")
    in_notebook = str(caught.value)
    capsys.readouterr()
    pytest.importorskip("uvicorn")
    from pk_notebook.web import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--store", spec])
    assert exited.value.code == 2
    in_server = capsys.readouterr().err
    for message in (in_notebook, in_server):
        assert all(form in message for form in ACCEPTED_FORMS), message
        assert SECRET not in message
