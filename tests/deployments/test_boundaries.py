"""What a user who may start runs cannot do (docs/deployments.md, "Boundaries"), tried as that user would,
on a real Prefect server with basic auth on, closed work pools (deployments/process-pool.json,
deployments/docker-pool.json) and real workers; every outcome checked at the servers a run must not
reach: a socket that counts connections (``FakeTarget``) and a bucket of the attacker's.

- Job variables (env naming another bucket, database, Dask scheduler, Prefect API or proxy; a command;
  an image): refused by Prefect itself (422) on the shipped pools; carried past that check (the API's
  plain ``POST /flow_runs/``, or a pool opened later), refused by the flow in one line before it
  connects anywhere.
- A worker whose own environment has ``PROJMIG_*`` settings: its runs go where their blocks say.
- Parameters outside the deployment's bounds (projmig.bounds.RunBounds): one line each.
- The API itself: without the auth string, no block read, no deployment update.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import PrefectHTTPStatusError

from projmig import commands
from projmig.bounds import OPEN_BY_DEFAULT
from projmig.sandbox import Sandbox
from projmig.settings import MigrationOptions, S3Settings

from ..conftest import Simcore, Templates, make_simcore, unique
from .conftest import (
    AUTH,
    BIN,
    DOCKER_POOL,
    DST_S3_BLOCK,
    FakeTarget,
    PrefectServer,
    create_pool,
    deployment_config,
    object_count,
    one_line,
    run_cli,
    sample_project,
    save_secret_blocks,
    secret_env,
    secrets_of,
    start,
    stop,
    wait_final,
    wait_for_workers,
)

# one worker for the module: its setup (two deployments registered, a worker started) is a module
# fixture, which each worker taking one of these tests would build again
pytestmark = pytest.mark.xdist_group("deployment-boundaries")

POOL = "bounded"  # closed, from deployments/process-pool.json


@dataclass
class Setup:
    """Deployments of one cfg.json registered for the closed pool ``bounded`` and a worker on it:
    ``closed`` (the default bounds) and ``opened`` (its runs may name carol as the owner and lower
    ``memory_limit``), the study they migrate, where an attacker wants it (a bucket, a socket)."""

    server: PrefectServer
    simcore: Simcore
    study: str
    fake: FakeTarget
    attackers_bucket: S3Settings
    cfg: Path
    workdir: Path
    worker_log: Path

    async def deployment(self, name: str, flow: str = "migrate-project") -> Any:
        async with self.server.client() as client:
            return await client.read_deployment_by_name(f"{flow}/{name}")

    def register(self, name: str, pool: str, *more: str) -> None:
        registered = run_cli([str(BIN / "python"), "-m", "deployments.serve", "--config", str(self.cfg), "--name", name,
                              "--pool", pool, *more], self.server.env(), self.workdir, timeout=120)
        assert registered.returncode == 0, registered.stdout + registered.stderr

    def nothing_reached(self) -> None:
        assert self.fake.connections == 0

    async def attacker_got_nothing(self) -> None:
        assert self.fake.connections == 0
        assert await object_count(self.attackers_bucket) == 0


@pytest.fixture(scope="module")
async def setup(prefect_server: PrefectServer, sandbox: Sandbox, templates: dict[str, Templates],
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    simcore = await make_simcore(sandbox, templates, "fixture")
    workdir = tmp_path_factory.mktemp("boundaries")
    cfg = workdir / "cfg.json"
    cfg.write_text(json.dumps(deployment_config(simcore)))
    await save_secret_blocks(prefect_server, simcore)
    fake = FakeTarget()
    found = Setup(server=prefect_server, simcore=simcore, study=(await sample_project(simcore, seed=11)).uuid, fake=fake,
                  attackers_bucket=await sandbox.destination.s3.create_bucket(unique("attackers")), cfg=cfg,
                  workdir=workdir, worker_log=workdir / "worker.log")
    create_pool(prefect_server, POOL, workdir)
    found.register("closed", POOL)
    bounds = workdir / "bounds.json"
    bounds.write_text(json.dumps({"choices": [*OPEN_BY_DEFAULT, "destination_user_id"],
                                  "destination_user_ids": [simcore.carol], "options": ["memory_limit"]}))
    found.register("opened", POOL, "--bounds", str(bounds))
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "4"],
                   prefect_server.env(PREFECT_WORKER_QUERY_SECONDS="1", **secret_env(simcore)), found.worker_log)
    try:
        await wait_for_workers(prefect_server, POOL, [worker], [found.worker_log])
        yield found
    finally:
        stop(worker)
        fake.close()
    output = found.worker_log.read_text()
    for secret in secrets_of(simcore):
        assert secret not in output


def attacks(setup: Setup) -> dict[str, dict[str, Any]]:
    """What a run's job variables would point the worker at, by what they set."""
    dst = setup.simcore.destination_s3
    elsewhere = f"127.0.0.1:{setup.fake.port}"
    bucket = {  # a complete section (a lone field fails validation): the attacker's bucket, the deployment's own credentials
        "endpoint": dst.endpoint, "provider": dst.provider.value, "region": dst.region,
        "access_key": {"env": "TEST_DESTINATION_S3_ACCESS_KEY"}, "secret_key": {"prefect_secret": DST_S3_BLOCK},
        "bucket": setup.attackers_bucket.bucket,
    }
    dask = {"PROJMIG_OPTIONS__TASK_RUNNER": "dask"}
    return {
        "PROJMIG_DESTINATION__S3": {"env": {"PROJMIG_DESTINATION__S3": json.dumps(bucket)}},
        "PROJMIG_DESTINATION__DB__DSN": {"env": {"PROJMIG_DESTINATION__DB__DSN": f"postgresql://simcore:x@{elsewhere}/simcoredb"}},
        "PROJMIG_HOST__DASK_ADDRESS": {"env": {"PROJMIG_HOST__DASK_ADDRESS": f"tcp://{elsewhere}", **dask}},
        "PROJMIG_OPTIONS__DASK_ADDRESS": {"env": {"PROJMIG_OPTIONS__DASK_ADDRESS": f"tcp://{elsewhere}", **dask}},
        "PREFECT_API_URL": {"env": {"PREFECT_API_URL": f"http://{elsewhere}/api"}},
        "HTTPS_PROXY": {"env": {"HTTPS_PROXY": f"http://{elsewhere}", "HTTP_PROXY": f"http://{elsewhere}"}},
        "command": {"command": f"{BIN / 'python'} -c 'import socket; socket.create_connection((\"127.0.0.1\", {setup.fake.port}))'"},
    }


