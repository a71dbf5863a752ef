"""The streaming runtime: pipeline, streams, middleware, types and errors.

It imports only the standard library (and nothing from ``notebook`` or ``web``),
so scripts, servers and kernels all share it.
"""

from .errors import *  # noqa: F403 - the error tree is part of the runtime's surface
from .errors import __all__ as _errors_all
from .middleware import (
    LoggingMiddleware,
    Middleware,
    Price,
    ProviderMiddleware,
    RetryPolicy,
    UsageMiddleware,
)
from .pipeline import Pipeline
from .provider import Provider
from .store import HistoryLimit, SessionInfo, StateStore
from .stream import Stream
from .sync import SyncPipeline, SyncStream, run_sync
from .text import Throttle, coalesce, iter_lines
from .types import (
    Chunk,
    Delta,
    Finish,
    Message,
    ProviderConfig,
    Request,
    Result,
    StreamStatus,
    ToolCall,
    Usage,
)

__all__ = sorted(
    [
        *_errors_all,
        "Chunk",
        "Delta",
        "Finish",
        "HistoryLimit",
        "LoggingMiddleware",
        "Message",
        "Middleware",
        "Pipeline",
        "Price",
        "Provider",
        "ProviderConfig",
        "ProviderMiddleware",
        "Request",
        "Result",
        "RetryPolicy",
        "SessionInfo",
        "StateStore",
        "Stream",
        "StreamStatus",
        "SyncPipeline",
        "SyncStream",
        "Throttle",
        "ToolCall",
        "Usage",
        "UsageMiddleware",
        "coalesce",
        "iter_lines",
        "run_sync",
    ]
)
