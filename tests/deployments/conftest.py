"""A real Prefect server for the deployment tests, as docs/deployments.md sets one up: ``prefect server
start`` on 127.0.0.1 with a PREFECT_HOME of its own and basic auth on (every client, worker and
``prefect`` command of the tests carries the auth string); the cfg.json an operator serves; closed work
pools; workers; and what the tests look at outside projmig: the servers a run must not reach."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import PrefectClient

from projmig.s3 import s3_client
from projmig.sandbox import free_port
from projmig.sandbox.processes import prefect_server_env, spawn_logged, start_prefect_server, stop_process
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import S3Settings

from ..conftest import Simcore

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
DST_DB_BLOCK = "destination-db-password"  # the name docs/deployments.md gives it
DST_S3_BLOCK = "projmig-test-destination-s3-secret-key"
AUTH = "projmig-admin:test-auth-string"  # the server's basic auth (user:password)
PROCESS_POOL = REPO / "deployments" / "process-pool.json"  # the closed work pool templates projmig ships
DOCKER_POOL = REPO / "deployments" / "docker-pool.json"


@dataclass
class PrefectServer:
    url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A client process's environment: this server's API and auth string, a home of its own,
        nothing of the test session's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and not k.startswith("PROJMIG_")}
        return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python`, `prefect`: as docs/deployments.md runs them
                "PREFECT_API_URL": self.url, "PREFECT_API_AUTH_STRING": AUTH, "PREFECT_HOME": str(self.home / "client"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "250", **extra}

    def client(self) -> PrefectClient:
        return PrefectClient(api=self.url, auth_string=AUTH)


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process this test started, with its whole group (a worker's flow-run processes too)."""
    stop_process(process, timeout=timeout, group=True)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return spawn_logged(cmd, env=env, log=log, cwd=log.parent)


def run_cli(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-server")
    server = PrefectServer(url=f"http://127.0.0.1:{free_port()}/api", home=home)
    port = int(server.url.split(":")[2].split("/")[0])
    env = server.env(PREFECT_HOME=str(home), PREFECT_SERVER_API_AUTH_STRING=AUTH)
    process = start_prefect_server(port, env=prefect_server_env(env, services=True), log=home / "server.log",
                                   services=True)  # (its late-runs and cancellation services: what workers need)
    try:
        yield server
    finally:
        stop(process)


def deployment_config(simcore: Simcore) -> dict[str, Any]:
    """The cfg.json an operator serves: both deployments, credentials only by reference."""
    cfg = simcore.config()
    cfg["source"]["db"]["password"] = {"env": "TEST_SOURCE_DB_PASSWORD"}
    cfg["source"]["s3"]["access_key"] = {"env": "TEST_SOURCE_S3_ACCESS_KEY"}
    cfg["source"]["s3"]["secret_key"] = {"env": "TEST_SOURCE_S3_SECRET_KEY"}
    cfg["destination"]["db"]["password"] = {"prefect_secret": DST_DB_BLOCK}
    cfg["destination"]["s3"]["access_key"] = {"env": "TEST_DESTINATION_S3_ACCESS_KEY"}
    cfg["destination"]["s3"]["secret_key"] = {"prefect_secret": DST_S3_BLOCK}
    return cfg


def secret_env(simcore: Simcore) -> dict[str, str]:
    """What the process that runs the flow (served process, worker) has in its environment."""
    return {
        "TEST_SOURCE_DB_PASSWORD": simcore.source_db.password.get_secret_value(),  # type: ignore[union-attr]
        "TEST_SOURCE_S3_ACCESS_KEY": simcore.source_s3.access_key.get_secret_value(),  # type: ignore[union-attr]
        "TEST_SOURCE_S3_SECRET_KEY": simcore.source_s3.secret_key.get_secret_value(),  # type: ignore[union-attr]
        "TEST_DESTINATION_S3_ACCESS_KEY": simcore.destination_s3.access_key.get_secret_value(),  # type: ignore[union-attr]
    }


def secrets_of(simcore: Simcore) -> list[str]:
    box = simcore.sandbox
    return [box.source.pg_password, box.destination.pg_password, box.source.s3_secret_key, box.destination.s3_secret_key, AUTH]


async def save_secret_blocks(server: PrefectServer, simcore: Simcore, from_docs: bool = False) -> None:
    blocks = [(DST_DB_BLOCK, simcore.destination_db.password), (DST_S3_BLOCK, simcore.destination_s3.secret_key)]
    if from_docs:  # docs/deployments.md's command for the database password, as an operator runs it
        (command,) = [line for line in (REPO / "docs" / "deployments.md").read_text().splitlines() if "Secret(value=os.environ" in line]
        saved = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120,
                               env=server.env(DST_DB_PASSWORD=blocks[0][1].get_secret_value()))  # type: ignore[union-attr]
        assert saved.returncode == 0, saved.stdout + saved.stderr
        blocks = blocks[1:]
    async with server.client() as client:
        for name, value in blocks:
            await Secret(value=value.get_secret_value()).asave(name, overwrite=True, client=client)  # type: ignore[union-attr]


