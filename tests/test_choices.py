"""A run's choices are defined once (projmig/choices.py): a choice added there reaches the CLI's
options, the flows' parameters, a deployment's defaults and the settings, with nothing else edited."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from projmig.choices import CHOICES, RunChoices
from projmig.settings import MigrationSettings, template

REPO = Path(__file__).resolve().parents[1]
NEW_CHOICE = '''
    note: Annotated[str | None, Choice("options.note", ("--note",), SELECTING, rollback=True)] = Field(
        None, description="a note that travels with the run")
'''
CHECK = r'''
import json, typer.testing
from flows.cli import app
from flows.migrate import migrate_project
from flows.rollback import rollback_migration
from deployments.serve import deployment_parameters
from projmig.settings import MigrationSettings, template

runner = typer.testing.CliRunner()
helps = {c: runner.invoke(app, [c, "--help"], env={"COLUMNS": "200"}).output for c in ("plan", "migrate", "verify", "rollback", "cleanup")}
data = template(); data["choices"]["note"] = "from the file"
settings = MigrationSettings.parse(data)
migrate, rollback = deployment_parameters(settings, ("src-block", "dst-block"))
print(json.dumps({
    "cli": {c: "--note" in h for c, h in helps.items()},
    "flow": migrate_project.parameters.properties.get("note", {}).get("description"),
    "rollback_flow": "note" in rollback_migration.parameters.properties,
    "deployment": [migrate.get("note"), rollback.get("note")],
    "settings": settings.with_choices(note="given").choices.note,
    "old_place": MigrationSettings.parse({**template(), "options": {"note": "old"}}).choices.note,
}))
'''


def test_a_choice_added_in_one_place_reaches_cli_flows_deployments_and_settings(tmp_path: Path) -> None:
    for package in ("projmig", "flows", "deployments"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    choices = tmp_path / "projmig" / "choices.py"
    anchor = "    @property\n    def projects(self)"
    text = choices.read_text()
    assert anchor in text
    choices.write_text(text.replace(anchor, NEW_CHOICE.lstrip("\n") + "\n" + anchor, 1))

    result = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "PREFECT_HOME": str(tmp_path / "prefect")})
    assert result.returncode == 0, result.stderr
    reached = json.loads(result.stdout.strip().splitlines()[-1])
    assert reached == {
        "cli": {"plan": True, "migrate": True, "verify": True, "rollback": True, "cleanup": True},
        "flow": "a note that travels with the run.",
        "rollback_flow": True,
        "deployment": ["from the file", "from the file"],
        "settings": "given",
        "old_place": "old",
    }


def test_every_choice_is_a_cli_option_or_says_why_not() -> None:
    """The choices without a CLI option are the old cfg.json's single project and owner (``--project``
    and ``--owner`` take one or many) and the destination owner's group (checked, never needed)."""
    assert {name for name, c in CHOICES.items() if not c.flags} == {"project_uuid", "source_owner_user_id", "destination_user_gid"}
    assert set(RunChoices.model_fields) == set(CHOICES)


def test_the_template_keeps_choices_in_their_own_section() -> None:
    data = template()
    assert set(data) == {"source", "destination", "choices", "host", "options"}
    assert json.loads(json.dumps(data["choices"]))["destination_user_id"] == 1
    assert MigrationSettings.parse(data).choices.destination_user_id == 1
