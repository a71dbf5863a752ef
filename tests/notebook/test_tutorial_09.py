"""Tutorial 09 (structured output, notebook context, files, a replayed real run) passes nbval
twice in a row: its committed outputs, including the answer replayed from a cassette of a
real OpenAI stream, come back byte for byte, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SECRETS

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "09-structured-output-and-context.ipynb"
CASSETTE = ROOT / "notebooks" / "cassettes" / "openai_4242.json"
SOURCE = ROOT / "tests" / "conformance" / "openai_chat_include_usage.sse"


def test_the_cassette_holds_the_real_recording_byte_for_byte() -> None:
    data = json.loads(CASSETTE.read_text(encoding="utf-8"))
    (entry,) = data["interactions"]
    chunks = "".join(piece[1] for piece in entry["response"]["chunks"]).encode()
    assert chunks == SOURCE.read_bytes()
    assert entry["request"]["url"] == "https://api.openai.com/v1/chat/completions"
    assert "authorization" not in json.dumps(entry).lower()


def test_the_saved_notebook_shows_the_replayed_answer() -> None:
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    outputs = [c.get("outputs", []) for c in nb["cells"] if c["cell_type"] == "code"]
    asked = cells.index("%%stream -o real\nWhat is 4200 + 42?")
    assert "".join(outputs[asked][0]["data"]["text/markdown"]) == "4200 + 42 equals 4242."


def test_nbval_passes_twice_in_a_row(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update(PK_NOTEBOOK_PROVIDER="mock", PK_NOTEBOOK_HOME=str(tmp_path))
    command = [
        sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env",
        "--nbval-sanitize-with", str(ROOT / "nbval-sanitize.cfg"),
        "-p", "no:cacheprovider", "-q", str(NOTEBOOK),
    ]  # fmt: skip
    for attempt in (1, 2):
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"run {attempt}:\n{proc.stdout[-4000:]}"
        assert " passed" in proc.stdout and "failed" not in proc.stdout
