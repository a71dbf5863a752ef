"""What the server writes to its log: no secrets, and no noise a client controls.

Two problems come from uvicorn, which logs on ``uvicorn.error`` and
``uvicorn.access`` whatever our settings say:

* it logs every WebSocket handshake as ``"WebSocket /ws?access_token=<token>"``
  at INFO (``--access-log`` does not cover it), and browsers can only send the
  token that way; at DEBUG, the ``websockets`` library it drives logs the request
  line and every header (``Authorization: Bearer ...``);
* a handshake the app refuses with an HTTP answer costs three lines, one of them
  an ERROR ("ASGI callable returned without completing handshake"): log noise any
  client can produce at will.

:class:`SafeRecords`, a filter on those loggers (and ours), removes query strings
from request paths and redacts the token and keys from every argument of every
record, keeping the arguments' number and types (uvicorn's access formatter
unpacks them). :func:`quiet` marks the current task as one whose outcome the app
has logged itself (one WARNING, no query string): the filter then drops
uvicorn's own lines about that request, which are emitted from the same task
(uvicorn runs the app and logs its outcome in one task per connection).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from ..runtime.errors import redact

logger = logging.getLogger("pk_notebook")

#: the loggers whose records are filtered: uvicorn's two, and ours
FILTERED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "pk_notebook")

_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("pk_notebook_quiet", default=False)

#: uvicorn's (and websockets') lines about one handshake or response; dropped for a
#: request the app marked with :func:`quiet`, which has logged its own line instead
_NOISE = (
    '%s - "WebSocket %s" %d',
    '%s - "WebSocket %s" 403',
    "connection rejected (%d %s)",
    "HTTP response sent (%d %s)",
    "ASGI callable returned without completing handshake.",
    "ASGI callable returned without completing response.",
)


def quiet(message: str, *args: Any) -> None:
    """Log ``message`` as the one WARNING about this request, and silence uvicorn's.

    Call it in the task that handles the request (the ASGI app's own), before
    sending the answer that uvicorn would log.
    """
    _quiet.set(True)
    logger.warning(message, *args)


def _clean(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if value.startswith("/") and "?" in value:
        value = value.split("?", 1)[0]  # a request path: its query holds tokens and prompts
    return redact(value)


class SafeRecords(logging.Filter):
    """Removes query strings and secrets from records; drops uvicorn's noise for
    requests the app has logged itself (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("pk_notebook.web")

    def filter(self, record: logging.LogRecord) -> bool:
        if _quiet.get() and record.name.startswith("uvicorn") and record.msg in _NOISE:
            return False
        if isinstance(record.msg, str):
            record.msg = _clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Formatters print a cached exc_text as it is: a traceback's messages
            # (an exception quoting a URL or a key) are cleaned like the rest.
            record.exc_text = redact(_formatter.formatException(record.exc_info))
        return True


_formatter = logging.Formatter()
_filter = SafeRecords()


def install() -> SafeRecords:
    """Put the filter on uvicorn's loggers and ours (once).

    The secrets it removes are the registered ones (``errors.register_secret``:
    every provider's key, the server's token). Logger filters survive uvicorn's
    ``dictConfig`` (it adds handlers and levels and removes no filters).
    """
    for name in FILTERED_LOGGERS:
        target = logging.getLogger(name)
        if _filter not in target.filters:
            target.addFilter(_filter)
    return _filter
