"""The deployment path end to end, as an operator runs it, on a real Prefect server (basic auth on).

A ``prefect server start`` process (127.0.0.1, its own PREFECT_HOME: tests/deployments/conftest.py),
the ``migrate-project`` and ``rollback-migration`` deployments served by ``python -m deployments.serve``
(and registered for a closed process work pool whose workers run them), runs started by name with
parameters, the migration (and its rollback) checked in the destination database and bucket, and every
secret looked for where Prefect keeps or shows things. What a run may not do: test_boundaries.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

from flows.blocks import OsparcDeployment, ProjmigHost
from projmig import commands
from projmig.credentials import SecretRef
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn

from ..conftest import Simcore, held_at_insert_and_one_waiting, hold_inserts, object_digests, wait_until
from ..faults.conftest import duplicate_rows, open_uploads
from .conftest import (
    BIN,
    DOCKER_POOL,
    PROCESS_POOL,
    DST_DB_BLOCK,
    REPO,
    FakeTarget,
    PrefectServer,
    create_pool,
    deployment_config,
    destination_counts,
    one_line,
    run_cli,
    sample_project,
    save_secret_blocks,
    secret_env,
    secrets_of,
    start,
    stop,
    wait_final,
    wait_for_deployment,
    wait_for_workers,
)


async def test_served_deployment_runs_by_name_with_parameters_and_keeps_secrets_out(
    prefect_server: PrefectServer, fixture_simcore: Simcore, tmp_path: Path
) -> None:
    sample = await sample_project(fixture_simcore)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(deployment_config(fixture_simcore)))
    await save_secret_blocks(prefect_server, fixture_simcore, from_docs=True)

    log = tmp_path / "serve.log"
    served = start([str(BIN / "python"), "-m", "deployments.serve", "--config", str(cfg), "--name", "sandbox"],
                   prefect_server.env(PREFECT_RUNNER_POLL_FREQUENCY="1", **secret_env(fixture_simcore)), log)
    try:
        deployment = await wait_for_deployment(prefect_server, "migrate-project/sandbox", served, log)
        # the operator's command, from a shell that holds no secret at all
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "migrate-project/sandbox",
             "-p", f"project_uuid={sample.uuid}", "-p", f"destination_user_id={fixture_simcore.carol}",
             "-p", "include_hidden=true", "--watch", "--watch-timeout", "240"],
            capture_output=True, text=True, timeout=300, env=prefect_server.env(), cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout + run.stderr + log.read_text()
        assert "Flow run finished successfully in 'Completed'" in run.stdout

        # the migration happened: rows and objects equal to the source (SHA-256 of every object)
        settings = fixture_simcore.settings(sample.uuid, source={"include_hidden": True})
        verified = await commands.verify(settings, deep=True)
        assert verified.equal, [str(d) for d in verified.differences]
        assert len(verified.projects) == 2 and verified.objects_checked == len(sample.objects)
        migrated = await destination_counts(fixture_simcore, sample.all_projects)

        # and its undo, served beside it under the same name, run by name with the same parameters
        await wait_for_deployment(prefect_server, "rollback-migration/sandbox", served, log)
        undo = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "rollback-migration/sandbox",
             "-p", f"project_uuid={sample.uuid}", "-p", "include_hidden=true", "--watch", "--watch-timeout", "240"],
            capture_output=True, text=True, timeout=300, env=prefect_server.env(), cwd=tmp_path,
        )
        assert undo.returncode == 0, undo.stdout + undo.stderr + log.read_text()
    finally:
        stop(served)
    assert migrated == (2, len(sample.objects))
    assert await destination_counts(fixture_simcore, sample.all_projects) == (0, 0)

    async with prefect_server.client() as client:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
        assert [r.state.name for r in runs] == ["Completed"]
        flow_run = runs[0]
        assert flow_run.parameters["project_uuid"] == sample.uuid
        assert flow_run.parameters["destination"] == "sandbox-destination" and "settings" not in flow_run.parameters
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        deployment = await client.read_deployment(deployment.id)

    # the report and the copy progress as Prefect artifacts of that run
    by_key = {a.key: a for a in artifacts}
    assert "migrated 2 projects" in by_key["projmig-report"].data
    assert {row["project"] for row in json.loads(by_key["projmig-projects"].data)} == set(sample.all_projects)
    assert by_key["projmig-copy"].data == 100.0

    seen = {
        "served process output": log.read_text(),
        "deployment run output (its logs)": run.stdout + run.stderr,
        "deployment": deployment.model_dump_json(),
        "flow run parameters": json.dumps(flow_run.parameters, default=str),
        "flow run logs": "\n".join(entry.message for entry in logs),
        "artifacts": json.dumps([a.data for a in artifacts], default=str),
    }
    assert any("migrated 2 projects" in entry.message for entry in logs)
    for where, text in seen.items():
        for secret in secrets_of(fixture_simcore):
            assert secret not in text, f"a secret leaked into the {where}"


@asynccontextmanager
async def two_workers(server: PrefectServer, simcore: Simcore, tmp_path: Path, pool: str) -> AsyncIterator[tuple[Any, list[Path]]]:
    """docs/deployments.md's commands: a closed process work pool, the deployment registered for it (named after
    the pool), two workers with ``--limit 1`` (online when this yields the deployment); stopped after."""
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(deployment_config(simcore)))
    await save_secret_blocks(server, simcore)
    create_pool(server, pool, tmp_path)
    registered = run_cli([str(BIN / "python"), "-m", "deployments.serve", "--config", str(cfg), "--name", pool, "--pool", pool],
                     server.env(), tmp_path, timeout=120)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    assert f"registered migrate-project/{pool}" in registered.stdout and f"registered rollback-migration/{pool}" in registered.stdout
    logs = [tmp_path / f"worker-{i}.log" for i in (1, 2)]
    workers = [
        start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", "1", "--name", f"{pool}-worker-{i}"],
              server.env(PREFECT_WORKER_QUERY_SECONDS="1", **secret_env(simcore)), log)
        for i, log in zip((1, 2), logs)
    ]
    try:
        await wait_for_workers(server, pool, workers, logs)
        async with server.client() as client:
            yield await client.read_deployment_by_name(f"migrate-project/{pool}"), logs
    finally:
        for worker in workers:
            stop(worker)


def executed_per_worker(runs: list[Any], outputs: list[str]) -> list[int]:
    """How many of the runs each worker executed (a worker may also have tried to take the other run
    and been told it was taken: "Aborted submission of flow run <id>")."""
    return [
        sum(f"submitting flow run '{r.id}'" in out and f"Aborted submission of flow run '{r.id}'" not in out for r in runs)
        for out in outputs
    ]


async def test_runs_of_many_projects_spread_over_the_workers_of_a_work_pool(
    prefect_server: PrefectServer, fixture_simcore: Simcore, tmp_path: Path
) -> None:
    spec = dict(files=2, directory_objects=0, multipart_size=0, hidden_children=0, soft_link=False, deployment_bound_rows=False)
    samples = [
        await build_sample_project(fixture_simcore.source_db, fixture_simcore.source_s3, owner_id=fixture_simcore.alice,
                                   spec=SampleSpec(seed=seed, name=f"study {seed}", **spec))  # type: ignore[arg-type]
        for seed in (1, 2)
    ]
    async with two_workers(prefect_server, fixture_simcore, tmp_path, "projmig-test") as (deployment, logs), \
            prefect_server.client() as client:
        # hold both runs in their preflight (the source's projects table locked) until both run
        # at once: with one run per worker at most, that is one run on each worker
        lock = await asyncpg.connect(asyncpg_dsn(fixture_simcore.source_db))
        held = lock.transaction()
        await held.start()
        await lock.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
        try:
            runs = [
                await client.create_flow_run_from_deployment(deployment.id, parameters={"project_uuid": s.uuid})
                for s in samples
            ]
            deadline = time.monotonic() + 120
            while not all(r.state and r.state.is_running() for r in runs):
                assert time.monotonic() < deadline, f"not both running after 120 s: {[r.state for r in runs]}"
                time.sleep(0.5)
                runs = [await client.read_flow_run(r.id) for r in runs]
        finally:
            await held.rollback()
            await lock.close()
        runs = [await wait_final(client, r.id) for r in runs]
    outputs = [log.read_text() for log in logs]
    assert [r.state.name for r in runs] == ["Completed", "Completed"], "\n".join(outputs)  # type: ignore[union-attr]
    assert executed_per_worker(runs, outputs) == [1, 1], "\n".join(outputs)
    for sample in samples:
        verified = await commands.verify(fixture_simcore.settings(sample.uuid), deep=True)
        assert verified.equal, [str(d) for d in verified.differences]
    for out in outputs:
        for secret in secrets_of(fixture_simcore):
            assert secret not in out


async def test_two_runs_of_one_project_on_two_workers_migrate_it_once(
    prefect_server: PrefectServer, simcore: Simcore, tmp_path: Path
) -> None:
    """The same project run twice at once on two workers (both schemas; runs name only the project):
    one run migrates it, the other waits for it (the projects' lock, projmig/locks.py) and then finds
    it migrated; both complete, no traceback, and the destination is what one uninterrupted run leaves."""
    sample = await sample_project(simcore, seed=3)
    parameters = {"project_uuid": sample.uuid, "include_hidden": True}
    dst = simcore.destination_db
    pool = f"projmig-once-{simcore.schema}"
    async with two_workers(prefect_server, simcore, tmp_path, pool) as (deployment, logs), \
            prefect_server.client() as client:
        holder, held = await hold_inserts(dst)  # whichever run gets the project first waits at its insert
        try:
            runs = [await client.create_flow_run_from_deployment(deployment.id, parameters=parameters) for _ in (1, 2)]
            await wait_until(lambda: held_at_insert_and_one_waiting(dst), "one run at its insert, the other waiting")
        finally:
            await held.rollback()
            await holder.close()
        runs = [await wait_final(client, r.id) for r in runs]
        reports = [
            {a.key: a for a in await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id]))
            )}["projmig-report"].description
            for r in runs
        ]
    outputs = [log.read_text() for log in logs]
    assert [r.state.name for r in runs] == ["Completed", "Completed"], "\n".join(outputs)  # type: ignore[union-attr]
    assert executed_per_worker(runs, outputs) == [1, 1], "\n".join(outputs)
    assert sorted(r.split(":")[0] for r in reports) == ["migrated 2 projects", "nothing to do"], reports
    assert any("2 projects already migrated, left as they are" in r for r in reports), reports
    assert all("Traceback" not in out for out in outputs), "\n".join(outputs)
    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    verified = await commands.verify(settings, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    assert await duplicate_rows(settings) == {} and await open_uploads(settings) == []
    source = await object_digests(simcore.source_s3)
    # every object of the project, and nothing else: no upload record, no probe
    assert await object_digests(simcore.destination_s3) == {k: source[k] for k in sample.objects}


async def test_prefect_deploy_creates_both_deployments_and_runs_cannot_name_connections(
    prefect_server: PrefectServer, fixture_simcore: Simcore, tmp_path: Path
) -> None:
    """docs/deployments.md's `prefect deploy --all` with the repository's prefect.yaml on closed work pools,
    a process worker, and runs that try to point the worker elsewhere (another database host, endpoint,
    bucket, secret reference, a whole settings object, a Dask scheduler, a host block, bounds of their
    own): each refused with one line before any connection; a run naming only its project migrates it."""
    sample = await sample_project(fixture_simcore, seed=7)
    env = prefect_server.env()
    fake = FakeTarget()
    victim_password = DST_DB_BLOCK
    await save_secret_blocks(prefect_server, fixture_simcore)
    db, s3 = fixture_simcore.destination_db, fixture_simcore.destination_s3
    elsewhere = f"http://127.0.0.1:{fake.port}"
    attackers = {  # what a run would point the worker at: field -> a block of the attacker's
        "destination.db.host": OsparcDeployment(db=db.model_copy(update={"host": "127.0.0.1", "port": fake.port}), s3=s3),
        "destination.s3.endpoint": OsparcDeployment(db=db, s3=s3.model_copy(update={"endpoint": elsewhere})),
        "destination.s3.bucket": OsparcDeployment(db=db, s3=s3.model_copy(update={"bucket": "attackers-bucket"})),
        "destination.db.password reference": OsparcDeployment(
            db=db.model_copy(update={"host": "127.0.0.1", "port": fake.port,
                                     "password": SecretRef(prefect_secret=victim_password)}), s3=s3),
    }
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(deployment_config(fixture_simcore)))
    saved = subprocess.run([str(BIN / "python"), "-m", "deployments.serve", "--config", str(cfg), "--name", "osparc", "--blocks-only"],
                           capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert saved.stdout.splitlines() == ["saved OsparcDeployment block osparc-source", "saved OsparcDeployment block osparc-destination",
                                         "saved ProjmigHost block osparc-host"]
    async with prefect_server.client() as client:
        for i, block in enumerate(attackers.values()):
            await block.asave(f"attacker-{i}", overwrite=True, client=client)
        await ProjmigHost(host={"dask_address": f"tcp://127.0.0.1:{fake.port}"}).asave("attacker-host", overwrite=True, client=client)

    workdir = tmp_path / "repo"
    (workdir / "deployments").mkdir(parents=True)
    for name in ("prefect.yaml", "deployments/prefect-docker.yaml", "deployments/process-pool.json", "deployments/docker-pool.json"):
        shutil.copy(REPO / name, workdir / name)
    # the operator's one edit: the destination owner
    shipped = (workdir / "prefect.yaml").read_text()
    assert shipped.count("destination_user_id: 1 ") == 1
    (workdir / "prefect.yaml").write_text(shipped.replace("destination_user_id: 1 ", f"destination_user_id: {fixture_simcore.carol} "))
    for pool, kind, template in (("projmig", "process", PROCESS_POOL), ("projmig-docker", "docker", DOCKER_POOL)):
        create_pool(prefect_server, pool, workdir, kind, workdir / "deployments" / template.name)
    for args in ([], ["--prefect-file", "deployments/prefect-docker.yaml"]):
        deployed = subprocess.run([str(BIN / "prefect"), "deploy", "--all", *args],
                                  capture_output=True, text=True, timeout=300, env=env, cwd=workdir)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    async with prefect_server.client() as client:
        for flow_name in ("migrate-project", "rollback-migration"):
            for name, pool in (("osparc", "projmig"), ("osparc-docker", "projmig-docker")):
                made = await client.read_deployment_by_name(f"{flow_name}/{name}")
                assert made.work_pool_name == pool and made.entrypoint.startswith("flows.") and made.job_variables == {}
                assert (made.parameters["source"], made.parameters["destination"], made.parameters["host_block"]) == (
                    "osparc-source", "osparc-destination", "osparc-host")
                # the shipped bounds: the closed defaults, written out
                assert made.parameters["bounds"] == {"choices": ["project_uuid", "project_uuids", "include_hidden", "dry_run"],
                                                     "destination_user_ids": [], "product_names": [], "options": []}
            work_pool = await client.read_work_pool(pool)
            assert work_pool.base_job_template["variables"]["properties"] == {}

    log = tmp_path / "worker.log"
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "projmig", "--limit", "4"],
                   prefect_server.env(PREFECT_WORKER_QUERY_SECONDS="1", **secret_env(fixture_simcore)), log)
    try:
        async with prefect_server.client() as client:
            migrate = await client.read_deployment_by_name("migrate-project/osparc")
            rollback = await client.read_deployment_by_name("rollback-migration/osparc")
            pointed = deployment_config(fixture_simcore)
            pointed["destination"]["db"].update(host="127.0.0.1", port=fake.port)
            tries: dict[str, tuple[Any, dict[str, Any]]] = {
                f"{field} (block attacker-{i})": (migrate, {"destination": f"attacker-{i}"})
                for i, field in enumerate(attackers)
            }
            tries["source block"] = (migrate, {"source": "attacker-0"})
            tries["settings with destination.db.host"] = (migrate, {"settings": pointed})
            tries["host.dask_address"] = (migrate, {"host": {"dask_address": f"tcp://127.0.0.1:{fake.port}"}})
            tries["host.schema_migrations"] = (migrate, {"host": {"schema_migrations": str(tmp_path)}})  # code that would run
            tries["host block"] = (migrate, {"host_block": "attacker-host"})
            tries["bounds"] = (migrate, {"bounds": {"choices": ["project_uuid", "destination_user_id"], "options": ["memory_limit"]}})
            tries["rollback's destination block"] = (rollback, {"destination": "attacker-0"})
            created = {
                what: await client.create_flow_run_from_deployment(
                    deployment.id, parameters={"project_uuid": sample.uuid, "destination_user_id": fixture_simcore.carol, **extra}
                    if deployment is migrate else {"project_uuid": sample.uuid, **extra})
                for what, (deployment, extra) in tries.items()
            }
            # a connection field the flow has no parameter for (or a host's, in its old place): the server
            # refuses to create the run
            for extra in ({"endpoint": elsewhere}, {"dask_address": f"tcp://127.0.0.1:{fake.port}"}):
                with pytest.raises(Exception, match="options"):
                    await client.create_flow_run_from_deployment(
                        migrate.id, parameters={"project_uuid": sample.uuid, "options": extra})
            for what, flow_run in created.items():
                final = await wait_final(client, flow_run.id)
                assert final.state.name == "Failed", (what, final.state, log.read_text())
                assert "fixed by" in one_line(final.state.message), what
        assert fake.connections == 0

        # the operator's command: a run naming its project (and owner) only, through the worker
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "migrate-project/osparc", "-p", f"project_uuid={sample.uuid}",
             "-p", f"destination_user_id={fixture_simcore.carol}", "-p", "include_hidden=true",
             "--watch", "--watch-timeout", "240"],
            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
        )
        assert run.returncode == 0, run.stdout + run.stderr + log.read_text()
        assert "Flow run finished successfully in 'Completed'" in run.stdout
    finally:
        stop(worker)
        fake.close()
    assert fake.connections == 0
    verified = await commands.verify(fixture_simcore.settings(sample.uuid, source={"include_hidden": True}), deep=True)
    assert verified.equal, [str(d) for d in verified.differences]
    async with prefect_server.client() as client:
        logs = await client.read_logs()
    text = log.read_text() + "\n".join(entry.message for entry in logs)
    for secret in secrets_of(fixture_simcore):
        assert secret not in text
