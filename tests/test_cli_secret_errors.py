"""Bad credentials input is one error line naming the field, exit code 2, never a traceback and never
any part of a secret: malformed DSNs, missing or empty Prefect Secret blocks, unset or empty
environment references, an unreadable cfg.json. A marker secret is looked for in stdout, stderr
and every log line of the Prefect server the command used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

from .conftest import Simcore

PROJMIG = str(Path(sys.executable).parent / "projmig")
MARKER = "Mk7-s3cr3t"  # part of every secret value below


def dsn(simcore: Simcore, password: str, *, scheme: str = "postgresql", port: str | None = None) -> str:
    db = simcore.source_db
    return f"{scheme}://{db.user}:{password}@{db.host}:{db.port if port is None else port}/{db.database}"


def set_field(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        config = config[key]
    config[leaf] = value


def with_dsn(value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        db = config["source"]["db"]
        for name in ("host", "port", "user", "password", "database"):
            db.pop(name, None)
        db["dsn"] = value
    return change


# case -> (change to the cfg.json (given the simcore), environment, field the error line must name, what it says)
CASES: dict[str, tuple[Callable[[dict[str, Any], Simcore], None], dict[str, str], str, str]] = {
    "dsn with @ in the password": (
        lambda c, s: with_dsn(dsn(s, f"{MARKER}@x"))(c), {}, "source.db", "more than one '@'"),
    "dsn with : in the password": (  # read as libpq does (user, then password up to the @): a wrong password
        lambda c, s: with_dsn(dsn(s, f"{MARKER}:x"))(c), {}, "source database", "password authentication failed"),
    "dsn with / in the password": (
        lambda c, s: with_dsn(dsn(s, f"{MARKER}/x"))(c), {}, "source.db", "percent-encode"),
    "dsn without a port after the colon": (
        lambda c, s: with_dsn(dsn(s, MARKER, port=""))(c), {}, "source.db", "no port after ':'"),
    "dsn with an unknown scheme": (
        lambda c, s: with_dsn(dsn(s, MARKER, scheme="mysql"))(c), {}, "source.db", "must start with postgresql://"),
    "dsn from the environment, malformed": (
        lambda c, s: with_dsn({"env": "PROJMIG_TEST_DSN"})(c), {"PROJMIG_TEST_DSN": f"postgresql://u:{MARKER}@x:y@h:1/d"},
        "source.db.dsn", "more than one '@'"),
    "missing Prefect Secret block": (
        lambda c, s: set_field(c, "destination.db.password", {"prefect_secret": "projmig-test-no-such-block"}), {},
        "destination.db.password", "Prefect Secret block 'projmig-test-no-such-block' does not exist"),
    "empty Prefect Secret block": (
        lambda c, s: set_field(c, "destination.db.password", {"prefect_secret": "projmig-test-empty"}), {},
        "destination.db.password", "Prefect Secret block 'projmig-test-empty' is empty"),
    "unset environment reference": (
        lambda c, s: set_field(c, "source.s3.secret_key", {"env": "PROJMIG_TEST_UNSET"}), {},
        "source.s3.secret_key", "environment variable PROJMIG_TEST_UNSET is not set"),
    "empty environment reference": (
        lambda c, s: set_field(c, "source.s3.secret_key", {"env": "PROJMIG_TEST_EMPTY"}), {"PROJMIG_TEST_EMPTY": ""},
        "source.s3.secret_key", "environment variable PROJMIG_TEST_EMPTY is empty"),
}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("PROJMIG_TEST_UNSET",)}
    full.update(env, PREFECT_API_URL=str(get_current_settings().api.url))
    return subprocess.run([PROJMIG, *args], capture_output=True, text=True, timeout=300, env=full)


def assert_one_clean_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert MARKER not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_credentials_are_one_line_without_the_secret(
    case: str, fixture_simcore: Simcore, tmp_path: Path, prefect: None
) -> None:
    change, env, field, says = CASES[case]
    await Secret(value="").asave("projmig-test-empty", overwrite=True)
    config = fixture_simcore.config("00000000-0000-0000-0000-000000000001")
    change(config, fixture_simcore)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(config))
    for command in ("plan", "migrate"):
        assert_one_clean_line(run([command, "--config", str(cfg)], env), field, says)
    async with get_client() as client:
        logs = await client.read_logs()
    assert all(MARKER not in entry.message for entry in logs)


def test_unreadable_config_is_one_line(tmp_path: Path) -> None:
    directory = tmp_path / "cfg.json"
    directory.mkdir()
    assert_one_clean_line(run(["plan", "--config", str(directory)], {}), str(directory), "cannot read it")
    broken = tmp_path / "broken.json"
    broken.write_text('{"source": {"db": {"password": "' + MARKER + '"}')  # cut short
    assert_one_clean_line(run(["migrate", "--config", str(broken)], {}), str(broken), "not valid JSON")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe" + MARKER.encode("utf-16-le"))
    assert_one_clean_line(run(["plan", "--config", str(binary)], {}), str(binary), "not UTF-8")
