"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, hint: str) -> str:
    """The path of ``name``; skip the test without it, but fail under CI=true.

    CI installs every service the suite needs, so a missing one there is a broken
    CI script, not a reason to skip silently.
    """
    path = shutil.which(name) or (name if os.path.isabs(name) and os.path.exists(name) else None)
    if path is None:
        message = f"{name} is not installed ({hint})"
        if IN_CI:
            pytest.fail(message + " and CI=true forbids skipping", pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep SQLite sessions and provider defaults out of the user's real home."""
    monkeypatch.setenv("PK_NOTEBOOK_HOME", str(tmp_path_factory.mktemp("pk_home")))
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


REDIS_HINT = "apt-get install redis-server, or brew install redis"


@pytest.fixture(scope="session")
def redis_binary() -> str:
    return require_binary("redis-server", REDIS_HINT)


@pytest.fixture(scope="session")
def redis_server(redis_binary: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One redis-server on a free loopback port for the whole run (no persistence);
    tests keep apart by key prefix."""
    from .sessions.redis_server import RedisServer

    server = RedisServer(redis_binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
