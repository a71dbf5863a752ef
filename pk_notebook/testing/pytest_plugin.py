"""pytest fixtures for the fake provider server.

Enable with ``pytest_plugins = ["pk_notebook.testing.pytest_plugin"]`` in a conftest.

``fake_server``: a :class:`FakeProviderServer`, started once per test session and
reset (no recorded requests, no queued scripts, the default script) before each
test that uses it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_server import FakeProviderServer


@pytest.fixture(scope="session")
def fake_server_session() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def fake_server(fake_server_session: FakeProviderServer) -> FakeProviderServer:
    fake_server_session.reset()
    return fake_server_session
