"""The Dockerfile, checked without a Docker engine: what it copies and runs exists, the package its
build stage makes holds the CLI and the deployments, and its entrypoint script dispatches as the
image's users (operator, Prefect worker, flow-run container) need."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            found[current] = []
        elif current is not None:
            found[current].append((word, rest))
    return found


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern of .dockerignore wins (``!`` re-includes)."""
    ignored = False
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path.split("/")[0], pattern):
            ignored = not negate
    return ignored


def test_two_stages_and_a_runtime_without_root() -> None:
    built = stages()
    assert list(built) == ["build", "runtime"]
    runtime = built["runtime"]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(word == "RUN" and "useradd" in rest and users[-1] in rest.split() for word, rest in runtime)
    # the user is set after every RUN of the stage, before the entrypoint
    words = [word for word, _ in runtime]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    assert words.index("USER") < words.index("ENTRYPOINT")
    # the runtime stage takes the wheels from the build stage, which makes them there
    assert any("from=build,source=/wheels" in rest for word, rest in runtime if word == "RUN")
    assert any("--wheel-dir /wheels" in rest for word, rest in built["build"] if word == "RUN")


def test_what_the_dockerfile_copies_exists_and_is_not_dockerignored() -> None:
    copied = []
    for word, rest in instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        copied += args[:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    assert dockerignored("tests") and dockerignored(".venv") and dockerignored("bench")


def test_extras_python_and_entrypoint_match_the_package() -> None:
    extras = {e for group in re.findall(r"\[([\w,]+)\]", " ".join(rest for word, rest in instructions() if word == "RUN"))
              for e in group.split(",")}
    assert {"dask", "releases"} <= extras <= set(PYPROJECT["project"]["optional-dependencies"])
    version = re.search(r"ARG PYTHON_VERSION=(\d+)\.(\d+)", DOCKERFILE)
    assert version
    minimum = re.search(r">=\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum and tuple(map(int, version.groups())) >= tuple(map(int, minimum.groups()))
    entrypoint = dict(instructions())["ENTRYPOINT"]
    script = entrypoint.strip('[]"')
    assert any(word == "COPY" and rest.endswith(f"/usr/local/bin/{script}") for word, rest in instructions())
    assert os.access(REPO / "deployments" / script, os.X_OK)
    assert PYPROJECT["project"]["scripts"]["projmig"] == "flows.cli:app"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["--help"], "Move an osparc-simcore project"),  # CMD: projmig --help
        (["config-template"], '"prefect_secret": "destination-db-password"'),
        (["prefect", "version"], "Version:"),  # what a Prefect worker or flow-run container starts
        (["python", "-m", "deployments.serve", "--help"], "--pool"),
    ],
)
def test_the_entrypoint_runs_projmig_or_the_command_given(command: list[str], expected: str) -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["sh", str(REPO / "deployments" / "docker-entrypoint.sh"), *command],
                            capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout


def test_the_build_stage_package_holds_the_cli_flows_and_deployments(tmp_path: Path) -> None:
    built = subprocess.run([str(BIN / "python"), "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("projmig-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("flows/cli.py", "flows/migrate.py", "flows/tasks.py", "flows/rollback.py", "deployments/serve.py", "projmig/settings.py",
                   "projmig/sandbox/simcore_fixture.sql"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "projmig = flows.cli:app" in entry_points
