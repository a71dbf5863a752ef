"""pk_notebook: stream LLM answers live into Jupyter.

In a notebook::

    %load_ext pk_notebook
    %%stream --session demo
    Write a haiku about {topic}

In Python::

    from pk_notebook import Pipeline, ProviderMiddleware
    from pk_notebook.providers import MockProvider

    pipe = Pipeline(ProviderMiddleware(MockProvider.demo()))
    stream = await pipe.execute_stream("user", "Write a story")
    async with stream:
        async for chunk in stream:
            print(chunk.content, end="")
"""

from __future__ import annotations

from typing import Any as _Any

from .runtime import *  # noqa: F403 - the runtime's surface is the package's surface
from .runtime import __all__ as _runtime_all

__version__ = "0.1.0"

__all__ = sorted([*_runtime_all, "Chat", "load_ipython_extension", "unload_ipython_extension"])


def load_ipython_extension(ipython: _Any) -> None:
    """``%load_ext pk_notebook``: registers ``%%stream``/``%stream`` (IPython imported lazily)."""
    from .notebook.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: _Any) -> None:
    from .notebook.extension import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> _Any:
    # The chat widget needs ipywidgets: import it only when someone asks for it.
    if name == "Chat":
        from .notebook.chat import Chat

        return Chat
    raise AttributeError(f"module 'pk_notebook' has no attribute {name!r}")
