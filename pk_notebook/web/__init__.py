"""Streaming to the web: SSE, WebSocket and an OpenAI-compatible endpoint.

    from pk_notebook.web import create_app
    app = create_app(pipe)    # an ASGI (Starlette) app; serve it with uvicorn

or from a shell: ``pk-notebook serve --provider mock --port 8080``. Needs the
``web`` extra (``pip install 'pk-notebook[web]'``).
"""

from .app import create_app
from .settings import WebSettings

__all__ = ["WebSettings", "create_app"]
