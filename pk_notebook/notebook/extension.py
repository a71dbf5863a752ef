"""``%load_ext pk_notebook``: the ``%%stream`` / ``%stream`` magics and their transformer."""

from __future__ import annotations

from typing import Any

from . import transformer


def load_ipython_extension(ipython: Any) -> None:
    from .magic import StreamMagics

    ipython.register_magics(StreamMagics)
    transformer.install(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .defaults import reset_defaults

    transformer.uninstall(ipython)
    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("stream", None)
    reset_defaults()
