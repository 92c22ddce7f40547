"""The published artefacts: sdist and wheel build, pass ``twine check``, and the wheel works on its own.

The build runs on a copy of the tracked files (a build in the worktree would leave an ``*.egg-info`` in
``plugins/``). The wheel goes into a clean virtualenv with ``requirements.lock`` as constraints, through
uv and its cache (offline when the cache holds every locked file), and ``airflow providers list`` in that
virtualenv must show the provider.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.test_dockerfile import uv

pytestmark = pytest.mark.slow

DIST = "airflow-provider-coinstats"


def tracked_copy(target: Path) -> Path:
    """Copy every tracked file of the repository to ``target``.

    :param target: An empty folder.
    """
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def uv_env() -> dict[str, str]:
    """The environment with the Makefile's uv first on ``PATH`` (``python -m build --installer uv`` needs it)."""
    found = subprocess.run(
        [*uv()[:-2], "-c", "import uv; print(uv.find_uv_bin())"], capture_output=True, text=True, check=True
    )
    return {**os.environ, "PATH": f"{Path(found.stdout.strip()).parent}{os.pathsep}{os.environ['PATH']}"}


def uv_install(*args: str) -> None:
    """``uv pip install`` from the cache alone when it can, else from the registry.

    :param args: Arguments after ``uv pip install``.
    """
    offline = subprocess.run([*uv(), "pip", "install", "-q", "--offline", *args], capture_output=True, text=True)
    if offline.returncode != 0:
        subprocess.run([*uv(), "pip", "install", "-q", *args], capture_output=True, text=True, check=True)


def test_sdist_and_wheel_build_pass_twine_and_the_wheel_registers_the_provider(tmp_path: Path) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    source = tracked_copy(tmp_path / "src")
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--installer", "uv", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        env=uv_env(),
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    assert wheel.name == f"airflow_provider_coinstats-{project['version']}-py3-none-any.whl"

    twine = subprocess.run(
        [str(Path(sys.executable).parent / "twine"), "check", "--strict", str(sdist), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert twine.returncode == 0, twine.stdout + twine.stderr
    assert twine.stdout.count("PASSED") == 2

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"airflow_provider_coinstats-{project['version']}.dist-info/METADATA").decode()
    assert f"airflow_provider_coinstats-{project['version']}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata
    assert "coinstats_provider/py.typed" in names
    assert not [name for name in names if name.startswith(("tests/", "dags/", "include/"))]
    with tarfile.open(sdist) as archive:
        members = {
            Path(name).relative_to(f"airflow_provider_coinstats-{project['version']}").as_posix()
            for name in archive.getnames()
            if "/" in name
        }
    assert {"LICENSE", "README.md", "pyproject.toml", "plugins/coinstats_provider/get_provider_info.py"} <= members

    venv = tmp_path / "venv"
    subprocess.run([*uv(), "venv", "-q", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    uv_install("--python", str(venv / "bin" / "python"), "-c", str(ROOT / "requirements.lock"), str(wheel))
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "PYTHONPATH"))}
    shown = subprocess.run(
        [str(venv / "bin" / "airflow"), "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**env, "AIRFLOW_HOME": str(home)},
    )
    providers = {item["package_name"]: item for item in json.loads(shown.stdout)}
    assert providers[DIST]["version"] == project["version"]
    # The installed copy, not this checkout, answered.
    located = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import coinstats_provider as p; print(p.__file__, p.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    )
    where, version = located.stdout.split()
    assert Path(where).is_relative_to(venv)
    assert version == project["version"]
