"""Airflow's plugin loader must not import the provider's modules a second time under bare names.

Airflow 3.3 imports every ``.py`` file under ``[core] plugins_folder`` as a top-level module named after the
file's stem (``_load_plugins_from_plugin_directory`` in ``airflow._shared.plugins_manager``), unless
``.airflowignore`` excludes it. Without ``plugins/.airflowignore`` every scheduler, API server and worker
held a second copy of each provider module (``coinstats``, ``exceptions``, ``credits``, ``sync``, ...),
with its own caches and its own exception classes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

PLUGINS = ROOT / "plugins"
PACKAGE = "coinstats_provider"

#: Runs in a fresh interpreter: import Airflow once, then per scenario fork a child that loads the plugins
#: the way every Airflow component does (``ensure_plugins_loaded``) and writes a report: each module in
#: ``sys.modules`` whose file lies in the scenario's package, the bare-name candidates found in
#: ``sys.modules``, and the plugins and import errors Airflow saw.
_PROBE = """
import json, os, sys, traceback
from pathlib import Path
from airflow import plugins_manager, settings


def modules_in(package):
    package = Path(package).resolve()
    found = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(package):
            found[name] = Path(file).resolve().relative_to(package).as_posix()
    return found


def report(package, candidates):
    found = modules_in(package)
    present = {}
    for name in candidates:
        file = getattr(sys.modules.get(name), "__file__", None)
        present[name] = None if file is None else str(Path(file).resolve())
    plugins, errors = plugins_manager._get_plugins()
    # plugins registered by installed distributions (entry points, e.g. OpenLineage's) are not the folder's
    folder = [p for p in plugins if "EntryPoint" not in type(getattr(p, "source", None)).__name__]
    return {"modules": found, "candidates": present, "plugins": sorted(p.name for p in folder), "errors": errors}


scenarios = json.loads(sys.argv[1])
for scenario in scenarios.values():
    early = [n for n in modules_in(scenario["package"]) if n.split(".")[0] != "coinstats_provider"]
    assert not early, f"bare provider modules before the plugins were loaded: {early}"
children = {}
for name, scenario in scenarios.items():
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            settings.PLUGINS_FOLDER = scenario["folder"]
            os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = scenario["folder"]
            os.environ["AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX"] = scenario["syntax"]
            plugins_manager.ensure_plugins_loaded()
            result = report(scenario["package"], scenario["candidates"])
            Path(scenario["out"]).write_text(json.dumps(result))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    children[pid] = name
