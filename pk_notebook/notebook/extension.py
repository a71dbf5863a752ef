"""``%load_ext pk_notebook``: the ``%%stream`` / ``%stream`` magics and their transformer."""

from __future__ import annotations

from typing import Any

from . import context, transformer


def load_ipython_extension(ipython: Any) -> None:
    from .magic import StreamMagics

    ipython.register_magics(StreamMagics)
    transformer.install(ipython)
    # Tracebacks of failing cells, for {Err} in prompts (IPython keeps In and Out itself).
    log = context.ERRORS
    if log.post_run_cell not in ipython.events.callbacks.get("post_run_cell", []):
        ipython.events.register("post_run_cell", log.post_run_cell)


def unload_ipython_extension(ipython: Any) -> None:
    from .defaults import reset_defaults

    try:
        ipython.events.unregister("post_run_cell", context.ERRORS.post_run_cell)
    except ValueError:
        pass
    transformer.uninstall(ipython)
    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("stream", None)
    reset_defaults()
