"""The per-session lock shared by the stores (its home is :mod:`pk_notebook.runtime.locks`)."""

from ..runtime.locks import SessionLocks, acquire_polling

__all__ = ["SessionLocks", "acquire_polling"]
