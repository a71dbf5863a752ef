"""Where session histories live: in memory, in a SQLite file, or in Redis.

All stores implement :class:`~pk_notebook.runtime.store.StateStore` and behave
the same (one test suite runs against each).
"""

from ..runtime.store import HistoryLimit, SessionInfo, StateStore
from .memory import MemoryStore
from .spec import describe_store, open_store
from .sqlite import SQLiteStore, default_path

# RedisStore is left out on purpose: `from pk_notebook.sessions import *` must work
# without the optional 'redis' package.
__all__ = [
    "HistoryLimit",
    "MemoryStore",
    "SQLiteStore",
    "SessionInfo",
    "StateStore",
    "default_path",
    "describe_store",
    "open_store",
]


def __getattr__(name: str) -> object:
    # RedisStore needs the optional 'redis' package: import it only when asked for.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'pk_notebook.sessions' has no attribute {name!r}")
