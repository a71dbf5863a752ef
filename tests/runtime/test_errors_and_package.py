"""The error tree, secrets kept out of messages, and the package's public surface."""

from __future__ import annotations

import ast
import pathlib
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


# Which packages each layer may import. Everything else inside pk_notebook is an
# upward (or sideways) import: the layers are runtime < providers, sessions <
# notebook, web; testing serves tests and may use providers.
ALLOWED_IMPORTS = {
    "runtime": {"runtime"},
    "providers": {"runtime", "providers"},
    "sessions": {"runtime", "sessions"},
    "notebook": {"runtime", "providers", "sessions", "notebook"},
    "web": {"runtime", "providers", "sessions", "web"},
    "testing": {"runtime", "providers", "testing"},
}


def _imported_layers(path: pathlib.Path, root: pathlib.Path) -> set[str]:
    """The pk_notebook sub-packages a module imports, from its syntax tree (lazy imports too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.parent.relative_to(root.parent).parts  # ("pk_notebook", "runtime", ...)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = [*base, *(node.module.split(".") if node.module else [])]
                if not node.module:  # "from . import x" / "from .. import web"
                    names = [[*module, alias.name] for alias in node.names]
                else:
                    names = [module]
            else:
                names = [(node.module or "").split(".")]
        else:
            continue
        for parts in names:
            if len(parts) >= 2 and parts[0] == "pk_notebook":
                found.add(parts[1])
    return found


def test_dependencies_point_one_way() -> None:
    """Every package imports only the layers below it (checked on every module)."""
    root = pathlib.Path(pk_notebook.__file__).parent
    offenders = []
    for layer, allowed in ALLOWED_IMPORTS.items():
        for path in (root / layer).rglob("*.py"):
            bad = {
                name
                for name in _imported_layers(path, root)
                if name in ALLOWED_IMPORTS and name not in allowed
            }
            if bad:
                offenders.append(f"{path.relative_to(root)} imports {sorted(bad)}")
    assert offenders == []


def test_the_layer_check_sees_relative_and_lazy_imports(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "pk_notebook"
    (root / "runtime").mkdir(parents=True)
    module = root / "runtime" / "x.py"
    module.write_text(
        "from ..sessions.memory import MemoryStore\n"
        "def f():\n    from .. import web\n    import pk_notebook.notebook.chat\n"
    )
    assert _imported_layers(module, root) == {"sessions", "web", "notebook"}
