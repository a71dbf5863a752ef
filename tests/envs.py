"""Extra virtual environments for the setups users really have, built once and reused.

The project's own ``.venv`` holds everything at its newest: JupyterLab, every widget front end
and ipykernel 7.4. Most users are not there (NOTES.md section 8): on JupyterHub, with conda
kernels or in VS Code the front end runs in one environment and the kernel in another, and
Colab's kernel is ipykernel 6.17.1 with IPython 7.34.0. The tests for those setups need
environments that really lack what the users lack, so this module builds them:

``SERVER_WITHOUT_ANYWIDGET``  a JupyterLab server with ``jupyterlab_widgets`` but without
                              anywidget (so without its labextension): a hub whose admin
                              installed ipywidgets' front end only.
``SERVER_WITHOUT_WIDGETS``    a JupyterLab server with no widget front end at all.
``KERNEL_IPYKERNEL6``         Colab's kernel: ipykernel 6.17.1 and IPython 7.34.0 installed
                              first, then ``pip install -e ".[notebook]"`` the way a user
                              adds the project to a managed kernel (which must not upgrade
                              either of them).

Each is a virtual environment under ``.venv-envs/<name>`` (``PK_NOTEBOOK_ENVS_DIR`` moves
it), with pinned versions so a run is reproducible. A stamp file records what it was built
from; the next run reuses it when the stamp matches (a local re-run costs nothing) and rebuilds
it when the pins, the Python or the project's kernel-side requirements change. CI starts from
a fresh checkout and builds them (``python -m tests.envs`` builds all three and prints how
long each took). A file lock per environment keeps two test runs from building one at once.

Environments are created without pip and filled by this interpreter's pip (``pip --python``):
one pip version for all of them, the same one ``make`` uses, and no pip download per venv.

Pytest fixtures (import them into a conftest to use them; tests/notebook and tests/browser do):

``ipykernel6_env``     session: the ``KERNEL_IPYKERNEL6`` ``VirtualEnv``.
``ipykernel6_kernels`` session: a folder of kernelspecs holding ``IPYKERNEL6_KERNEL``, whose
                       argv runs that environment's Python (pass it to a server's data dir
                       or to ``KernelSpecManager(kernel_dirs=[...])``).
``old_kernel``         module: a running ipykernel 6 kernel with ``%load_ext pk_notebook``
                       done, as a ``tests.notebook.conftest.KernelSession`` (``run``, ``ok``,
                       ``click``, ``value``: the same API as the ``kernel`` fixture).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = Path(os.environ.get("PK_NOTEBOOK_ENVS_DIR") or ROOT / ".venv-envs")
STAMP = ".pk-env-stamp.json"
# Bump when the way environments are built changes, so every cached one is rebuilt.
BUILD_FORMAT = 1

# The JupyterLab of the split-server environments: the version .venv runs, so a difference in
# behaviour comes from what is missing, not from another JupyterLab.
JUPYTERLAB = "jupyterlab==4.6.6"
JUPYTERLAB_WIDGETS = "jupyterlab_widgets==3.0.17"

# Colab's kernel, as google-colab 1.0.0 pins it in 2025-26 (README, "Where it works").
COLAB_IPYKERNEL = "6.17.1"
COLAB_IPYTHON = "7.34.0"

IPYKERNEL6_KERNEL = "pk-ipykernel6"


@dataclass(frozen=True)
class EnvSpec:
    """What one extra environment holds.

    ``requirements`` are installed first, in one pip call (the platform the user already has).
    ``project_extra``, when set, then installs this checkout editable with that extra, in a
    second pip call and without constraints on what the first call installed, exactly as a
    user's ``pip install "pk-notebook[notebook]"`` would run in that environment; the versions
    of ``constraints`` (other packages) are pinned for reproducibility.
    """

    name: str
    purpose: str
    requirements: tuple[str, ...]
    project_extra: str | None = None
    constraints: tuple[str, ...] = ()

    def key(self) -> str:
        """A hash of everything the environment is built from (its stamp)."""
        parts: dict[str, Any] = {
            "format": BUILD_FORMAT,
            "python": sys.version,
            "spec": [self.name, self.requirements, self.project_extra, self.constraints],
        }
        if self.project_extra:
            # The editable install points at this checkout: another checkout sharing
            # PK_NOTEBOOK_ENVS_DIR must not reuse it.
            parts["checkout"] = str(ROOT)
            try:
                import tomllib
            except ImportError:  # Python 3.10: the whole file decides instead
                parts["project"] = (ROOT / "pyproject.toml").read_text()
                return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
            # What the editable install is built from; not pytest's or ruff's settings.
            pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
            parts["project"] = [
                pyproject.get("build-system"),
                pyproject.get("project"),
                pyproject.get("tool", {}).get("setuptools"),
            ]
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


SERVER_WITHOUT_ANYWIDGET = EnvSpec(
    name="server-without-anywidget",
    purpose="JupyterLab with jupyterlab_widgets but not anywidget's front end",
    requirements=(JUPYTERLAB, JUPYTERLAB_WIDGETS),
)
SERVER_WITHOUT_WIDGETS = EnvSpec(
    name="server-without-widgets",
    purpose="JupyterLab without any widget front end (no jupyterlab_widgets)",
    requirements=(JUPYTERLAB,),
)
KERNEL_IPYKERNEL6 = EnvSpec(
    name="kernel-ipykernel6",
    purpose=f"Colab's kernel: ipykernel {COLAB_IPYKERNEL}, IPython {COLAB_IPYTHON}, "
    'then pip install -e ".[notebook]"',
    requirements=(f"ipykernel=={COLAB_IPYKERNEL}", f"ipython=={COLAB_IPYTHON}"),
    project_extra="notebook",
    constraints=("ipywidgets==8.1.9", "anywidget==0.11.0", "markdown-it-py==4.3.0"),
)
ALL_ENVS = (SERVER_WITHOUT_ANYWIDGET, SERVER_WITHOUT_WIDGETS, KERNEL_IPYKERNEL6)


@dataclass
class VirtualEnv:
    """A built environment. ``build_seconds`` is 0 when a cached one was reused."""

    spec: EnvSpec
    path: Path
    build_seconds: float = 0.0
    reused: bool = False
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.path.with_name(self.path.name + ".log")

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.path / "bin" / name

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run this environment's Python with ``args``; raises with its output on failure.

        It runs in the environment's folder: from the repository root, ``python -c`` would see
        the checkout's ``pk_notebook`` (and its egg-info) whether or not it is installed.
        """
        done = subprocess.run(
            [str(self.python), *args],
            cwd=self.path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            output = done.stdout[-3000:] + done.stderr[-3000:]
            raise RuntimeError(f"{self.python} {' '.join(args)} failed:\n{output}")
        return done

    def versions(self) -> dict[str, str]:
        """Every installed distribution and its version, by normalised name."""
        code = (
            "import importlib.metadata as m, json, re\n"
            "print(json.dumps({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower(): d.version"
            " for d in m.distributions()}))"
        )
        return dict(json.loads(self.run("-c", code).stdout))

    def version(self, name: str) -> str | None:
        return self.versions().get(name.replace("_", "-").lower())


def clean_env() -> dict[str, str]:
    """The environment for pip and tools in an extra venv: nothing leaks in from this one."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    return env


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    ENVS_DIR.mkdir(parents=True, exist_ok=True)
    with (ENVS_DIR / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pip(venv: VirtualEnv, *args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--python", str(venv.python), "install", *args]
    with venv.log.open("a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(
            cmd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, timeout=900, cwd=ROOT
        )
    if done.returncode:
        tail = venv.log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"building {venv.spec.name} failed (log: {venv.log}):\n{tail}")


def ensure_env(spec: EnvSpec) -> VirtualEnv:
    """The environment for ``spec``, built now unless a matching one is cached.

    The stamp is written last, so an interrupted build is never mistaken for a finished one.
    """
    path = ENVS_DIR / spec.name
    key = spec.key()
    with _locked(spec.name):
        venv = VirtualEnv(spec, path)
        with contextlib.suppress(OSError, ValueError):
            stamp = json.loads((path / STAMP).read_text())
            if stamp.get("key") == key and venv.python.exists():
                venv.reused = True
                return venv
        started = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)
        venv.log.write_text(f"building {spec.name}: {spec.purpose}\n")
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(path)],
            check=True,
            env=clean_env(),
            timeout=120,
        )
        _pip(venv, "--quiet", *spec.requirements)
        if spec.project_extra:
            constraints = path / "constraints.txt"
            constraints.write_text("".join(f"{c}\n" for c in spec.constraints))
            _pip(venv, "--quiet", "-c", str(constraints), "-e", f"{ROOT}[{spec.project_extra}]")
        venv.build_seconds = time.monotonic() - started
        (path / STAMP).write_text(
            json.dumps(
                {
                    "key": key,
                    "name": spec.name,
                    "seconds": round(venv.build_seconds, 1),
                    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            )
        )
        return venv


def write_kernelspec(kernels_dir: Path, name: str, python: Path | str, display_name: str) -> Path:
    """A kernelspec ``kernels_dir/name`` that runs ipykernel in ``python``'s environment.

    ``kernels_dir`` is a ``kernels`` folder: a server's ``$JUPYTER_DATA_DIR/kernels``, or a
    folder given to ``KernelSpecManager(kernel_dirs=[...])``. With JUPYTER_PREFER_ENV_PATH=0
    (NOTES.md section 7) a spec in the data dir wins over a server environment's own ``python3``.
    """
    spec_dir = kernels_dir / name
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": display_name,
                "language": "python",
                "metadata": {"debugger": False},
            },
            indent=1,
        )
    )
    return spec_dir


def start_kernel_session(kernel_name: str, kernels_dir: Path, home: Path) -> Any:
    """A ``tests.notebook.conftest.KernelSession`` on kernelspec ``kernel_name`` from
    ``kernels_dir`` (the ``kernel`` fixture's class, so tests use one API for every kernel).

    KernelSession starts the default ``python3`` spec in its constructor; this fills in the
    same two attributes (``km``, ``kc``) for another spec instead of changing that class.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from .notebook.conftest import KernelSession, kernel_env

    session = KernelSession.__new__(KernelSession)
    session.km = KernelManager(
        kernel_name=kernel_name,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]),
    )
    session.km.start_kernel(env=kernel_env(home))
    session.kc = session.km.client()
    session.kc.start_channels()
    try:
        session.kc.wait_for_ready(timeout=60)
    except Exception:
        session.close()
        raise
    return session


