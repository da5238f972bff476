"""scripts/install.sh picks an environment pip may install into; scripts/run runs commands in it.

The externally managed interpreter is simulated for real: a copy of this Python's executable
whose stdlib folder (symlinks to the real one) holds an ``EXTERNALLY-MANAGED`` file, so pip
itself refuses to install into it (checked), exactly as on Debian's and Ubuntu's python3.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def managed_python(tmp_path_factory) -> Path:
    """An interpreter that pip treats as externally managed (PEP 668)."""
    root = tmp_path_factory.mktemp("managed")
    stdlib = Path(sysconfig.get_path("stdlib"))
    exe = Path(os.path.realpath(sys.executable))
    (root / "bin").mkdir()
    lib = root / "lib" / stdlib.name
    lib.mkdir(parents=True)
    for entry in stdlib.iterdir():
        (lib / entry.name).symlink_to(entry)
    (lib / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=use a venv\n")
    shutil.copy2(exe, root / "bin" / "python3")
    py = root / "bin" / "python3"
    prefix = subprocess.run([py, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    if prefix.returncode != 0 or Path(prefix.stdout.strip()) != root:
        pytest.skip(f"this Python cannot be relocated for the simulation: {prefix.stderr[-200:]}")
    return py


def _install(python: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": str(python), "VDIFF_VENV": str(tmp_path / "venv")}
    env["VDIFF_ENV_FILE"] = str(tmp_path / "record")
    for key in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        env.pop(key, None)
    cmd = ["bash", str(REPO / "scripts" / "install.sh"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _run(tmp_path: Path, *cmd: str) -> str:
    env = {**os.environ, "VDIFF_ENV_FILE": str(tmp_path / "record")}
    out = subprocess.run([str(REPO / "scripts" / "run"), *cmd], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_simulated_interpreter_is_refused_by_pip(managed_python, tmp_path):
    import pip

    # NOTE: Debian keeps pip outside the stdlib (and a venv keeps it in its own site-packages):
    # lend the simulated interpreter the running pip, which then judges that interpreter.
    (tmp_path / "pip").symlink_to(Path(pip.__file__).parent)
    out = subprocess.run(
        [managed_python, "-m", "pip", "install", "--dry-run", "--no-index", "vdiff-no-such-package"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert out.returncode != 0 and "externally-managed-environment" in out.stderr


def test_an_externally_managed_python_gets_a_project_venv(managed_python, tmp_path):
    res = _install(managed_python, tmp_path, "--print-env")
    assert res.returncode == 0, res.stderr
    venv_python = tmp_path / "venv" / "bin" / "python"
    assert Path(res.stdout.strip()) == venv_python
    assert "externally managed" in res.stderr
    # pip may install into what install.sh chose ...
    dry = subprocess.run(
        [venv_python, "-m", "pip", "install", "--dry-run", "--no-index", "vdiff-no-such-package"],
        capture_output=True,
        text=True,
    )
    assert "externally-managed-environment" not in dry.stderr
    # ... and scripts/run puts it first on PATH, so `python3` and console scripts resolve there.
    assert _run(tmp_path, "python3", "-c", "import sys; print(sys.prefix)") == str(tmp_path / "venv")
    # A second run reuses the venv.
    again = _install(managed_python, tmp_path, "--print-env")
    assert Path(again.stdout.strip()) == venv_python and "creating" not in again.stderr


def test_a_python_that_allows_installs_is_used_as_is(tmp_path):
    res = _install(Path(sys.executable), tmp_path, "--print-env")
    assert res.returncode == 0, res.stderr
    assert os.path.realpath(res.stdout.strip()) == os.path.realpath(sys.executable)
    assert not (tmp_path / "venv").exists()
    assert _run(tmp_path, "python3", "-c", "import sys; print(sys.prefix)") == sys.prefix


def test_an_active_venv_is_used_even_on_a_managed_base(managed_python, tmp_path):
    env_dir = tmp_path / "myenv"
    subprocess.run([managed_python, "-m", "venv", "--without-pip", env_dir], check=True)
    res = _install(env_dir / "bin" / "python", tmp_path, "--print-env")
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == env_dir / "bin" / "python"
    assert not (tmp_path / "venv").exists()


def test_unknown_options_are_refused(tmp_path):
    res = _install(Path(sys.executable), tmp_path, "--devv")
    assert res.returncode == 2 and "unknown option --devv" in res.stderr


def _python_with_torch(tmp_path: Path, version: str) -> Path:
    """This Python, seeing a stand-in ``torch`` package of ``version`` (a GPU machine's pre-installed one)."""
    site = tmp_path / f"torch-{version}"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    wrapper = tmp_path / f"python-torch-{version}"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _pyproject_torch_bound() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'"torch>=([0-9.]+)"', text).group(1)


@pytest.mark.parametrize("version", ["2.5.1+cu121", "2.8.0", "1.13.1"])
def test_a_torch_older_than_vdiff_needs_is_refused_before_anything_is_installed(
    tmp_path, version, monkeypatch
):
    # NOTE: should the check let it through, pip refuses too (no venv, no index): nothing is installed
    monkeypatch.setenv("PIP_REQUIRE_VIRTUALENV", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    res = _install(_python_with_torch(tmp_path, version), tmp_path)  # a real install run, not --print-env
    need = _pyproject_torch_bound()
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and f"torch {version}" in lines[0]
        and f"older than vdiff needs (>= {need})" in lines[0]
    )
    assert "pip install 'torch>=" in lines[0]
    assert not (tmp_path / "record").exists() and "installing" not in res.stdout  # stopped before pip


@pytest.mark.parametrize("version", ["2.9.0+cu128", "2.13.0", "3.0.0"])
def test_a_recent_enough_torch_passes_the_check(tmp_path, version):
    res = _install(_python_with_torch(tmp_path, version), tmp_path, "--print-env")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and (tmp_path / "record").is_file()


def test_install_sh_and_pyproject_name_the_same_torch_bound():
    script = (REPO / "scripts" / "install.sh").read_text()
    assert re.search(r'^TORCH_MIN="([0-9.]+)"', script, re.M).group(1) == _pyproject_torch_bound() == "2.9"