def parameters(setup: Setup, deployment: Any, **more: Any) -> dict[str, Any]:
    return {**deployment.parameters, "project_uuid": setup.study, **more}


async def runs_of(setup: Setup, deployment: Any) -> list[Any]:
    async with setup.server.client() as client:
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


async def test_prefect_refuses_job_variables_on_the_shipped_pools(setup: Setup) -> None:
    """Each attack a run's job variables could make, refused by Prefect itself when the run is created
    (422: the pool's variables schema takes none); no run exists, nothing is reached."""
    docker_pool = "bounded-docker"
    create_pool(setup.server, docker_pool, setup.workdir, "docker", DOCKER_POOL)
    setup.register("docker", docker_pool)
    closed, docker = await setup.deployment("closed"), await setup.deployment("docker")
    tries = [*((closed, what, variables) for what, variables in attacks(setup).items()),
             (closed, "working_dir", {"working_dir": str(setup.workdir)}),
             (docker, "image", {"image": "attacker/image:latest"}),
             (docker, "env", {"env": {"PROJMIG_DESTINATION__DB__DSN": f"postgresql://x:y@127.0.0.1:{setup.fake.port}/z"}}),
             (docker, "command", attacks(setup)["command"]),
             (docker, "volumes", {"volumes": ["/:/host"]})]
    before = len(await runs_of(setup, closed))
    async with setup.server.client() as client:
        for deployment, what, variables in tries:
            with pytest.raises(PrefectHTTPStatusError) as refused:
                await client.create_flow_run_from_deployment(
                    deployment.id, parameters={"project_uuid": setup.study}, job_variables=variables)
            assert refused.value.response.status_code == 422, what
            detail = one_line(refused.value.response.json()["detail"])
            assert f"Additional properties are not allowed ('{next(iter(variables))}' was unexpected)" in detail, (what, detail)
    # the operator's command, as a user who may start runs types it
    typed = run_cli([str(BIN / "prefect"), "deployment", "run", "migrate-project/closed", "-p", f"project_uuid={setup.study}",
                     "--job-variable", f"env={json.dumps(attacks(setup)['PROJMIG_DESTINATION__DB__DSN']['env'])}"],
                    setup.server.env(), setup.workdir)
    assert typed.returncode == 1 and "Additional properties are not allowed ('env' was unexpected)" in typed.stdout, typed.stdout
    assert len(await runs_of(setup, closed)) == before and await runs_of(setup, docker) == []
    await setup.attacker_got_nothing()


