"""Test helpers users import in their own tests: a fake provider HTTP server.

``FakeProviderServer`` is a real HTTP server on 127.0.0.1 that speaks the OpenAI
(Chat Completions and Responses), Anthropic and Gemini streaming dialects, plays a
:class:`Script` at a chosen pace, injects faults, and records every request (see
:mod:`.fake_server`). For pytest, enable the fixtures in a ``conftest.py``::

    pytest_plugins = ["pk_notebook.testing.pytest_plugin"]

    def test_drop(fake_server):
        fake_server.enqueue(Script("Hello world", fault="drop", after=1))
        ...
"""

from ..providers.faults import FAULTS
from .fake_server import FakeProviderServer, RecordedRequest
from .scenarios import DIALECTS, Script

__all__ = ["DIALECTS", "FAULTS", "FakeProviderServer", "RecordedRequest", "Script"]
