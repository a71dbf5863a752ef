"""The one-line status shown under a streaming answer (magic and chat alike)."""

from __future__ import annotations

from ..runtime.stream import Stream
from ..runtime.types import Result, StreamStatus

_LABELS = {
    StreamStatus.STREAMING: "streaming",
    StreamStatus.FINISHED: "finished",
    StreamStatus.STOPPED: "stopped",
    StreamStatus.TIMED_OUT: "timed out",
    StreamStatus.FAILED: "failed",
    StreamStatus.TRUNCATED: "truncated",
}


def status_label(status: StreamStatus) -> str:
    return _LABELS[status]


def format_status(source: Stream | Result, *, waiting: bool = False) -> str:
    """``"1.2 s · first chunk 0.05 s · 83 chunks · 83 tokens · 70 tok/s · finished (stop)"``."""
    if isinstance(source, Result):
        elapsed, ttfc, chunks = source.duration, source.time_to_first_chunk, source.chunks
        status, finish = source.status, source.finish_reason
        tokens = source.usage.output_tokens if source.usage else None
    else:
        elapsed, ttfc, chunks = source.elapsed, source.time_to_first_chunk, source.chunk_count
        status, finish, tokens = source.status, None, None
    parts = [f"{elapsed:.1f} s"]
    if ttfc is not None:
        parts.append(f"first chunk {ttfc:.2f} s")
    elif waiting:
        parts.append("waiting for the first chunk")
    parts.append(f"{chunks} chunks")
    if tokens is not None:
        parts.append(f"{tokens} tokens")
    rate_base = tokens if tokens is not None else chunks
    if elapsed > 0 and rate_base:
        parts.append(f"{rate_base / elapsed:.0f} {'tok' if tokens is not None else 'chunks'}/s")
    label = status_label(status)
    parts.append(f"{label} ({finish})" if finish else label)
    return " · ".join(parts)
