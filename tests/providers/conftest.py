"""The fake provider server fixtures (users enable them with
``pytest_plugins = ["pk_notebook.testing.pytest_plugin"]`` in their root conftest)."""

import pytest

from pk_notebook.providers._http import TRANSPORT_ENV, TRANSPORTS
from pk_notebook.testing.pytest_plugin import fake_server, fake_server_session

__all__ = ["each_transport", "fake_server", "fake_server_session"]


@pytest.fixture(params=TRANSPORTS)
def each_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per built-in transport (providers built without ``transport=``)."""
    monkeypatch.setenv(TRANSPORT_ENV, request.param)
    return str(request.param)
