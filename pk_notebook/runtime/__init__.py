"""The streaming runtime: pipeline, streams, middleware, types and errors.

It imports nothing from ``providers``, ``notebook`` or ``web`` (pydantic only
when a tool is described), so scripts, servers and kernels all share it.
"""

from .attachments import Attachment, as_attachment
from .compare import CompareEvent, Comparison, compare
from .errors import (
    AuthenticationError,
    ConfigurationError,
    MissingAPIKey,
    NetworkError,
    OutputValidationError,
    PkNotebookError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    ServerError,
    SessionBusy,
    SessionError,
    StoreUnavailable,
    StreamCancelled,
    StreamError,
    StreamTimeout,
    TruncatedStream,
    UsageError,
    redact,
)
from .middleware import (
    LoggingMiddleware,
    Middleware,
    ProviderMiddleware,
    RetryPolicy,
    UsageMiddleware,
)
from .pipeline import (
    Pipeline,
)
from .pricing import (
    Price,
    lookup_price,
)
from .provider import (
    Provider,
)
from .schema import OutputSchema, output_schema
from .store import (
    HistoryLimit,
    SessionInfo,
    StateStore,
)
from .stream import (
    Stream,
)
from .sync import (
    SyncPipeline,
    SyncStream,
    run_sync,
)
from .text import (
    Throttle,
    coalesce,
    iter_lines,
)
from .tools import (
    DEFAULT_MAX_TOOL_ROUNDS,
    Tool,
    ToolArgumentsError,
    ToolSpec,
    tool,
)
from .types import (
    CallInfo,
    Chunk,
    Delta,
    Finish,
    Message,
    ProviderConfig,
    Request,
    Result,
    StreamStatus,
    ToolCall,
    ToolCallDelta,
    ToolEvent,
    ToolResult,
    Usage,
)

__all__ = [
    "DEFAULT_MAX_TOOL_ROUNDS",
    "Attachment",
    "AuthenticationError",
    "CallInfo",
    "Chunk",
    "CompareEvent",
    "Comparison",
    "ConfigurationError",
    "Delta",
    "Finish",
    "HistoryLimit",
    "LoggingMiddleware",
    "Message",
    "Middleware",
    "MissingAPIKey",
    "NetworkError",
    "OutputSchema",
    "OutputValidationError",
    "Pipeline",
    "PkNotebookError",
    "Price",
    "ProtocolError",
    "Provider",
    "ProviderConfig",
    "ProviderError",
    "ProviderMiddleware",
    "RateLimitError",
    "Request",
    "Result",
    "RetryPolicy",
    "ServerError",
    "SessionBusy",
    "SessionError",
    "SessionInfo",
    "StateStore",
    "StoreUnavailable",
    "Stream",
    "StreamCancelled",
    "StreamError",
    "StreamStatus",
    "StreamTimeout",
    "SyncPipeline",
    "SyncStream",
    "Throttle",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCallDelta",
    "ToolEvent",
    "ToolResult",
    "ToolSpec",
    "TruncatedStream",
    "Usage",
    "UsageError",
    "UsageMiddleware",
    "as_attachment",
    "coalesce",
    "compare",
    "iter_lines",
    "lookup_price",
    "output_schema",
    "redact",
    "run_sync",
    "tool",
]
