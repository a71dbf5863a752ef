"""The fake provider server fixtures (users enable them with
``pytest_plugins = ["pk_notebook.testing.pytest_plugin"]`` in their root conftest)."""

from pk_notebook.testing.pytest_plugin import fake_server, fake_server_session

__all__ = ["fake_server", "fake_server_session"]
