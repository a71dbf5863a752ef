"""Run every benchmark: ``python -m benchmarks``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

# every module of this package with a main(): providers, sessions, web, ...
SUITES = sorted(
    f"benchmarks.{info.name}"
    for info in pkgutil.iter_modules([str(Path(__file__).parent)])
    if not info.name.startswith("_")
)


def main() -> int:
    status = 0
    for name in SUITES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a suite whose optional dependencies are missing
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        run = getattr(module, "main", None)
        if run is None:
            continue
        print(f"== {name}", flush=True)
        status |= int(run() or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
