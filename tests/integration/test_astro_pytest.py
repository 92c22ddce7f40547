"""What ``astro dev pytest`` runs inside the runtime image: ``pytest tests/`` without the dev-only packages.

The CLI (astro-cli ``airflow/docker_image.go`` ``Pytest``) creates a container from the project image,
copies ``dags``, ``tests``, ``plugins``, ``include`` and ``.astro`` into ``/usr/local/airflow`` and runs
``pytest tests/`` there. The image has Airflow, this provider and ``requirements.txt``, but none of the
test-only packages of ``requirements-dev.in``. Here the same command runs with those packages hidden from
the import system, which is as close to the image as this machine gets without Docker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEV_ONLY_MODULES, ROOT

pytestmark = pytest.mark.slow

HIDE_AND_RUN = """
import importlib.abc, sys
hidden = set(sys.argv[1].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Hide())
import pytest
sys.exit(pytest.main(["tests/", "-p", "no:asyncio", "-p", "no:cacheprovider", "-rA"]))
"""


def test_astro_dev_pytest_runs_the_image_tests_and_they_pass() -> None:
    done = subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, ",".join(DEV_ONLY_MODULES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "collecting only tests/dags/" in out
    ran = {line.split("::", 1)[0].split(" ", 1)[1] for line in out.splitlines() if line.startswith("PASSED ")}
    assert ran == {"tests/dags/test_dag_example.py"}, ran
    summary = out.strip().splitlines()[-1]
    assert "passed" in summary, summary
    assert "failed" not in summary, summary
    assert "error" not in summary, summary


def test_astro_dev_parse_runs_the_integrity_test_and_it_passes(tmp_path: Path) -> None:
    """``astro dev parse`` runs ``pytest .astro/test_dag_integrity_default.py`` in the image (a fresh DB)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins")]),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", ".astro/test_dag_integrity_default.py", "-p", "no:cacheprovider", "-rA"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    passed = [line for line in out.splitlines() if line.startswith("PASSED ")]
    # The template iterates ``dag_bag.dags`` (DAG ids) and makes each relative to AIRFLOW_HOME: keep the last part.
    assert {Path(line.split("[", 1)[1].rsplit("]", 1)[0]).name for line in passed} == {
        "coinstats_connect_accounts",
        "coinstats_portfolio_report",
        "coinstats_portfolio_sync",
    }, passed
