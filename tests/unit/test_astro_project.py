"""The checks the Astro CLI makes on this project, reproduced without Docker or the CLI.

Each check follows the CLI's own source (astronomer/astro-cli at commit ed93cc59, release v1.45.0):

- ``cmd/utils/utils.go`` ``EnsureProjectDir`` / ``config/config.go`` ``IsProjectDir``: every ``astro dev``
  command stops with "this is not an Astro project directory" unless ``.astro/config.yaml`` exists.
- ``docker/parse.go`` ``GetImageTagFromParsedFile``: the first ``FROM`` instruction's first argument is
  parsed as an image reference (``github.com/distribution/reference``); an unparsable one (``${ARG}``)
  gives no tag, and standalone mode stops with "could not determine runtime version from Dockerfile".
  ``pkg/airflowrt/dockerfile.go`` then splits ``-python-X.Y`` off the tag and wants ``X.Y-Z``.
- ``pkg/airflowrt/scaffold.go``: ``astro dev init`` writes ``packages.txt``, ``requirements.txt``,
  ``.dockerignore`` (``pkg/airflowrt/include/dockerignore``) and, for Airflow 3,
  ``tests/dags/test_dag_example.py`` (``pkg/airflowrt/include/airflow3/dagexampletest.py``).
- The runtime's ``ONBUILD COPY packages.txt .`` and ``ONBUILD COPY requirements.txt .`` need both files in
  the build context (a missing one fails the build).
"""

from __future__ import annotations

import hashlib
import re
import tomllib

import pytest
import yaml

from tests.conftest import ROOT
from tests.unit.test_packaging import docker_ignores

#: Runtime release → (Airflow version, Python variants), from the runtime catalog the CLI reads
#: (https://updates.astronomer.io/astronomer-runtime, as cut into astro-cli's
#: pkg/runtimeversions/testdata/catalog.json on 2026-09-25). The default variant of every 3.3 release is
#: Python 3.14; none ships Python 3.11.
RUNTIME_CATALOG: dict[str, tuple[str, tuple[str, ...]]] = {
    "3.3-1": ("3.3.0", ("3.12", "3.13", "3.14")),
    "3.3-2": ("3.3.0", ("3.12", "3.13", "3.14")),
    "3.3-8": ("3.3.2", ("3.12", "3.13", "3.14")),
}
#: ``pkg/airflowrt/include/dockerignore``, the ``.dockerignore`` that ``astro dev init`` writes.
SCAFFOLD_DOCKERIGNORE = [
    "astro",
    ".git",
    ".env",
    "airflow_settings.yaml",
    "logs/",
    ".venv",
    "airflow.db",
    "airflow.cfg",
]
#: sha256 of ``pkg/airflowrt/include/airflow3/dagexampletest.py`` (the Airflow 3 template DAG test).
TEMPLATE_DAG_TEST_SHA256 = "8732b081a173269e9820c2af19382071ce493f2886c2870101e8ed337bffb95f"
#: sha256 of ``pkg/airflowrt/include/airflow3/dagintegritytestdefault.py`` (what ``astro dev parse`` runs,
#: from ``.astro/test_dag_integrity_default.py``).
TEMPLATE_PARSE_TEST_SHA256 = "b1c4cd80dfa696b1994c31439bd7312ece0b5fafcc68c0d7242684599281eda3"
#: The one change Airflow 3.3.2 forces on those templates: ``DagBag`` lost ``include_examples``.
TEMPLATE_ADAPTATION = (
    "DagBag(include_examples=False)",
    "DagBag()  # Airflow 3.3.2: DagBag(include_examples=...) is gone",
)

# The grammar of github.com/distribution/reference (reference.go): [domain/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)


def dockerfile_instructions(text: str) -> list[tuple[str, list[str]]]:
    """Split a Dockerfile into (instruction, arguments) the way BuildKit's parser does for plain lines.

    Comment lines are dropped, ``\\`` continues a line, flags (``--platform=...``) are not arguments.

    :param text: The Dockerfile.
    """
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        word, _, rest = line.partition(" ")
        out.append((word.lower(), [arg for arg in rest.split() if not arg.startswith("--")]))
    return out


def cli_image_tag(text: str) -> tuple[str, str]:
    """``GetImageTagFromParsedFile``: (image, tag) of the first ``FROM``; ("", "") when unparsable.

    :param text: The Dockerfile.
    """
    for instruction, args in dockerfile_instructions(text):
        if instruction == "from" and args:
            match = REFERENCE.fullmatch(args[0])
            if match is None:
                return "", ""
            return match["name"], match["tag"] or "latest"
    return "", ""