async def test_job_variables_carried_past_the_api_check_are_ignored_and_refused(setup: Setup) -> None:
    """The API's plain ``POST /flow_runs/`` takes a deployment's run with job variables unchecked (and
    any parameters); the closed pool's template starts it as it starts every run, and the flow refuses
    it in one line before it connects anywhere: the command never runs, the environment never applies."""
    closed = await setup.deployment("closed")
    async with setup.server.client() as client:
        created = {}
        for what, variables in attacks(setup).items():
            response = await client._client.post("/flow_runs/", json={
                "flow_id": str(closed.flow_id), "deployment_id": str(closed.id), "work_pool_name": POOL,
                "name": f"attack-{what.lower().replace('_', '-')}", "parameters": parameters(setup, closed),
                "job_variables": variables, "state": {"type": "SCHEDULED", "name": "Scheduled"}})
            assert response.status_code == 201, response.text
            created[what] = response.json()["id"]
        for what, run_id in created.items():
            final = await wait_final(client, run_id)
            assert final.state.name == "Failed", (what, final.state, setup.worker_log.read_text())
            assert one_line(final.state.message).endswith(
                "job variables: fixed by migrate-project/closed (its work pool's and its own); a run sets none"), what
    await setup.attacker_got_nothing()


async def test_a_pool_opened_later_still_cannot_point_a_run_elsewhere(setup: Setup) -> None:
    """An operator who opens the pool after registering (Prefect's default template: runs may set env,
    command, ...): Prefect takes the runs' env and the worker applies it; the flow refuses each run in
    one line, and reads no PROJMIG_* variable anyway."""
    pool = "opened-later"
    create_pool(setup.server, pool, setup.workdir)
    setup.register("opened-later", pool)
    default = setup.workdir / "default-process-pool.json"
    shown = run_cli([str(BIN / "prefect"), "work-pool", "get-default-base-job-template", "--type", "process"],
                    setup.server.env(), setup.workdir)
    default.write_text(shown.stdout)
    opened = run_cli([str(BIN / "prefect"), "work-pool", "update", pool, "--base-job-template", str(default)],
                     setup.server.env(), setup.workdir)
    assert opened.returncode == 0, opened.stdout + opened.stderr
    # serve.py registers no deployment for it any more
    refused = run_cli([str(BIN / "python"), "-m", "deployments.serve", "--config", str(setup.cfg), "--name", "another",
                       "--pool", pool], setup.server.env(), setup.workdir)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: work pool '{pool}' lets a run set job variables (env, command, ...): update it with "
        f"`prefect work-pool update {pool} --base-job-template deployments/process-pool.json`"), refused.stderr
    log = setup.workdir / "opened-later-worker.log"
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "4"],
                   setup.server.env(PREFECT_WORKER_QUERY_SECONDS="1", **secret_env(setup.simcore)), log)
    try:
        await wait_for_workers(setup.server, pool, [worker], [log])
        deployment = await setup.deployment("opened-later")
        async with setup.server.client() as client:
            created = {
                what: await client.create_flow_run_from_deployment(
                    deployment.id, parameters={"project_uuid": setup.study}, job_variables=variables)
                for what, variables in attacks(setup).items() if what.startswith("PROJMIG_")
            }
            for what, flow_run in created.items():
                final = await wait_final(client, flow_run.id)
                assert final.state.name == "Failed", (what, final.state, log.read_text())
                assert one_line(final.state.message).endswith(
                    "job variables: fixed by migrate-project/opened-later (its work pool's and its own); a run sets none"), what
    finally:
        stop(worker)
    await setup.attacker_got_nothing()