failed = [name for pid, name in children.items() if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
sys.exit(f"scenarios failed: {failed}" if failed else 0)
"""


@dataclass(frozen=True)
class Scenario:
    """One plugin load: a plugins folder and the ignore-file syntax Airflow reads it with.

    :param folder: The folder set as ``[core] plugins_folder``.
    :param syntax: ``[core] dag_ignore_file_syntax`` (``glob`` or ``regexp``).
    """

    folder: Path
    syntax: str

    @property
    def package(self) -> Path:
        """The provider package inside ``folder``."""
        return self.folder / PACKAGE


def bare_names(package_dir: Path) -> set[str]:
    """Every name the plugin loader could give a provider module: its stem and its dotted sub-path.

    :param package_dir: The ``coinstats_provider`` directory.
    """
    names: set[str] = set()
    for file in package_dir.rglob("*.py"):
        relative = file.relative_to(package_dir).with_suffix("")
        parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
        names.add(file.stem)
        if parts:
            names.add(".".join(parts))
    return names


def load_plugins(scenarios: dict[str, Scenario], home: Path) -> dict[str, dict[str, Any]]:
    """Run ``scenarios`` in one fresh interpreter (Airflow imported once, one forked child each).

    :param scenarios: The loads to make, by name.
    :param home: An empty directory used as ``AIRFLOW_HOME``.
    :return: The report of each scenario, by name.
    """
    home.mkdir(parents=True, exist_ok=True)
    spec: dict[str, dict[str, Any]] = {
        name: {
            "folder": str(s.folder),
            "syntax": s.syntax,
            "package": str(s.package),
            "candidates": sorted(bare_names(s.package)),
            "out": str(home / f"{name}.json"),
        }
        for name, s in scenarios.items()
    }
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(spec)],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {name: json.loads(Path(item["out"]).read_text()) for name, item in spec.items()}


@pytest.fixture(scope="module")
def loads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Scenario, dict[str, Any]]]:
    """The three plugin loads these tests inspect, with their reports.

    ``repo``: this repository's ``plugins/``; ``unignored``: a copy without ``.airflowignore`` (the defect);
    ``site_regexp``: a copy with the ignore file plus a site plugin, under the ``regexp`` ignore syntax.
    """
    base = tmp_path_factory.mktemp("plugin_loading")
    unignored = copy_plugins(base / "unignored", with_ignore_file=False)
    site = copy_plugins(base / "site", with_ignore_file=True)
    (site / "site_plugin.py").write_text(
        "from airflow.plugins_manager import AirflowPlugin\n\n\n"
        "class SitePlugin(AirflowPlugin):\n"
        '    name = "site_plugin"\n'
    )
    scenarios = {
        "repo": Scenario(PLUGINS, "glob"),
        "unignored": Scenario(unignored, "glob"),
        "site_regexp": Scenario(site, "regexp"),
    }
    reports = load_plugins(scenarios, base / "home")
    return {name: (scenario, reports[name]) for name, scenario in scenarios.items()}


def provider_modules_under_bare_names(report: dict[str, Any], package: Path) -> dict[str, str]:
    """Return ``{module name: file}`` of provider modules not imported as ``coinstats_provider.*``.

    :param report: A report of ``load_plugins``.
    :param package: The package directory the report was made for.
    """
    modules: dict[str, str] = report["modules"]
    candidates: dict[str, str | None] = report["candidates"]
    bare = {name: file for name, file in modules.items() if name != PACKAGE and not name.startswith(f"{PACKAGE}.")}
    for name, file in candidates.items():
        if file is not None and Path(file).is_relative_to(package.resolve()):
            bare[name] = Path(file).resolve().relative_to(package.resolve()).as_posix()
    return bare


def copy_plugins(target: Path, *, with_ignore_file: bool) -> Path:
    """Copy the repository's ``plugins/`` (without caches and build metadata) to ``target``.

    :param target: Destination folder (must not exist).
    :param with_ignore_file: Keep ``.airflowignore`` in the copy.
    """
    skip = ["__pycache__", "*.egg-info"] + ([] if with_ignore_file else [".airflowignore"])
    shutil.copytree(PLUGINS, target, ignore=shutil.ignore_patterns(*skip))
    return target


def test_ignore_file_is_part_of_the_plugins_folder() -> None:
    assert (PLUGINS / ".airflowignore").is_file()


def test_plugin_loader_imports_no_provider_module_under_a_bare_name(
    loads: dict[str, tuple[Scenario, dict[str, Any]]],
) -> None:
    scenario, report = loads["repo"]

    assert provider_modules_under_bare_names(report, scenario.package) == {}
    assert report["errors"] == {}
    # The package is still importable by its full name: plugins/ stays on sys.path.
    assert PACKAGE in report["modules"]


def test_without_the_ignore_file_the_loader_duplicates_every_provider_module(
    loads: dict[str, tuple[Scenario, dict[str, Any]]],
) -> None:
    """The defect the ignore file fixes, shown on a copy of ``plugins/`` that lacks it."""
    scenario, report = loads["unignored"]

    bare = provider_modules_under_bare_names(report, scenario.package)

    # Every module file was executed again as a top-level module named after its stem.
    assert set(bare) == {file.stem for file in scenario.package.rglob("*.py")}
    assert {"exceptions", "credits", "models", "pipeline", "coinstats"} <= set(bare)


def test_ignore_file_works_with_regexp_syntax_and_skips_only_the_provider(
    loads: dict[str, tuple[Scenario, dict[str, Any]]],
) -> None:
    """Under ``dag_ignore_file_syntax = regexp`` too; a site plugin next to the provider still loads."""
    scenario, report = loads["site_regexp"]

    assert report["plugins"] == ["site_plugin"]
    assert report["errors"] == {}
    assert provider_modules_under_bare_names(report, scenario.package) == {}
