"""The Dockerfile's own step, without Docker: install the project folder as the image would.

Astro Runtime's ONBUILD copies the build context (minus ``.dockerignore``) to ``/usr/local/airflow``; the
Dockerfile then runs ``pip install --no-deps /usr/local/airflow``. Here the same non-editable install of a
copy of the tracked files goes into a target folder (with uv, as everywhere in this project), and the
result must be a provider distribution Airflow can discover. Building the image itself needs a Docker
engine and the Astro base image, which this test does not have.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.test_astro_project import cli_image_tag

pytestmark = pytest.mark.slow

DIST = "airflow-provider-coinstats"


def context_files() -> list[Path]:
    """The tracked files Docker would send as build context (``.dockerignore`` applied)."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    files = []
    for name in listed.splitlines():
        parts = Path(name).parts
        if any(
            fnmatch.fnmatch(part, pattern) or fnmatch.fnmatch(name, pattern) for pattern in ignore for part in parts
        ):
            continue
        files.append(Path(name))
    return files


def uv() -> list[str]:
    """The uv the Makefile uses (``$(PYTHON) -m uv``)."""
    python = os.environ.get("PYTHON") or shutil.which("python3") or sys.executable
    return [python, "-m", "uv"]


def test_dockerfile_installs_the_project_as_a_registered_provider(tmp_path: Path) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert cli_image_tag(dockerfile)[1].startswith("3."), "not an Airflow 3 runtime"
    assert "RUN pip install --no-cache-dir --no-deps /usr/local/airflow" in dockerfile

    context = tmp_path / "usr-local-airflow"
    for name in context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    assert not (context / ".venv").exists()
    site = tmp_path / "site-packages"

    subprocess.run(
        [*uv(), "pip", "install", "-q", "--no-deps", "--python", sys.executable, "--target", str(site), str(context)],
        check=True,
        capture_output=True,
        text=True,
    )

    assert (site / "coinstats_provider" / "py.typed").is_file()
    assert (site / "coinstats_provider" / "get_provider_info.py").is_file()
    (dist_info,) = site.glob("airflow_provider_coinstats-*.dist-info")
    metadata = (dist_info / "METADATA").read_text()
    assert f"Name: {DIST}" in metadata
    entry_points = configparser.ConfigParser()
    entry_points.read(dist_info / "entry_points.txt")
    assert entry_points["apache_airflow_provider"]["provider_info"] == (
        "coinstats_provider.get_provider_info:get_provider_info"
    )
    # What Airflow reads through that entry point, from the installed copy, not from plugins/.
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "import coinstats_provider.get_provider_info as m; "
        "assert m.__file__.startswith(sys.argv[1]), m.__file__; "
        "print(json.dumps(m.get_provider_info()))"
    )
    shown = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, check=True)
    info = json.loads(shown.stdout)
    assert info["package-name"] == DIST
    assert {c["connection-type"] for c in info["connection-types"]} == {
        "coinstats",
        "coinstats_exchange",
        "coinstats_wallet",
    }