async def test_a_workers_own_projmig_variables_do_not_move_a_run(setup: Setup) -> None:
    """A worker host with PROJMIG_* set (for the CLI, or by someone else): a deployment run reads
    none of them; the study goes where the blocks say, the attacker's servers see nothing."""
    pool = "tainted"
    create_pool(setup.server, pool, setup.workdir)
    setup.register("tainted", pool)
    tainted: dict[str, str] = {}
    for variables in attacks(setup).values():
        tainted.update({k: v for k, v in variables.get("env", {}).items() if k.startswith("PROJMIG_")})
    tainted["PROJMIG_OPTIONS__ALLOW_MISSING_OBJECTS"] = "true"
    log = setup.workdir / "tainted-worker.log"
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "1"],
                   setup.server.env(PREFECT_WORKER_QUERY_SECONDS="1", **secret_env(setup.simcore), **tainted), log)
    try:
        await wait_for_workers(setup.server, pool, [worker], [log])
        deployment = await setup.deployment("tainted")
        async with setup.server.client() as client:
            flow_run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"project_uuid": setup.study, "include_hidden": True})
            final = await wait_final(client, flow_run.id)
        assert final.state.name == "Completed", (final.state, log.read_text())
    finally:
        stop(worker)
    await setup.attacker_got_nothing()
    verified = await commands.verify(setup.simcore.settings(setup.study, source={"include_hidden": True}), deep=True)
    assert verified.equal, [str(d) for d in verified.differences]


