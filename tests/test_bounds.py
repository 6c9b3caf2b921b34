"""What a deployment's runs may choose (projmig.bounds.RunBounds) and what a deployment run's settings
are built from (flows/credentials.py: the deployment's values only, no PROJMIG_* environment). The
same refusals on a real Prefect server and worker: tests/deployments/test_boundaries.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployments.serve import deployment_parameters
from flows.credentials import FIXED_PARAMETERS, refuse_outside_deployment
from projmig.bounds import OPEN_BY_DEFAULT, RunBounds, openable_options
from projmig.choices import CHOICES
from projmig.errors import ConfigError
from projmig.settings import HostSettings, MigrationOptions, MigrationSettings, resolve_secrets, template

STUDY = "cd613e30-d8f1-4adf-91b7-584a2265b1f5"
DEPLOYMENT = "migrate-project/osparc"
FIXED = {"source": "osparc-source", "destination": "osparc-destination", "host_block": "osparc-host",
         "destination_user_id": 7, "product_name": "osparc", "options": {"memory_limit": 100 * 2**20}}


def refusals(bounds: RunBounds, **run: object) -> list[str]:
    fixed_options = MigrationOptions.model_validate(FIXED["options"]).model_dump(mode="json")
    return bounds.refusals({**FIXED, "project_uuid": STUDY, **run}, FIXED, fixed_options, DEPLOYMENT)


def test_the_defaults_are_closed() -> None:
    bounds = RunBounds()
    assert bounds.choices == list(OPEN_BY_DEFAULT) and bounds.options == []
    # what a run may choose: its projects, hidden ones or not, a dry run
    assert refusals(bounds, project_uuids=[STUDY], include_hidden=True, dry_run=True) == []
    # everything else: its deployment's, each one line naming the deployment's own value, never the run's
    closed = {"destination_user_id": 8, "product_name": "s4l", "source_owner_user_id": 3, "uuid_policy": "new",
              "copy_label": "[red]x\ny", "destination_user_gid": 4, "source_owner_user_ids": [3, 5], "all_users": True,
              "match_users": "email", "user_map": {"a@x.io": "b@y.io"}, "skip_unmatched": True, "into_folder": "old",
              "keep_folders": True, "group_map": {"lab": "lab2"}}
    assert set(closed) == set(CHOICES) - set(OPEN_BY_DEFAULT)
    for name, value in closed.items():
        (line,) = refusals(bounds, **{name: value})
        assert line.startswith(f"{name}: fixed by {DEPLOYMENT} (") and "\n" not in line and "[red]" not in line
    assert refusals(bounds, destination_user_id=8)[0] == (
        f"destination_user_id: fixed by {DEPLOYMENT} (7); its runs choose project_uuid, project_uuids, include_hidden, dry_run")
    # a value given that is the deployment's own (or the default it leaves) is no change
    assert refusals(bounds, destination_user_id=7, uuid_policy="keep") == []
    # a run that drops a deployment's choice (null) changes it too
    assert refusals(bounds, destination_user_id=None) != []


@pytest.mark.parametrize("option, value", [
    ("allow_missing_objects", True), ("allow_schema_drift", True), ("verification", "etag"),
    ("task_runner", "dask"), ("s3_data_client", "botocore"), ("memory_limit", 50 * 2**20), ("copy_concurrency", 1),
])
def test_no_option_is_a_runs_unless_opened(option: str, value: object) -> None:
    (line,) = refusals(RunBounds(), options={option: value})
    assert line.startswith(f"options.{option}: fixed by {DEPLOYMENT} (")
    assert refusals(RunBounds(), options={"not_an_option": 1}) == ["options: a field that is not an option"]


def test_an_opened_option_goes_down_only() -> None:
    bounds = RunBounds(options=["memory_limit", "copy_concurrency"])
    assert refusals(bounds, options={"memory_limit": 50 * 2**20, "copy_concurrency": 4}) == []
    assert refusals(bounds, options={"memory_limit": 101 * 2**20}) == [
        f"options.memory_limit: at most {100 * 2**20} in a run of {DEPLOYMENT} (its own value)"]
    # the deployment's own value of an option it does not set is the option's default
    default = MigrationOptions().copy_concurrency
    assert refusals(bounds, options={"copy_concurrency": default + 1}) == [
        f"options.copy_concurrency: at most {default} in a run of {DEPLOYMENT} (its own value)"]
    assert refusals(bounds, options={"copy_concurrency": str(default)}) != [] and refusals(bounds, options={"copy_concurrency": True}) != []


def test_the_switches_cannot_be_opened() -> None:
    """The safety switches, verification and what runs the copies are a deployment's alone; an
    option that would let a run ask more than the deployment (a bool, a choice of code) neither."""
    assert set(openable_options()) == {name for name, f in MigrationOptions.model_fields.items() if f.annotation in (int, float)}
    for option in ("allow_missing_objects", "allow_schema_drift", "verification", "task_runner", "s3_data_client"):
        with pytest.raises(ValidationError, match=f"options\n  Value error, '{option}' is the deployment's alone"):
            RunBounds(options=[option])
    with pytest.raises(ValidationError, match="not choices: 'nope'"):
        RunBounds(choices=["nope"])
    with pytest.raises(ValidationError, match="destination_user_ids: destination_user_id is not open to runs"):
        RunBounds(destination_user_ids=[8])
    with pytest.raises(ValidationError, match="Extra inputs"):
        RunBounds.model_validate({"choices": [], "allow": "everything"})


def test_opened_owners_and_products_are_those_listed() -> None:
    bounds = RunBounds(choices=[*OPEN_BY_DEFAULT, "destination_user_id", "product_name"],
                       destination_user_ids=[8, 9], product_names=["s4l"])
    assert refusals(bounds, destination_user_id=8, product_name="s4l") == []
    assert refusals(bounds, destination_user_id=7, product_name="osparc") == []  # the deployment's own
    assert refusals(bounds, destination_user_id=10, product_name="tis") == [
        f"destination_user_id: {DEPLOYMENT} allows 7, 8, 9 only", f'product_name: {DEPLOYMENT} allows "osparc", "s4l" only']
    opened = RunBounds(choices=[*OPEN_BY_DEFAULT, "destination_user_id"])  # no list: any owner
    assert refusals(opened, destination_user_id=10) == []


def test_a_deployment_run_outside_its_deployment_is_one_error_naming_each_problem() -> None:
    bounds = RunBounds().model_dump(mode="json")
    fixed = {**FIXED, "bounds": bounds}
    assert refuse_outside_deployment({**fixed, "project_uuid": STUDY}, {}, fixed, {}, DEPLOYMENT) == RunBounds()
    for name in FIXED_PARAMETERS:
        with pytest.raises(ConfigError, match=f"parameter '{name}': fixed by {DEPLOYMENT}"):
            refuse_outside_deployment({**fixed, name: {"db": "elsewhere"}}, {}, fixed, {}, DEPLOYMENT)
    with pytest.raises(ConfigError) as caught:
        refuse_outside_deployment({**fixed, "destination_user_id": 8, "options": {"allow_missing_objects": True}},
                                  {"env": {"PROJMIG_DESTINATION__DB__DSN": "postgresql://x@y/z"}}, fixed, {}, DEPLOYMENT)
    assert caught.value.problems == [
        f"job variables: fixed by {DEPLOYMENT} (its work pool's and its own); a run sets none",
        f"destination_user_id: fixed by {DEPLOYMENT} (7); its runs choose project_uuid, project_uuids, include_hidden, dry_run",
        f"options.allow_missing_objects: fixed by {DEPLOYMENT} (false)",
    ]
    assert "\n" not in str(caught.value) and "postgresql" not in str(caught.value)
    # a deployment whose own bounds do not load refuses every run, saying where
    with pytest.raises(ConfigError, match=r"^migrate-project/osparc: bounds: choices: not choices: 'everything'$"):
        broken = {**fixed, "bounds": {"choices": ["everything"]}}
        refuse_outside_deployment(broken, {}, broken, {}, DEPLOYMENT)
    # the host's resources are a host block's, not a deployment parameter
    with pytest.raises(ConfigError, match="names its host's resources in a ProjmigHost block"):
        old = {**fixed, "host": {"dask_address": "tcp://scheduler:8786"}}
        refuse_outside_deployment(old, {}, old, {}, DEPLOYMENT)


ENVIRONMENT = {  # what a worker's environment (or a run's, through a pool left open) could hold
    "PROJMIG_DESTINATION__DB__DSN": "postgresql://simcore:x@attacker.example:5432/simcoredb",
    "PROJMIG_DESTINATION__S3": json.dumps({"endpoint": "https://attacker.example", "access_key": {"env": "AK"},
                                           "secret_key": {"env": "SK"}, "bucket": "attackers-bucket"}),
    "PROJMIG_HOST__DASK_ADDRESS": "tcp://attacker.example:8786",
    "PROJMIG_OPTIONS__DASK_ADDRESS": "tcp://attacker.example:8786",
    "PROJMIG_OPTIONS__ALLOW_MISSING_OBJECTS": "true",
}


def test_a_deployment_runs_settings_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = template()
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    # what the environment does to settings loaded for the CLI (its documented overrides)...
    read = MigrationSettings.model_validate(values)
    assert read.destination.s3.bucket == "attackers-bucket" and read.host.dask_address == "tcp://attacker.example:8786"
    # ...and to a deployment run's: nothing
    given = MigrationSettings.from_values(values)
    assert given.destination.s3.bucket == "simcore-aws" and given.destination.db.dsn is None
    assert given.host.dask_address is None and given.options.allow_missing_objects is False
    again = given.with_choices({"dry_run": True}).with_options(copy_concurrency=2)
    assert again.destination.s3.bucket == "simcore-aws" and again.host.dask_address is None


@pytest.mark.parametrize("address", ["tcp://scheduler:8786", "tls://10.0.0.5:8786", "tls://[fd00::5]:8786", "tcp://dask"])
def test_a_dask_address_is_tcp_or_tls(address: str) -> None:
    assert HostSettings(dask_address=address).dask_address == address


@pytest.mark.parametrize("address", ["http://scheduler:8786", "ucx://scheduler:8786", "tcp://", "tcp://a b:1", "scheduler:8786"])
def test_another_dask_address_is_refused(address: str) -> None:
    with pytest.raises(ValidationError, match="must be tcp://host:port or tls://host:port"):
        HostSettings(dask_address=address)


def test_osparcs_migrations_may_be_named_by_an_environment_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = template()
    values["host"]["schema_migrations"] = {"env": "OSPARC_POSTGRES_DATABASE"}
    for side, kind, field in (("source", "db", "password"), ("source", "s3", "secret_key"),
                              ("destination", "db", "password"), ("destination", "s3", "secret_key")):
        values[side][kind][field] = "value"
    settings = MigrationSettings.from_values(values)
    assert str(settings.host.schema_migrations) == "env:OSPARC_POSTGRES_DATABASE"  # shown by name
    monkeypatch.delenv("OSPARC_POSTGRES_DATABASE", raising=False)
    with pytest.raises(ConfigError, match="^host.schema_migrations: environment variable OSPARC_POSTGRES_DATABASE is not set$"):
        resolve_secrets(settings)
    monkeypatch.setenv("OSPARC_POSTGRES_DATABASE", str(tmp_path))
    assert resolve_secrets(settings).host.schema_migrations == tmp_path
    assert os.fspath(MigrationSettings.from_values({**values, "host": {"schema_migrations": str(tmp_path)}}).host.schema_migrations) == str(tmp_path)


def test_a_deployment_says_its_bounds() -> None:
    """serve.py writes the bounds into the deployments' parameters, the closed ones by default, and a
    destination group only with an owner runs cannot change."""
    values = template()
    values["choices"].update(destination_user_id=7, destination_user_gid=70, include_hidden=True)
    settings = MigrationSettings.from_values(values)
    migrate, rollback = deployment_parameters(settings, ("s", "d", "h"))
    assert migrate["bounds"] == rollback["bounds"] == RunBounds().model_dump(mode="json")
    assert (migrate["host_block"], migrate["destination_user_id"], migrate["destination_user_gid"]) == ("h", 7, 70)
    assert "project_uuid" not in migrate and "host" not in migrate
    opened = RunBounds(choices=[*OPEN_BY_DEFAULT, "destination_user_id"])
    migrate, _ = deployment_parameters(settings, ("s", "d", "h"), opened)
    assert migrate["bounds"]["choices"][-1] == "destination_user_id" and "destination_user_gid" not in migrate
