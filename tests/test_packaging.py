"""The extras keep the kernel side and the front end apart (README, "Where it works").

``pip install "pk-notebook[notebook]"`` goes where the kernel runs, which on Colab or a hub is a
managed environment: it must accept the ipykernel and IPython already there (Colab's are the
oldest we support) and must not bring JupyterLab. ``[lab]`` is the front end ``make lab`` runs.
The kernel-side claims are also proved by installing the extra into Colab's kernel
(tests/notebook/test_ipykernel6_env.py); these checks are the quick, always-run version.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from .envs import COLAB_IPYKERNEL, COLAB_IPYTHON

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
SERVER_SIDE = {"jupyterlab", "notebook", "jupyter-server", "jupyterlab-server", "nbclassic"}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _extra(name: str) -> dict[str, Requirement]:
    return {_name(r): Requirement(r) for r in EXTRAS[name]}


def test_the_kernel_extra_accepts_colabs_kernel() -> None:
    notebook = _extra("notebook")
    assert notebook["ipykernel"].specifier.contains(Version(COLAB_IPYKERNEL))
    assert notebook["ipython"].specifier.contains(Version(COLAB_IPYTHON))


def test_no_kernel_side_extra_brings_a_server() -> None:
    for extra in ("notebook", "all"):
        names = {_name(r) for r in EXTRAS[extra]}
        assert names & SERVER_SIDE == set(), extra


def test_the_lab_extra_is_jupyterlab_with_both_widget_front_ends() -> None:
    assert {"jupyterlab", "jupyterlab-widgets", "anywidget"} <= set(_extra("lab"))


def test_test_and_dev_install_both_sides() -> None:
    (itself,) = [r for r in EXTRAS["test"] if r.startswith("pk-notebook[")]
    # every library feature, the front end, and what the tutorials show (figures, frames)
    assert set(itself[len("pk-notebook[") : -1].split(",")) == {"all", "lab", "examples"}
    assert any(r.startswith("pk-notebook[test]") for r in EXTRAS["dev"])


def test_the_license_is_an_spdx_expression_with_a_backend_that_reads_it() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    setuptools = next(
        Requirement(r) for r in PYPROJECT["build-system"]["requires"] if _name(r) == "setuptools"
    )
    # PEP 639 license strings without a deprecation warning: setuptools >= 77.
    assert not setuptools.specifier.contains(Version("76.9"))
    assert setuptools.specifier.contains(Version("77.0.0"))


def test_binder_pins_every_package_of_both_sides() -> None:
    pinned = {
        _name(line.split("==")[0])
        for line in (ROOT / "binder" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    wanted = set(_extra("notebook")) | set(_extra("lab"))
    assert wanted - pinned == set()


def test_the_readme_install_lines_name_the_split_extras() -> None:
    readme = (ROOT / "README.md").read_text()
    assert 'pip install "pk-notebook[notebook]"' in readme
    assert 'pip install "pk-notebook[notebook,lab]"' in readme
    assert 'pip install "pk-notebook[lab]"' in readme
