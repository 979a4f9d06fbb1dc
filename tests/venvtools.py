"""Real virtual environments for tests that pip-install plugin distributions.

The new environment gets this interpreter's import path through a ``.pth`` file (so
wyneos-core and its dependencies need no download), and ``pip install --no-deps
--no-build-isolation`` installs the distribution under test into it for real: its
metadata, entry points and files land in the new environment's site-packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

__all__ = ["make_dist", "make_venv", "pip_install", "run_in"]


def make_venv(root: Path) -> Path:
    """Create a venv at ``root``; return its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    paths = [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
    paths.append(sysconfig.get_paths()["purelib"])
    # the project itself (editable installs put it on the path via their own .pth)
    paths.append(str(Path(__file__).resolve().parents[1]))
    Path(purelib, "_parent_env.pth").write_text("\n".join(dict.fromkeys(paths)) + "\n")
    return python


def pip_install(python: Path, *targets: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         *map(str, targets)],
        check=True, capture_output=True, text=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )


def run_in(python: Path, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m wyneos_core.cli ARGS`` in the venv."""
    return subprocess.run([str(python), "-m", "wyneos_core.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def make_dist(root: Path, name: str, module: str, code: str) -> Path:
    """A one-module distribution ``name`` at ``root/name`` whose ``wyneos`` entry point
    ``name`` is ``module`` (with ``code``), for ``pip_install``."""
    dist = root / name
    dist.mkdir()
    (dist / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{name}"
        version = "1.0"

        [project.entry-points.wyneos]
        {name} = "{module}"
        """))
    (dist / f"{module}.py").write_text(code)
    return dist
