"""Closing widgets: each ipywidget is a comm, and so are its layout and style.

A closed live view must not leave comms open in the kernel (they hold memory and
the front end keeps their models), and closing is an end path: it never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger("pk_notebook")

__all__ = ["close_widgets"]


def close_widgets(widgets: Iterable[Any]) -> None:
    """Close every widget with its layout and style; a failure is logged, not raised."""
    for widget in widgets:
        if widget is None:
            continue
        for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
            if part is None:
                continue
            try:
                part.close()
            except Exception:
                logger.debug("could not close %r", part, exc_info=True)
