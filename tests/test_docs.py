"""The README's configuration reference and table rules are generated from the code, and stay so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from projmig import docs
from projmig.schema import TABLE_RULES
from projmig.settings import DatabaseSettings, MigrationOptions, S3Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def check(readme: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "projmig.docs", "--check", "--readme", str(readme)],
                          capture_output=True, text=True, timeout=60)


def test_the_readme_reference_and_rules_are_up_to_date() -> None:
    result = check(README)
    assert result.returncode == 0, result.stderr  # fix: python -m projmig.docs


def test_every_setting_and_table_is_in_the_readme() -> None:
    text = README.read_text()
    for model, prefix in ((MigrationOptions, "OPTIONS"), (DatabaseSettings, "{SOURCE,DESTINATION}__DB"), (S3Settings, "{SOURCE,DESTINATION}__S3")):
        for name, field in model.model_fields.items():
            assert f"| `{name}` |" in text and f"PROJMIG_{prefix}__{name.upper()}" in text
            if field.description:
                assert " ".join(field.description.split()).replace("|", "\\|") in text
    for table in TABLE_RULES:
        assert f"| `{table}` |" in text


def test_a_stale_readme_is_found_and_regenerated(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text().replace("| `dry_run` | boolean | `false` |", "| `dry_run` | boolean | `true` |"))
    stale = check(readme)
    assert stale.returncode == 1 and "'config' is out of date" in stale.stderr
    assert "python -m projmig.docs" in stale.stderr

    outside = "hand-written text outside the markers stays as it is"
    readme.write_text(readme.read_text() + f"\n{outside}\n")
    assert docs.main(["--readme", str(readme)]) == 0
    assert check(readme).returncode == 0
    assert outside in readme.read_text()
    assert readme.read_text().replace(f"\n{outside}\n", "") == README.read_text()


def test_the_readme_names_every_prefect_module_and_only_files_that_exist() -> None:
    """"How a migration runs" lists each module of ``flows/`` with its job; every source path the
    README names is there (a module moved or renamed leaves no stale name behind)."""
    text = README.read_text()
    repo = README.parent
    for module in sorted((repo / "flows").glob("*.py")):
        if module.name != "__init__.py":
            assert f"| `flows/{module.name}` |" in text, module.name
    named = set(re.findall(r"`((?:projmig|flows|deployments|bench|tests)/[\w/]+\.py)", text))
    assert "flows/copying.py" in named and "projmig/report.py" in named
    assert sorted(path for path in named if not (repo / path).is_file()) == []
