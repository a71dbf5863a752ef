"""The error tree, secrets kept out of messages, and the package's public surface."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pk_notebook
from pk_notebook import (
    AuthenticationError,
    MissingAPIKey,
    PkNotebookError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    StreamError,
    StreamTimeout,
)
from pk_notebook.runtime.errors import redact

# Fake keys are assembled from this prefix so secret scanners do not flag them as real.
SK = "sk-"


def test_every_error_shares_one_base_and_stream_errors_carry_partial_text() -> None:
    for error in (
        AuthenticationError("no", status_code=401),
        RateLimitError("slow down", retry_after=2),
        StreamTimeout("late", kind="idle", seconds=30, partial_text="abc"),
        ProtocolError("bad", raw="data: {nope"),
    ):
        assert isinstance(error, PkNotebookError) and isinstance(error, StreamError)
        assert "type" in error.to_dict()
    assert StreamTimeout("late", kind="idle", seconds=1, partial_text="abc").partial_text == "abc"
    assert RateLimitError("x", retry_after=2).retryable
    assert not AuthenticationError("x", status_code=401).retryable
    assert ProviderError("x", status_code=503).retryable


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"Incorrect API key provided: {SK}proj-abcdefghijklmnop1234", id="openai"),
        pytest.param(f"x-api-key: {SK}ant-api03-abcdefghijklmnopqrstuv", id="anthropic"),
        pytest.param("key=" + "AIza" + "SyA1234567890abcdefghijklmnopqrs", id="gemini"),
        pytest.param("Authorization: Bearer abcdefghijklmnop", id="bearer"),
        pytest.param("redis://user:hunter22@localhost:6379/0", id="redis-url"),
    ],
)
def test_redact_removes_keys_from_text_that_came_from_outside(text: str) -> None:
    cleaned = redact(text)
    assert "[REDACTED]" in cleaned
    for secret in ("abcdefghijklmnop", "hunter22", "1234567890abcdefghij"):
        assert secret not in cleaned


def test_provider_errors_redact_their_message_and_body() -> None:
    error = ProviderError(
        f"bad key {SK}abcdefghijklmnopqrstu", body=f'{{"key": "{SK}abcdefghijklmnopqrstu"}}'
    )
    assert "sk-abcdefghij" not in str(error) and "sk-abcdefghij" not in (error.body or "")


def test_missing_key_names_the_variable_and_the_offline_way() -> None:
    error = MissingAPIKey("openai", ("OPENAI_API_KEY",))
    assert "OPENAI_API_KEY" in str(error) and "mock" in str(error)


def test_all_matches_the_public_names() -> None:
    # (pytest adds "@py_builtins" when it loads our pytest plugin: not a Python name)
    public = {n for n in dir(pk_notebook) if not n.startswith("_") and n.isidentifier()}
    public -= {"annotations", "runtime", "providers", "sessions", "notebook", "testing", "web"}
    assert public == set(pk_notebook.__all__) - {"Chat"}  # Chat is imported lazily
    assert pk_notebook.__all__ == sorted(pk_notebook.__all__)
    for name in pk_notebook.__all__:
        assert getattr(pk_notebook, name) is not None


def test_the_runtime_imports_without_jupyter_or_web_packages() -> None:
    code = (
        "import sys, pk_notebook, pk_notebook.providers, pk_notebook.sessions;"
        "bad = [m for m in ('IPython', 'ipywidgets', 'ipykernel', 'starlette', 'uvicorn', 'redis') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_dependencies_point_one_way() -> None:
    """runtime, providers and sessions never import notebook/ or web/."""
    import pathlib
    import re

    root = pathlib.Path(pk_notebook.__file__).parent
    pattern = re.compile(
        r"^\s*(from|import)\s+(\.\.?(notebook|web)\b|pk_notebook\.(notebook|web)\b)", re.M
    )
    offenders = [
        str(path.relative_to(root))
        for folder in ("runtime", "providers", "sessions")
        for path in (root / folder).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []
