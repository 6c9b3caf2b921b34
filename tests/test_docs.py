"""The manual (README.md and docs/*.md) says what is true today.

- Its generated parts (docs/configuration.md, docs/table-rules.md) are up to date, and every setting
  and every table rule is in them.
- Every path, module, `projmig` option and relative link it names exists; architecture.md's tables
  name every module of projmig/ and flows/.
- Every example runs as written. A page's fenced blocks run in order, in a directory of the page's
  own, against deployments of the page's own on the session's servers (fresh databases and buckets,
  the two sample studies below seeded in the source) and the session's Prefect API. Before each block
  the directory holds the cfg.json of the README's first migration, edited for those deployments:
  ``projmig config-template``'s output with their connections, credentials as ``{"env": ...}``
  references (set in the block's environment) and the study chosen. What a block does to the
  deployments stays for the page's next blocks. ``bash`` blocks run with ``bash -e -o pipefail``,
  ``python`` blocks with the venv's Python; both must exit 0. ``json`` blocks are cfg.json, whole or in
  part: merged into that cfg.json they must load. ``text`` blocks are output, never commands. A
  ``bash`` or ``python`` block that cannot run here says why in the line right above it,
  ``<!-- not run: <reason> -->``; any other block the test cannot run fails it.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from flows.cli import app
from projmig import docs
from projmig.choices import RunChoices
from projmig.sandbox import Sandbox
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.schema import TABLE_RULES
from projmig.settings import DatabaseSettings, HostSettings, MigrationOptions, MigrationSettings, S3Settings, template

from .conftest import SessionPrefectApi, Simcore, Templates, make_simcore

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
BIN = Path(sys.executable).parent

# the examples' studies: SampleSpec(seed=1) and (seed=2) give these uuids, as the docs write them
STUDY = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"  # with one hidden job project, 1e2feb89-...
OTHER_STUDY = "d95bafc8-f2a4-427b-9cf4-bb99f4bea973"
# what the cfg.json's credential references name (projmig config-template's names)
SECRET_NAMES = {("source", "db"): "SOURCE_DB_PASSWORD", ("source", "s3"): "SOURCE_S3_SECRET_KEY",
                ("destination", "db"): "DESTINATION_DB_PASSWORD", ("destination", "s3"): "DESTINATION_S3_SECRET_KEY"}
# what each library and flow call of an example returns (``NAME = asyncio.run(call(...))``)
RETURNS = {
    "commands.migrate": "projmig.report.MigrationReport",
    "migrate_project": "projmig.report.MigrationReport",
    "commands.rollback": "projmig.rollback.RollbackResult",
    "rollback_migration": "projmig.rollback.RollbackResult",
    "commands.verify": "projmig.verify.VerifyReport",
    "commands.plan": "builtins.tuple",
    "commands.cleanup": "builtins.list",
}
# paths the docs name that a run writes (`make bench`), not the repository
WRITTEN_BY_RUNS = {"bench/results/latest.json", "bench/results/latest.png"}
RUN_PAGES_AT_ONCE = 3  # pages side by side: their blocks wait on servers much of the time (3: ~40 % less wall time than 2 here)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# -- the pages' parts -----------------------------------------------------------------------------


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    code: str
    not_run: str | None  # the reason given right above it

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->$")


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
        above = NOT_RUN.match(lines[i - 1].strip()) if i > 0 else None
        found.append(Block(page, i + 1, opening.group(1), "\n".join(lines[i + 1:end]) + "\n", above and above.group(1)))
        i = end + 1
    return found


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return re.sub(r"^```.*?^```$", "", page.read_text(), flags=re.DOTALL | re.MULTILINE)


def code_spans(page: Path) -> list[str]:
    """The page's inline code, each span on one line (a span may wrap)."""
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose(page))]


def code_lines(page: Path) -> list[str]:
    """Every line of the page's bash blocks, and every inline code span: where commands are written."""
    return [line for b in blocks(page) if b.lang == "bash" for line in b.code.splitlines()] + code_spans(page)


# -- generated parts, settings, tables -------------------------------------------------------------


def check(docs_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "projmig.docs", "--check", "--docs", str(docs_dir)],
                          capture_output=True, text=True, timeout=60)


def test_the_generated_reference_and_rules_are_up_to_date() -> None:
    result = check(DOCS)
    assert result.returncode == 0, result.stderr  # fix: python -m projmig.docs


def test_every_setting_and_table_is_documented() -> None:
    reference = (DOCS / "configuration.md").read_text()
    sections = [(DatabaseSettings, "{SOURCE,DESTINATION}__DB"), (S3Settings, "{SOURCE,DESTINATION}__S3"),
                (RunChoices, "CHOICES"), (HostSettings, "HOST"), (MigrationOptions, "OPTIONS")]
    for model, prefix in sections:
        for name, field_ in model.model_fields.items():
            assert f"| `{name}` |" in reference and f"`PROJMIG_{prefix}__{name.upper()}`" in reference, (model, name)
            if field_.description:
                assert " ".join(field_.description.split()).replace("|", "\\|") in reference, (model, name)
    rules = (DOCS / "table-rules.md").read_text()
    for table in TABLE_RULES:
        assert f"| `{table}` |" in rules, table


def test_a_stale_page_is_found_and_regenerated(tmp_path: Path) -> None:
    for page in ("configuration.md", "table-rules.md"):
        (tmp_path / page).write_text((DOCS / page).read_text())
    reference = tmp_path / "configuration.md"
    reference.write_text(reference.read_text().replace("| `dry_run` | boolean | `false` |", "| `dry_run` | boolean | `true` |"))
    rules = tmp_path / "table-rules.md"
    rules.write_text(rules.read_text().replace("| `projects_to_jobs` | copied |", "| `projects_to_jobs` | left behind |"))
    stale = check(tmp_path)
    assert stale.returncode == 1, stale.stderr
    assert "'config' is out of date" in stale.stderr and "'table-rules' is out of date" in stale.stderr
    assert "python -m projmig.docs" in stale.stderr

    outside = "hand-written text outside the markers stays as it is"
    reference.write_text(reference.read_text() + f"\n{outside}\n")
    assert docs.main(["--docs", str(tmp_path)]) == 0
    assert check(tmp_path).returncode == 0
    assert reference.read_text().replace(f"\n{outside}\n", "") == (DOCS / "configuration.md").read_text()
    assert rules.read_text() == (DOCS / "table-rules.md").read_text()


# -- what the pages name exists ---------------------------------------------------------------------


def test_the_readme_is_a_front_door() -> None:
    """At most ~250 lines, and it leads to every page of the manual."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)[)#]", text))
    assert linked == {rel(page) for page in DOCS.glob("*.md")}


PATH = re.compile(r"(?<![\w./$-])((?:projmig|flows|deployments|bench|tests)/[\w./*-]*[\w*/])")


def test_every_path_named_exists() -> None:
    missing = []
    for page in PAGES:
        for path in sorted(set(PATH.findall(page.read_text()))):
            there = any(REPO.glob(path.rstrip("/"))) if "*" in path else (REPO / path).exists()
            if not there and path not in WRITTEN_BY_RUNS:
                missing.append(f"{rel(page)}: {path}")
    assert missing == []


def resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attribute in parts[cut:]:
                found = getattr(found, attribute)
        except AttributeError:
            return False
        return True
    return False


def test_every_python_name_named_exists() -> None:
    """``projmig.settings.resolve_secrets``, ``flows.migrate.migrate_project``, ``python -m deployments.serve``:
    each a module or a name in one (a renamed function leaves no stale name behind)."""
    dotted = re.compile(r"(?<![\w.])((?:projmig|flows|deployments|bench)(?:\.[A-Za-z_]\w*)+)")
    missing = [f"{rel(page)}: {name}" for page in PAGES
               for name in sorted({n for line in code_lines(page) for n in dotted.findall(line)}) if not resolves(name)]
    assert missing == []


def test_architecture_names_every_module_in_its_tables() -> None:
    rows = [line for line in (DOCS / "architecture.md").read_text().splitlines() if line.startswith("| `")]
    named = {re.match(r"\| `([^`]+)`", row).group(1) for row in rows}  # type: ignore[union-attr]
    modules = [m for pattern in ("projmig/*.py", "projmig/sandbox/*.py", "flows/*.py") for m in REPO.glob(pattern)
               if m.name != "__init__.py"]
    assert sorted(rel(m) for m in modules if rel(m) not in named) == []


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(page), flags=re.MULTILINE)}


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"\w+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{rel(page)}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{rel(page)}: {target} (no such heading)")
    assert broken == []


COMMANDS = {name: command for name, command in get_command(app).commands.items()}  # type: ignore[attr-defined]


def options_in_help(command: str) -> set[str]:
    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    return set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", shown.output))


def test_every_projmig_option_named_exists() -> None:
    """``projmig <command> ... --<option>``, in a bash block or an inline code span: the command
    exists, and the option is in its ``--help``."""
    helps = {name: options_in_help(name) for name in COMMANDS}
    wrong = []
    for page in PAGES:
        for line in code_lines(page):
            for found in re.finditer(r"(?:^|[\s$(])projmig\s+([a-z][\w-]*)(.*)", line):
                command, rest = found.groups()
                if command not in COMMANDS:
                    if found.start() == 0 or line[:found.start()].strip() in ("", "$"):
                        wrong.append(f"{rel(page)}: projmig {command}: no such command")
                    continue
                rest = re.split(r"\s#|\||&&|;|>|`", rest)[0]
                for option in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", rest):
                    if option not in helps[command]:
                        wrong.append(f"{rel(page)}: projmig {command} {option}")
    assert wrong == []


# -- the examples ---------------------------------------------------------------------------------


RUN_PYTHON = r"""
import ast, json, sys
path, record = sys.argv[1], sys.argv[2]
source = open(path).read()
namespace = {"__name__": "__main__", "__file__": path}
exec(compile(source, path, "exec"), namespace)
returned = []
for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "asyncio.run":
        value = namespace[node.targets[0].id]
        returned.append({"call": ast.unparse(node.value.args[0].func),
                         "type": f"{type(value).__module__}.{type(value).__qualname__}"})
json.dump(returned, open(record, "w"))
"""


def asyncio_runs(code: str) -> tuple[int, int]:
    """(``asyncio.run`` calls, those assigned to one name, calling a function)."""
    tree = ast.parse(code)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "asyncio.run"]
    assigned = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.value in calls and len(n.targets) == 1
                and isinstance(n.targets[0], ast.Name) and n.value.args and isinstance(n.value.args[0], ast.Call)]
    return len(calls), len(assigned)


def deep_merge(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``part``'s fields on top, section by section (a credential reference is a value)."""
    merged = dict(base)
    for key, value in part.items():
        section = isinstance(value, dict) and isinstance(base.get(key), dict) and not {"env", "prefect_secret"} & set(value)
        merged[key] = deep_merge(base[key], value) if section else value
    return merged


def test_every_block_can_be_run_or_says_why_not() -> None:
    """Each block is of a kind the example test runs or checks, or says why it cannot run here."""
    wrong = []
    for page in PAGES:
        for block in blocks(page):
            if block.not_run is not None:
                if block.lang not in ("bash", "python"):
                    wrong.append(f"{block.where}: `not run` on a {block.lang or 'plain'} block")
            elif block.lang == "python":
                calls, assigned = asyncio_runs(block.code)
                if calls != assigned:
                    wrong.append(f"{block.where}: write `result = asyncio.run(call(...))`, so that what it returns is checked")
            elif block.lang == "json":
                try:
                    MigrationSettings.parse(deep_merge(page_config(None, None), json.loads(block.code)),
                                            origin=block.where, require_projects=False)
                except Exception as exc:
                    wrong.append(f"{block.where}: not a cfg.json (or part of one) that loads: {exc}")
            elif block.lang == "text":
                commands = [line for line in block.code.splitlines()
                            if re.match(r"\s*(\$ |projmig |python |prefect |make |docker )", line)]
                if commands:
                    wrong.append(f"{block.where}: a text block is output; commands go in a bash block: {commands[0]}")
            elif block.lang != "bash":
                wrong.append(f"{block.where}: a ```{block.lang} block: give it a language the test runs "
                             "(bash, python), checks (json) or shows (text), or <!-- not run: why --> above it")
    assert wrong == []


@dataclass
class Ids:
    alice: int  # the studies' owner in the source
    carol: int  # the destination owner


def page_config(env: Simcore | None, ids: Ids | None) -> dict[str, Any]:
    """The README's first migration: ``projmig config-template``, edited for ``env``'s deployments (with
    ``ids``: the study and its destination owner chosen; without: the template's placeholders)."""
    cfg = template()
    if env is None or ids is None:
        return cfg
    for side in ("source", "destination"):
        db: DatabaseSettings = getattr(env, f"{side}_db")
        s3: S3Settings = getattr(env, f"{side}_s3")
        cfg[side]["db"].update(host=db.host, port=db.port, user=db.user, database=db.database,
                               password={"env": SECRET_NAMES[side, "db"]})
        cfg[side]["s3"].update(endpoint=s3.endpoint, region=s3.region, provider=s3.provider.value,
                               access_key=s3.access_key.get_secret_value(),  # type: ignore[union-attr]
                               secret_key={"env": SECRET_NAMES[side, "s3"]}, bucket=s3.bucket)
    cfg["choices"].update(first_migration()["choices"])
    return cfg


def first_migration() -> dict[str, Any]:
    """The README's cfg.json of a first migration (its json block with ``choices``)."""
    (cfg,) = [json.loads(b.code) for b in blocks(README) if b.lang == "json" and "choices" in json.loads(b.code)]
    return cfg


@dataclass
class Ran:
    block: Block
    seconds: float
    returncode: int | None = None  # None: not run
    output: str = ""
    returned: list[dict[str, str]] = field(default_factory=list)  # a python block's asyncio.run results


