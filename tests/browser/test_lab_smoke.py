"""The browser harness itself works: JupyterLab starts, a kernel runs a cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jupyterlab import LabPage, write_notebook

pytestmark = pytest.mark.browser


def test_a_cell_runs_in_a_real_jupyterlab(lab_page: LabPage, lab_root: Path) -> None:
    write_notebook(lab_root / "smoke.ipynb", ["import sys; print('kernel', sys.executable)"])
    lab_page.open("smoke.ipynb")
    lab_page.run_cell_and_wait(0)
    assert "kernel" in lab_page.output_text(0)
    lab_page.screenshot("lab-smoke")