def runtime_tag_python(tag: str) -> tuple[str, str]:
    """``ParseRuntimeTagPython``: split a runtime tag into its base tag and the ``-python-X.Y`` suffix.

    :param tag: The image tag.
    """
    match = re.search(r"-python-(\d+\.\d+)(-base)?$", tag)
    base, python = (tag[: match.start()], match[1]) if match else (tag, "")
    return base.removesuffix("-base").removesuffix("-slim"), python


def locked_version(package: str) -> str:
    """The version ``requirements.lock`` pins for ``package``.

    :param package: Distribution name.
    """
    (version,) = re.findall(rf"^{re.escape(package)}==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    return version


def test_the_project_check_of_every_astro_dev_command_passes() -> None:
    config = ROOT / ".astro" / "config.yaml"
    assert config.is_file()
    assert yaml.safe_load(config.read_text())["project"]["name"]


def test_the_cli_reads_a_pinned_airflow_3_runtime_from_the_dockerfile() -> None:
    image, tag = cli_image_tag((ROOT / "Dockerfile").read_text())
    base, python = runtime_tag_python(tag)

    assert image == "astrocrpublic.azurecr.io/runtime"
    assert re.match(r"^\d+\.\d+-\d+", base), f"{tag!r} is not a pinned runtime (X.Y-Z)"
    assert base.startswith("3."), "not an Airflow 3 runtime"
    assert python, "no -python-X.Y variant: the runtime's default Python would be used"


def test_the_cli_parser_rejects_a_from_through_an_arg() -> None:
    """The reproduction catches what the CLI refused in the previous Dockerfile."""
    old = "ARG ASTRO_RUNTIME_IMAGE=astrocrpublic.azurecr.io/runtime:3.3-2\nFROM ${ASTRO_RUNTIME_IMAGE}\n"
    assert cli_image_tag(old) == ("", "")
    assert cli_image_tag("# c\nFROM --platform=linux/amd64 quay.io/astronomer/astro-runtime:12.7.1 AS base\n") == (
        "quay.io/astronomer/astro-runtime",
        "12.7.1",
    )
    assert runtime_tag_python("3.1-12-python-3.11-base") == ("3.1-12", "3.11")


def test_the_runtime_ships_the_tested_airflow_and_a_supported_python() -> None:
    from packaging.specifiers import SpecifierSet

    _, tag = cli_image_tag((ROOT / "Dockerfile").read_text())
    base, python = runtime_tag_python(tag)
    airflow, pythons = RUNTIME_CATALOG[base]
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])

    assert airflow == locked_version("apache-airflow") == "3.3.2"
    assert python in pythons
    assert requires.contains(f"{python}.0")
    # The nearest variant to the tests' Python: no variant of this runtime is older.
    assert python == min(pythons, key=lambda v: tuple(map(int, v.split("."))))


def test_the_onbuild_files_are_in_the_build_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    for name in ("packages.txt", "requirements.txt"):
        assert (ROOT / name).is_file(), f"ONBUILD COPY {name} . would fail"
        assert not docker_ignores(name, patterns), name
    # requirements.txt is installed before the project is copied in: no local paths or editables.
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line.startswith(("-e", ".", "/", "file:"))] == []
    # packages.txt holds Debian package names only (empty: this project needs none).
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", line) for line in (ROOT / "packages.txt").read_text().split())


def test_dockerignore_is_the_scaffolds_plus_build_leftovers_and_keeps_what_the_image_installs() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    assert patterns[: len(SCAFFOLD_DOCKERIGNORE)] == SCAFFOLD_DOCKERIGNORE
    for path in (".git/HEAD", ".env", "airflow_settings.yaml", "logs/x.log", "airflow.db", "dist/x.whl"):
        assert docker_ignores(path, patterns), path
    # `pip install /usr/local/airflow` builds the project: its metadata files and the package must be there.
    needed = ["pyproject.toml", "README.md", "LICENSE", "plugins/coinstats_provider/__init__.py", "dags/x.py"]
    assert [path for path in needed if docker_ignores(path, patterns)] == []


@pytest.mark.parametrize(
    ("path", "uses", "sha256"),
    [
        ("tests/dags/test_dag_example.py", 2, TEMPLATE_DAG_TEST_SHA256),
        (".astro/test_dag_integrity_default.py", 1, TEMPLATE_PARSE_TEST_SHA256),
    ],
)
def test_the_template_tests_are_shipped_changed_only_where_airflow_3_3_2_broke_them(
    path: str, uses: int, sha256: str
) -> None:
    shipped = (ROOT / path).read_text()
    new, old = TEMPLATE_ADAPTATION[1], TEMPLATE_ADAPTATION[0]
    assert shipped.count(new) == uses
    assert hashlib.sha256(shipped.replace(new, old).encode()).hexdigest() == sha256
    # The parse test reads this file unconditionally (it fails with a NameError without it).
    assert (ROOT / ".astro" / "dag_integrity_exceptions.txt").is_file()
