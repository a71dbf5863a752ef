"""Durations as people write them: ``90``, ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``."""

from __future__ import annotations

import re

from .errors import ConfigurationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_ttl(value: float | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _PATTERN.match(str(value))
        if not match:
            raise ConfigurationError(
                f"cannot read the duration {value!r}: write seconds (3600) or "
                "a number with s, m, h or d ('24h')"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigurationError("a TTL must be positive (or None for no expiry)")
    return seconds