# --- pytest fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ipykernel6_env() -> VirtualEnv:
    """Colab's kernel environment (``KERNEL_IPYKERNEL6``), built or reused."""
    return ensure_env(KERNEL_IPYKERNEL6)


@pytest.fixture(scope="session")
def ipykernel6_kernels(
    ipykernel6_env: VirtualEnv, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A ``kernels`` folder holding the ``IPYKERNEL6_KERNEL`` spec."""
    kernels = tmp_path_factory.mktemp("ipykernel6_data") / "kernels"
    write_kernelspec(
        kernels, IPYKERNEL6_KERNEL, ipykernel6_env.python, f"Python (ipykernel {COLAB_IPYKERNEL})"
    )
    return kernels


@pytest.fixture(scope="module")
def old_kernel(ipykernel6_kernels: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running ipykernel 6.17.1 kernel with ``%load_ext pk_notebook`` done (one per module).

    The same ``KernelSession`` API as the ``kernel`` fixture: ``run``/``ok`` execute code
    (``interactive=True`` is what JupyterLab sends), ``click`` clicks a widget button.
    """
    session = start_kernel_session(
        IPYKERNEL6_KERNEL, ipykernel6_kernels, tmp_path_factory.mktemp("old_kernel_home")
    )
    try:
        session.ok("%load_ext pk_notebook", interactive=False)
        yield session
    finally:
        session.close()


def main() -> int:
    """``python -m tests.envs``: build (or reuse) every extra environment and say how long."""
    total = time.monotonic()
    for spec in ALL_ENVS:
        venv = ensure_env(spec)
        how = "reused" if venv.reused else f"built in {venv.build_seconds:.1f} s"
        print(f"{spec.name}: {how} ({venv.path})", flush=True)
    print(f"extra environments ready in {time.monotonic() - total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
