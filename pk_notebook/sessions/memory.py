"""Sessions in this process's memory.

The store itself lives in :mod:`pk_notebook.runtime.memory`, because it is the
pipeline's default and the runtime imports nothing from this package; it is
offered here too, beside the other stores, where users look for it.
"""

from ..runtime.memory import MemoryStore

__all__ = ["MemoryStore"]
