"""Packaging truths: the Python the code needs, one version source, what the image's build context holds."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet

import coinstats_provider
from tests.conftest import ROOT

PACKAGE_DIR = ROOT / "plugins" / "coinstats_provider"


def pyproject() -> dict[str, Any]:
    """The parsed ``pyproject.toml``."""
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data


def package_sources() -> dict[Path, str]:
    """Every Python file of the package and its text."""
    return {path: path.read_text() for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_requires_python_is_the_oldest_python_the_code_runs_on() -> None:
    config = pyproject()
    requires = SpecifierSet(config["project"]["requires-python"])
    # The package uses enum.StrEnum and datetime.UTC, both new in Python 3.11.
    sources = "\n".join(package_sources().values())
    assert "StrEnum" in sources
    assert re.search(r"\bUTC\b", sources)
    assert not requires.contains("3.10.14")
    assert requires.contains("3.11.0")
    # The linters check the same floor.
    assert config["tool"]["ruff"]["target-version"] == "py311"
    assert config["tool"]["mypy"]["python_version"] == "3.11"


def test_readme_states_the_minimum_python() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11+" in readme
    assert not re.search(r"Python 3\.10\b", readme)


def test_version_has_one_source_pyproject() -> None:
    version = pyproject()["project"]["version"]
    name = pyproject()["project"]["name"]

    assert name == coinstats_provider.DISTRIBUTION_NAME
    assert coinstats_provider.__version__ == importlib.metadata.version(name) == version
    for path, text in package_sources().items():
        assert f'"{version}"' not in text, f"version literal in {path}"
        assert f"'{version}'" not in text, f"version literal in {path}"


def test_version_without_the_installed_distribution_is_unknown(tmp_path: Path) -> None:
    """A plugins-folder-only deployment imports the package without its distribution metadata."""
    shutil.copytree(PACKAGE_DIR, tmp_path / "coinstats_provider", ignore=shutil.ignore_patterns("__pycache__"))
    code = "import sys; sys.path.insert(0, sys.argv[1]); import coinstats_provider as p; print(p.__version__)"
    # -I -S: no site-packages, no PYTHONPATH, so no installed distribution is visible.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == coinstats_provider.UNKNOWN_VERSION == "0+unknown"


def docker_ignores(path: str, patterns: list[str]) -> bool:
    """Tell whether Docker's ``.dockerignore`` semantics exclude ``path`` from the build context.

    A pattern is anchored at the context root; ``**`` matches any number of directories, ``*`` and ``?``
    stay within one path element; excluding a directory excludes everything below it.

    :param path: A path relative to the context root, with ``/`` separators.
    :param patterns: The ``.dockerignore`` lines (no negations).
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    for pattern in patterns:
        regex = ""
        for token in re.split(r"(\*\*/|/\*\*$|\*|\?)", pattern.strip("/")):
            regex += {"**/": "(?:[^/]+/)*", "/**": "(?:/.*)?", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            return True
    return False


def test_dockerignore_keeps_the_plugins_folder_and_drops_build_leftovers() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")]

    kept = ["plugins/.airflowignore", "pyproject.toml", "README.md", "Dockerfile"]
    kept += [path.relative_to(ROOT).as_posix() for path in package_sources()]
    assert [path for path in kept if docker_ignores(path, patterns)] == []
    # A stale egg-info in plugins/ would sit on sys.path in the image and report an old version.
    for leftover in (
        "plugins/airflow_provider_coinstats.egg-info/PKG-INFO",
        "plugins/coinstats_provider/hooks/__pycache__/coinstats.cpython-311.pyc",
        "build/lib/coinstats_provider/__init__.py",
        ".venv/bin/python",
    ):
        assert docker_ignores(leftover, patterns), leftover


def readme_tree() -> list[Path]:
    """The paths the README's "Where things are" tree lists (folders and ``.py`` files), from the repo root."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Where things are", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    stack: list[str] = []
    listed: list[Path] = []
    for line in block.splitlines():
        name = line.strip().split(" ", 1)[0]
        if not name or not (name.endswith("/") or name.endswith(".py") or name.startswith(".")):
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        del stack[depth:]
        listed.append(Path(*stack, name.rstrip("/")))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return listed


def test_readme_tree_lists_every_module_of_the_package_and_nothing_that_is_gone() -> None:
    listed = readme_tree()
    assert [path for path in listed if not (ROOT / path).exists()] == []
    modules = {
        path.relative_to(ROOT) for path in package_sources() if path.name != "__init__.py" or path.parent == PACKAGE_DIR
    }
    package = PACKAGE_DIR.relative_to(ROOT)
    assert {path for path in listed if path.suffix == ".py" and path.is_relative_to(package)} == modules
    assert Path("plugins/.airflowignore") in listed


def test_license_file_is_the_declared_licence_and_the_changelog_has_this_version() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(project['version'])}\]", changelog, re.M)
