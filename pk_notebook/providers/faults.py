"""One vocabulary of faults to rehearse, for the mock provider and the fake HTTP server.

The same name means the same thing wherever a test or a tutorial asks for it:
``MockProvider(fault=Fault("disconnect", after=3))`` in-process, and
``Script(fault="disconnect", after=3)`` over a real socket. The mock plays the
faults that make sense without a network (:data:`MOCK_FAULTS`); the fake server
plays them all, including the wire-level ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["FAULTS", "MOCK_FAULTS", "canonical_fault"]

#: every fault, and what happens (``after`` counts text pieces sent first)
FAULTS: Mapping[str, str] = MappingProxyType(
    {
        "error": "the provider reports an error inside the stream after `after` pieces",
        "disconnect": "the connection drops after `after` pieces",
        "truncate": "the stream ends after `after` pieces without the provider's end marker",
        "stall": "nothing more arrives after `after` pieces (the idle timeout ends it)",
        "keepalive_stall": "only keep-alive comments arrive after `after` pieces",
        "rate_limit": "HTTP 429 with Retry-After instead of a stream",
        "server_error": "an HTTP error status (5xx unless told) with a JSON error body",
        "malformed": "a chunk that is not JSON after `after` pieces",
        "html": "an HTML page instead of a stream (a captive portal, a login proxy)",
        "no_close": "the whole answer, then the connection is held open",
        "endless_line": "one SSE line that never ends (a cap must stop it)",
    }
)

#: the faults the in-process mock provider plays
MOCK_FAULTS = ("error", "stall", "truncate", "disconnect", "rate_limit", "server_error")

# Earlier names the fake server used; scripts and scenario files keep working.
_ALIASES = {
    "stream_error": "error",
    "drop": "disconnect",
    "eof": "truncate",
    "json_error": "server_error",
}


def canonical_fault(name: str, allowed: tuple[str, ...] | Mapping[str, str] = FAULTS) -> str:
    """``name`` in the shared vocabulary; ``ValueError`` naming the choices if unknown."""
    name = _ALIASES.get(name, name)
    if name not in allowed:
        raise ValueError(f"unknown fault {name!r}: use one of {', '.join(allowed)}")
    return name
