"""Durations as people write them (its home is :mod:`pk_notebook.runtime.ttl`)."""

from ..runtime.ttl import parse_ttl

__all__ = ["parse_ttl"]