async def test_runs_outside_the_bounds_are_refused_one_line_each(setup: Setup) -> None:
    """Each kind of parameter a deployment keeps, given by a run: a choice it did not open, an owner it
    did not list, a safety switch, an option it did not open or above its own value, its bounds or
    its host block: refused in one line naming it, before anything connects. A run within the bounds
    (an owner listed, memory_limit lowered) goes through."""
    closed, opened = await setup.deployment("closed"), await setup.deployment("opened")
    rollback = await setup.deployment("closed", "rollback-migration")
    carol = setup.simcore.carol
    tries: dict[str, tuple[Any, dict[str, Any], str]] = {
        "closed choice: destination_user_id": (closed, {"destination_user_id": carol + 1000}, f"destination_user_id: fixed by migrate-project/closed ({carol})"),
        "closed choice: product_name": (closed, {"product_name": "s4l"}, "product_name: fixed by migrate-project/closed (null)"),
        "closed choice: source_owner_user_id": (closed, {"source_owner_user_id": setup.simcore.alice}, "source_owner_user_id: fixed by"),
        "closed choice: uuid_policy": (closed, {"uuid_policy": "new"}, 'uuid_policy: fixed by migrate-project/closed ("keep")'),
        "safety switch: allow_missing_objects": (closed, {"options": {"allow_missing_objects": True}}, "options.allow_missing_objects: fixed by migrate-project/closed (false)"),
        "safety switch: allow_schema_drift": (closed, {"options": {"allow_schema_drift": True}}, "options.allow_schema_drift: fixed by migrate-project/closed (false)"),
        "safety switch: verification": (closed, {"options": {"verification": "etag"}}, 'options.verification: fixed by migrate-project/closed ("auto")'),
        "option not opened": (closed, {"options": {"memory_limit": 16 * 2**20}}, "options.memory_limit: fixed by migrate-project/closed"),
        "own bounds": (closed, {"bounds": {"choices": ["project_uuid", "product_name"]}}, "parameter 'bounds': fixed by migrate-project/closed"),
        "another host block": (closed, {"host_block": "opened-host"}, "parameter 'host_block': fixed by migrate-project/closed"),
        "owner not listed": (opened, {"destination_user_id": carol + 1000}, f"destination_user_id: migrate-project/opened allows {carol} only"),
        "option above the deployment's": (opened, {"options": {"memory_limit": 1024 * 2**20}}, f"options.memory_limit: at most {MigrationOptions().memory_limit} in a run of migrate-project/opened"),
        "rollback's closed choice": (rollback, {"uuid_policy": "new"}, 'uuid_policy: fixed by rollback-migration/closed ("keep")'),
    }
    async with setup.server.client() as client:
        created = {what: await client.create_flow_run_from_deployment(deployment.id, parameters={"project_uuid": setup.study, **given})
                   for what, (deployment, given, _) in tries.items()}
        within = await client.create_flow_run_from_deployment(opened.id, parameters={
            "project_uuid": setup.study, "destination_user_id": carol, "dry_run": True, "options": {"memory_limit": 64 * 2**20}})
        for what, flow_run in created.items():
            final = await wait_final(client, flow_run.id)
            assert final.state.name == "Failed", (what, final.state, setup.worker_log.read_text())
            assert tries[what][2] in one_line(final.state.message), (what, final.state.message)
        final = await wait_final(client, within.id)
        assert final.state.name == "Completed", (final.state, setup.worker_log.read_text())
    setup.nothing_reached()


async def test_the_api_refuses_who_lacks_the_auth_string(setup: Setup) -> None:
    """Basic auth on the server: without the auth string (or with another), no block is read (secret
    values included) and no deployment is changed; with it, both are possible (so is everything else:
    one string, every right)."""
    closed = await setup.deployment("closed")
    async with setup.server.client() as client:
        secret_block = await client.read_block_document_by_name(DST_S3_BLOCK, "secret", include_secrets=False)
    tried = {
        "read blocks": ("POST", "/block_documents/filter", {"include_secrets": True}),
        "read a secret": ("GET", f"/block_documents/{secret_block.id}?include_secrets=true", None),
        "update a deployment": ("PATCH", f"/deployments/{closed.id}", {"parameters": {**closed.parameters, "destination": "attacker-0"}}),
        "start a run": ("POST", f"/deployments/{closed.id}/create_flow_run", {"parameters": {"project_uuid": setup.study}}),
    }
    value = setup.simcore.destination_s3.secret_key.get_secret_value()  # type: ignore[union-attr]
    for auth in (None, ("projmig-admin", "guessed"), ("someone", AUTH.split(":", 1)[1])):
        async with httpx.AsyncClient(base_url=setup.server.url, auth=auth) as http:
            for what, (method, path, body) in tried.items():
                response = await http.request(method, path, json=body)
                assert response.status_code == 401, (what, auth, response.status_code)
                assert value not in response.text
    async with setup.server.client() as client:
        assert (await client.read_deployment(closed.id)).parameters == closed.parameters
    user, password = AUTH.split(":", 1)
    async with httpx.AsyncClient(base_url=setup.server.url, auth=(user, password)) as http:
        read = await http.get(f"/block_documents/{secret_block.id}", params={"include_secrets": "true"})
        assert read.status_code == 200 and read.json()["data"]["value"] == value