async def run_page(page: Path, workdir: Path, sandbox: Sandbox, templates: dict[str, Templates]) -> list[Ran]:
    runnable = [b for b in blocks(page) if b.lang in ("bash", "python") and b.not_run is None]
    if not runnable:
        return []
    env = await make_simcore(sandbox, templates, "fixture")
    ids = Ids(alice=env.alice, carol=env.carol)
    try:
        for seed in (1, 2):
            study = await build_sample_project(env.source_db, env.source_s3, owner_id=ids.alice, spec=SampleSpec(
                files=3, file_size=16 * 1024, directory_objects=2, multipart_size=0, hidden_children=1 if seed == 1 else 0,
                child_files=1, seed=seed, name="Sample study" if seed == 1 else "Another study"))
            assert study.uuid == (STUDY if seed == 1 else OTHER_STUDY)
        chosen = first_migration()["choices"]
        assert (chosen["project_uuid"], chosen["destination_user_id"]) == (STUDY, ids.carol)  # what the examples move
        secrets = {name: getattr(env, f"{side}_{kind}").password.get_secret_value() if kind == "db"
                   else getattr(env, f"{side}_{kind}").secret_key.get_secret_value()
                   for (side, kind), name in SECRET_NAMES.items()}
        import prefect.settings

        process_env = {k: v for k, v in os.environ.items() if not k.startswith("PROJMIG_")} | secrets | {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_API_URL": str(prefect.settings.PREFECT_API_URL.value()),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "COLUMNS": "100",
        }
        ran = []
        for number, block in enumerate(runnable):
            (workdir / "cfg.json").write_text(json.dumps(page_config(env, ids), indent=2))
            record = workdir / f".returned-{number}.json"
            if block.lang == "bash":
                command = ["bash", "-e", "-o", "pipefail", "-c", block.code]
            else:
                script = workdir / f"example-{number}.py"
                script.write_text(block.code)
                command = [str(BIN / "python"), "-c", RUN_PYTHON, str(script), str(record)]
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *command, cwd=workdir, env=process_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                output, _ = await asyncio.wait_for(process.communicate(), timeout=300)
            except TimeoutError:
                process.kill()
                output, _ = await process.communicate()
            result = Ran(block, time.monotonic() - started, process.returncode, output.decode(errors="replace"))
            if block.lang == "python" and record.exists():
                result.returned = json.loads(record.read_text())
            ran.append(result)
            if result.returncode != 0:
                break  # the page's next blocks build on this one
        return ran
    finally:
        await sandbox.source.drop_database(env.source_db.database or "")
        await sandbox.destination.drop_database(env.destination_db.database or "")


@pytest.fixture(scope="module")
async def examples(
    sandbox: Sandbox, templates: dict[str, Templates], prefect_session_api: SessionPrefectApi,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[Path, list[Ran]]:
    """Every page's examples run (pages side by side, each on deployments of its own)."""
    pages_at_once = asyncio.Semaphore(RUN_PAGES_AT_ONCE)

    async def one(page: Path) -> list[Ran]:
        async with pages_at_once:
            return await run_page(page, tmp_path_factory.mktemp(f"docs-{page.stem}"), sandbox, templates)

    with prefect_session_api.in_use():
        results = dict(zip(PAGES, await asyncio.gather(*(one(page) for page in PAGES))))
    for page, ran in results.items():  # shown with -s
        if ran:
            print(f"\n{rel(page)}: {len(ran)} blocks in {sum(r.seconds for r in ran):.1f} s "
                  f"({', '.join(f'{r.seconds:.1f}' for r in ran)})", end="")
    return results


# the tests that read the examples' results share one worker: each worker would run all examples
# (~85 s of CLI processes) for the module fixture of its own
ON_ONE_WORKER = pytest.mark.xdist_group("docs-examples")


@ON_ONE_WORKER
@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_example_runs_as_written(page: Path, examples: dict[Path, list[Ran]]) -> None:
    runnable = [b for b in blocks(page) if b.lang in ("bash", "python") and b.not_run is None]
    ran = examples[page]
    for result in ran:
        assert result.returncode == 0, (
            f"{result.block.where} ({result.block.lang}) exited {result.returncode}:\n{result.block.code}\n--- output:\n{result.output}")
        for returned in result.returned:
            expected = RETURNS.get(returned["call"])
            assert expected is not None, f"{result.block.where}: what does {returned['call']} return? (add it to RETURNS)"
            assert returned["type"] == expected, f"{result.block.where}: {returned['call']} returned a {returned['type']}"
    assert len(ran) == len(runnable)


@ON_ONE_WORKER
def test_a_plain_python_call_of_the_library_and_of_the_flow_returns_a_report(examples: dict[Path, list[Ran]]) -> None:
    """running.md's examples: ``asyncio.run(commands.migrate(settings))`` and
    ``asyncio.run(migrate_project(settings))``, each in a plain Python process, return the report."""
    returned = {r["call"]: r["type"] for ran in examples[DOCS / "running.md"] for r in ran.returned}
    assert returned.get("commands.migrate") == returned.get("migrate_project") == "projmig.report.MigrationReport", returned

