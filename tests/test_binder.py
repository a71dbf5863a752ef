"""The Binder recipe works: a fresh environment from binder/ runs the quickstart offline.

Binder itself cannot run here (no container engine); this does what it does, in order:
a fresh virtual environment, ``pip install -r binder/requirements.txt``, ``postBuild``
from the repository root, then the quickstart notebook top to bottom on that
environment's kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"

pytestmark = [pytest.mark.slow, pytest.mark.kernel]


def test_binder_files_follow_the_conventions() -> None:
    assert (BINDER / "runtime.txt").read_text().strip().startswith("python-3.")
    post_build = (BINDER / "postBuild").read_text().splitlines()
    assert post_build[0].startswith("#!") and "set -e" in post_build[:4]
    assert os.access(BINDER / "postBuild", os.X_OK)
    requirements = [
        line.strip()
        for line in (BINDER / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    unpinned = [line for line in requirements if "==" not in line]
    assert unpinned == [], f"Binder requirements must be pinned: {unpinned}"


def test_a_fresh_binder_environment_runs_the_quickstart(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path / "home"),
        "VIRTUAL_ENV": str(venv),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_PREFER_ENV_PATH": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("PYTHONPATH", None)
    (tmp_path / "home").mkdir()

    def run(*cmd: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, (
            f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        return done

    run(
        str(bin_dir / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "-r",
        str(BINDER / "requirements.txt"),
    )
    run("bash", str(BINDER / "postBuild"))
    out = tmp_path / "quickstart-out.ipynb"
    run(
        str(bin_dir / "jupyter"),
        "nbconvert",
        "--to",
        "notebook",
        "--execute",
        f"--output={out}",
        str(ROOT / "notebooks" / "01-quickstart.ipynb"),
        timeout=300,
    )
    executed = json.loads(out.read_text())
    errors = [
        o
        for c in executed["cells"]
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o["output_type"] == "error"
    ]
    assert errors == []
    text = json.dumps(executed)
    assert "haiku" in text.lower()
