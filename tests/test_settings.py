"""Settings: the old cfg.json shape, environment overrides, secret references, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from projmig import commands
from projmig.run import MigrationRun
from projmig.credentials import SecretRef
from projmig.errors import ConfigError
from projmig.settings import MigrationSettings, resolve_secrets, template

OLD_CFG = {
    "source": {
        "db": {"address": "db.onprem:5433", "user": "simcore", "password": "s3cr3t-db", "database": "simcoredb"},
        "s3": {"endpoint": "https://minio.onprem", "provider": "MINIO", "access_key": "AK", "secret_key": "s3cr3t-s3", "bucket": "simcore"},
        "project_uuid": "6f4c2bd4-5ac6-4a0b-b7c6-2a4e2d4b0f35",
        "hidden_projects_for_user": 3,
    },
    "destination": {
        "db": {"address": "db.aws", "user": "simcore", "password": "s3cr3t-db2", "database": "simcoredb"},
        "s3": {"endpoint": "", "provider": "AWS", "access_key": "AK2", "secret_key": "s3cr3t-s32", "bucket": "simcore-aws"},
        "user_id": 12,
        "user_gid": 40,
    },
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_old_cfg_json_shape_loads(tmp_path: Path) -> None:
    settings = MigrationSettings.load(write(tmp_path, OLD_CFG))
    assert settings.source.db.host == "db.onprem" and settings.source.db.port == 5433
    assert settings.destination.db.port == 5432
    assert settings.destination.s3.endpoint is None
    assert settings.choices.include_hidden is True  # the old field turns hidden projects on
    assert [str(u) for u in settings.project_uuids] == ["6f4c2bd4-5ac6-4a0b-b7c6-2a4e2d4b0f35"]
    # the run's choices the old shape kept in the sections are the settings' choices now
    assert (settings.choices.destination_user_id, settings.choices.destination_user_gid) == (12, 40)
    assert isinstance(settings.source.db.password, SecretStr)


def test_secrets_never_print(tmp_path: Path) -> None:
    settings = MigrationSettings.load(write(tmp_path, OLD_CFG))
    shown = repr(settings) + str(settings) + settings.model_dump_json() + str(settings.model_dump())
    for secret in ("s3cr3t-db", "s3cr3t-s3", "s3cr3t-db2", "s3cr3t-s32"):
        assert secret not in shown
    assert "s3cr3t" not in str(settings.source.db.url())  # URL's str hides the password
    assert settings.source.db.describe() == "db.onprem:5433/simcoredb"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJMIG_SOURCE__DB__PASSWORD", "from-env")
    monkeypatch.setenv("PROJMIG_DESTINATION__USER_ID", "99")  # the old place of choices.destination_user_id
    monkeypatch.setenv("PROJMIG_OPTIONS__COPY_CONCURRENCY", "3")
    settings = MigrationSettings.load(write(tmp_path, OLD_CFG))
    assert settings.source.db.password.get_secret_value() == "from-env"  # type: ignore[union-attr]
    assert settings.choices.destination_user_id == 99
    assert settings.options.copy_concurrency == 3
    assert settings.source.db.host == "db.onprem"  # untouched fields stay


def test_secret_references_resolve_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = json.loads(json.dumps(OLD_CFG))
    cfg["source"]["db"]["password"] = {"env": "SRC_PW"}
    settings = MigrationSettings.load(write(tmp_path, cfg))
    assert isinstance(settings.source.db.password, SecretRef)
    assert "SRC_PW" in settings.model_dump_json()  # the reference is safe to show
    with pytest.raises(ConfigError, match="source.db.password: environment variable SRC_PW is not set"):
        resolve_secrets(settings)
    monkeypatch.setenv("SRC_PW", "pw-from-env")
    assert resolve_secrets(settings).source.db.password.get_secret_value() == "pw-from-env"  # type: ignore[union-attr]


async def test_a_reference_reaching_a_step_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run resolves its credentials once, before its first step (``flows/credentials.py``, or
    ``resolve_secrets`` for a library caller); a step takes values and reads no environment of its own,
    so a reference left unresolved stops it with one line naming it, before any connection."""
    monkeypatch.setenv("SOURCE_S3_SECRET_KEY", "set, yet not read by the run")
    settings = MigrationSettings.parse(template())
    with pytest.raises(ConfigError, match="^secret_key still refers to env:SOURCE_S3_SECRET_KEY: resolve secrets first$"):
        async with MigrationRun.open(settings):
            pass
    # a library command resolves the references itself, and says, one line each, which it cannot
    with pytest.raises(ConfigError) as unresolved:
        await commands.rollback(settings)
    assert unresolved.value.problems == [
        "source.db.password: environment variable SOURCE_DB_PASSWORD is not set",
        "destination.db.password: Prefect Secret 'destination-db-password' can only be read inside a Prefect flow",
        "destination.s3.secret_key: environment variable DESTINATION_S3_SECRET_KEY is not set",
    ]


def test_one_error_line_per_wrong_field(tmp_path: Path) -> None:
    cfg = json.loads(json.dumps(OLD_CFG))
    cfg["source"]["db"]["port"] = "not-a-port"
    cfg["source"]["s3"]["endpoint"] = "minio.onprem"
    cfg["destination"]["user_id"] = "twelve"
    cfg["destination"]["s3"]["secret_key"] = 1234567890
    cfg["source"]["colour"] = "blue"
    with pytest.raises(ConfigError) as info:
        MigrationSettings.load(write(tmp_path, cfg))
    problems = info.value.problems
    assert any(p.startswith("cfg.json: source.db.port: ") for p in problems) or any("source.db.port" in p for p in problems)
    assert any("source.s3.endpoint: must start with http:// or https://" in p for p in problems)
    assert any("destination.user_id" in p and "'twelve'" in p for p in problems)
    assert any("source.colour: unknown field" in p for p in problems)
    assert all("\n" not in p for p in problems)
    assert not any("1234567890" in p for p in problems)  # a wrong secret is not echoed back


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid JSON: .* line 1"):
        MigrationSettings.load(write(tmp_path, "{nope"))
    with pytest.raises(ConfigError, match="no such file"):
        MigrationSettings.load(tmp_path / "absent.json")


def test_template_is_valid_and_holds_no_secrets() -> None:
    data = template()
    settings = MigrationSettings.parse(data)
    assert isinstance(settings.source.s3.secret_key, SecretRef)
    assert isinstance(settings.destination.db.password, SecretRef)
    assert settings.destination.db.password.prefect_secret == "destination-db-password"


def test_nothing_to_move_is_an_error() -> None:
    cfg = json.loads(json.dumps(OLD_CFG))
    del cfg["source"]["project_uuid"]
    with pytest.raises(ConfigError, match="give project_uuid, project_uuids or source_owner_user_id"):
        MigrationSettings.parse(cfg)


def test_the_memory_options_have_upper_bounds() -> None:
    """A configuration (or a run's options) cannot ask for unbounded memory: each option a bound, one line each."""
    data = template()
    data["options"].update(memory_limit=2**50, batch_max_files=10**9, batch_max_bytes=2**50)
    with pytest.raises(ConfigError) as refused:
        MigrationSettings.parse(data)
    assert [p.split(": ")[1] for p in refused.value.problems] == ["options.memory_limit", "options.batch_max_files",
                                                                   "options.batch_max_bytes"]