def create_pool(server: PrefectServer, pool: str, cwd: Path, kind: str = "process", template: Path | None = PROCESS_POOL) -> None:
    """``prefect work-pool create`` as docs/deployments.md gives it: from projmig's closed template
    (``template=None``: Prefect's default one, whose runs may set env, command, ...)."""
    args = ["--base-job-template", str(template)] if template is not None else []
    created = run_cli([str(BIN / "prefect"), "work-pool", "create", pool, "--type", kind, *args], server.env(), cwd, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr


async def wait_for_deployment(server: PrefectServer, name: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    async with server.client() as client:
        while True:
            assert process.poll() is None, log.read_text()
            try:
                return await client.read_deployment_by_name(name)
            except Exception:
                assert time.monotonic() < deadline, f"{name} was not registered in {timeout} s:\n{log.read_text()}"
                time.sleep(0.5)


async def wait_for_workers(server: PrefectServer, pool: str, workers: list[subprocess.Popen], logs: list[Path]) -> None:
    async with server.client() as client:
        deadline = time.monotonic() + 90
        while len(await client.read_workers_for_work_pool(pool)) < len(workers):
            assert all(w.poll() is None for w in workers), "\n".join(log.read_text() for log in logs)
            assert time.monotonic() < deadline, "the workers did not come online in 90 s"
            await asyncio.sleep(0.5)


async def wait_final(client: PrefectClient, run_id: Any, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        flow_run = await client.read_flow_run(run_id)
        if flow_run.state and flow_run.state.is_final():
            return flow_run
        assert time.monotonic() < deadline, f"run {run_id} not final after {timeout} s: {flow_run.state}"
        await asyncio.sleep(1)


async def sample_project(simcore: Simcore, seed: int = 0):
    return await build_sample_project(
        simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
        spec=SampleSpec(files=4, directory_objects=2, multipart_size=6 * 1024 * 1024,
                        multipart_part_size=5 * 1024 * 1024, hidden_children=1, seed=seed),
    )


async def destination_counts(simcore: Simcore, projects: list[str]) -> tuple[int, int]:
    """(projects rows, objects) of these projects in the destination."""
    conn = await asyncpg.connect(asyncpg_dsn(simcore.destination_db))
    try:
        rows = await conn.fetchval("SELECT count(*) FROM projects WHERE uuid::text = ANY($1::text[])", projects)
    finally:
        await conn.close()
    async with s3_client(simcore.destination_s3) as client:
        listed = await client.list_objects_v2(Bucket=simcore.destination_s3.bucket)
    return rows, sum(1 for o in listed.get("Contents", []) if o["Key"].split("/", 1)[0] in projects)


async def object_count(bucket: S3Settings) -> int:
    async with s3_client(bucket) as client:
        return (await client.list_objects_v2(Bucket=bucket.bucket)).get("KeyCount", 0)


class FakeTarget:
    """A listening socket on 127.0.0.1 that records every connection made to it (and answers none):
    where a refused run would have sent the worker."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def one_line(text: str | None) -> str:
    assert text and "\n" not in text.strip(), text
    return text.strip()


def dumped(value: Any) -> str:
    return json.dumps(value, default=str)
