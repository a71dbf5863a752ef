"""Run every benchmark: ``python -m benchmarks``."""

from __future__ import annotations

import importlib
import sys

SUITES = ["benchmarks.providers"]


def main() -> int:
    status = 0
    for name in SUITES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a suite whose optional dependencies are missing
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        status |= int(module.main() or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
