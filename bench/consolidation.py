"""The consolidation scenario (issue 25, point 7): a deployment's 50 users × 10 studies of small files
moved user by user into their own accounts (``choices.all_users``, ``match_users="email"``,
``into_folder="archive"``: every source user has an account with the same e-mail in the destination),
against a single user's migration of the same total (one owner with 500 studies of the same shape,
``source_owner_user_id`` into one destination user), and the consolidation again with its copy task
runs on a local Dask cluster of two worker processes (``options.task_runner="dask"``,
``options.dask_workers=2``; prefect-dask, in the ``test`` extra). Objects/s of each (the flow's wall
time, as the other scenarios) and their ratios; no target (2 cores).

The two arrangements live in two source databases of their own (the consolidation's users, and the
single owner) beside one bucket; the destination's template has an account for every one of them
(the same e-mail, other ids). Every measured run goes into a fresh copy of that template and an empty
bucket. Seeding: one S3 client and a few database connections for all studies (the sample builder's
per-study parts, :func:`projmig.sandbox.sample.insert_project`), not one
:func:`~projmig.sandbox.sample.build_sample_project` call per study, which makes its own clients
(~50 ms a study here against ~12 ms).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from projmig.s3 import s3_client
from projmig.s3data import data_path
from projmig.sandbox.sample import SampleProject, SampleSpec, insert_project, Uploader
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.settings import DatabaseSettings, S3Settings

from . import tools
from .env import BenchEnv, arun, empty_bucket, plain
from .scenarios import BARE, KiB, ScenarioResult, run_rounds
from .tools import Sample

FOLDER = "archive"
CONSOLIDATION, SINGLE, DASK = "projmig consolidation", "projmig single user", "projmig consolidation, dask"
SEED_CONNECTIONS = 8


@dataclass
class ConsolidationSizes:
    users: int = 50
    studies_per_user: int = 10
    nodes: int = 2
    files: int = 4  # per study
    file_size: int = 4 * KiB
    dask_workers: int = 2
    dask: bool = True

    @classmethod
    def smoke(cls) -> ConsolidationSizes:
        return cls(users=2, studies_per_user=1, files=2)

    @property
    def studies(self) -> int:
        return self.users * self.studies_per_user


@dataclass
class _Deployments:
    consolidation: DatabaseSettings  # the users' source
    single: DatabaseSettings  # the single owner's source
    s3: S3Settings
    template: str  # destination, with an account for every source user
    single_owner: int  # in the single owner's source
    single_account: int  # their destination account
    objects: int  # per arrangement
    bytes: int
    seed_seconds: float


def _spec(sizes: ConsolidationSizes, seed: int) -> SampleSpec:
    return SampleSpec(**{**BARE, "nodes": sizes.nodes, "files": sizes.files, "file_size": sizes.file_size,
                         "exact_file_size": True, "seed": seed, "name": f"study {seed}"})


def run_consolidation(env: BenchEnv, runs: int, sizes: ConsolidationSizes, options: dict[str, Any],
                      log: Callable[[str], None]) -> ScenarioResult:
    deps = arun(_deployments(env, sizes))
    log(f"  seeded {sizes.users} users × {sizes.studies_per_user} studies and one owner × {sizes.studies} studies "
        f"({deps.objects:,} objects each) in {deps.seed_seconds:.1f} s")
    result = ScenarioResult(
        "consolidation", f"{sizes.users} users × {sizes.studies_per_user} studies ({deps.objects:,} objects of "
        f"{sizes.file_size // KiB} KiB) into their own accounts (all_users, match_users=email, into_folder={FOLDER}) "
        f"vs one owner's {sizes.studies} studies", runs, deps.objects, deps.bytes, reference=f"{CONSOLIDATION} (flow)",
    )
    consolidation = {"all_users": True, "match_users": "email", "into_folder": FOLDER}
    single = {"source_owner_user_id": deps.single_owner, "destination_user_id": deps.single_account}
    steps = [
        _step(env, deps, CONSOLIDATION, deps.consolidation, consolidation, options, sizes),
        _step(env, deps, SINGLE, deps.single, single, options, sizes),
    ]
    if sizes.dask:
        dask = {**options, "task_runner": "dask", "dask_workers": sizes.dask_workers}
        steps.append(_step(env, deps, DASK, deps.consolidation, consolidation, dask, sizes))
    try:
        run_rounds(runs, steps, result, log)
    finally:
        arun(_drop(env, deps))
    _summarize(result, deps, sizes)
    return result


def _step(env: BenchEnv, deps: _Deployments, label: str, source: DatabaseSettings, choices: dict[str, Any],
          options: dict[str, Any], sizes: ConsolidationSizes) -> Callable[[], list[Sample]]:
    def step() -> list[Sample]:
        dest = env.fresh_destination(template=deps.template)
        try:
            settings = {
                "source": {"db": plain(source), "s3": plain(deps.s3)},
                "destination": {"db": plain(dest.db), "s3": plain(dest.s3)},
                "choices": choices,
                "options": dict(options),
            }
            flow, proc = tools.projmig(env, "", dest, settings=settings, label=label)
        finally:
            env.drop_destination(dest)
        detail = flow.detail
        assert detail["status"] == "migrated", detail["status"]
        assert detail["objects_copied"] == deps.objects and detail["projects"] == sizes.studies, detail
        if "all_users" in choices:
            assert detail["users"] == sizes.users, detail["users"]
        return [flow, proc]

    return step


async def _deployments(env: BenchEnv, sizes: ConsolidationSizes) -> _Deployments:
    src, dst = env.sandbox.source, env.sandbox.destination
    tag = env.tag
    users = [f"user{i:03d}" for i in range(sizes.users)]
    consolidation, ids = await src.create_simcore_database(f"bench_cons_src_{tag}", users=users)
    single, single_ids = await src.create_simcore_database(f"bench_cons_one_{tag}", users=["solo"])
    template = f"bench_cons_dst_tpl_{tag}"
    _, dst_ids = await dst.create_simcore_database(template, users=["admin", *users, "solo"], skip_user_ids=100)
    s3 = await src.create_bucket(f"bench-cons-src-{tag}")
    began = time.perf_counter()
    owners = [ids.users[u].id for u in users for _ in range(sizes.studies_per_user)]
    made = await asyncio.gather(
        seed_studies(consolidation, s3, [(owner, _spec(sizes, 1 + i)) for i, owner in enumerate(owners)]),
        seed_studies(single, s3, [(single_ids.users["solo"].id, _spec(sizes, 1 + sizes.studies + i))
                                  for i in range(sizes.studies)]),
    )
    seconds = time.perf_counter() - began
    counts = [(sum(len(p.objects) for p in projects), sum(p.total_bytes for p in projects)) for projects in made]
    assert counts[0] == counts[1], counts  # the same total in both arrangements
    return _Deployments(consolidation, single, s3, template, single_ids.users["solo"].id, dst_ids.users["solo"].id,
                        counts[0][0], counts[0][1], seconds)


async def seed_studies(db: DatabaseSettings, s3: S3Settings, studies: list[tuple[int, SampleSpec]],
                       connections: int = SEED_CONNECTIONS) -> list[SampleProject]:
    """Sample studies (``(owner id, spec)`` each; hidden children none) as the sample builder makes
    them, one transaction each, by ``connections`` connections sharing one S3 client and data path."""
    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None) - timedelta(days=30)
    made: list[SampleProject] = []
    pending = iter(studies)
    async with s3_client(s3) as client, data_path(s3, client, max_connections=Uploader.UPLOAD_CONCURRENCY) as data:
        up = Uploader(client, data, s3.bucket)

        async def worker() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(db))
            await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
            try:
                for owner, spec in pending:  # the workers share one iterator: each study is made once
                    assert not spec.hidden_children, "children: build_sample_project"
                    rng = random.Random(spec.seed)
                    project = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    study = SampleProject(uuid=project, node_ids=[], children=[], file_ids=[], objects={})
                    async with conn.transaction():
                        study.node_ids = await insert_project(conn, up, study, project, spec, rng, owner, "osparc",
                                                               now, parent=None)
                    made.append(study)
            finally:
                await conn.close()

        await asyncio.gather(*(worker() for _ in range(min(connections, len(studies)))))
    return made


async def _drop(env: BenchEnv, deps: _Deployments) -> None:
    await env.sandbox.source.drop_database(deps.consolidation.database or "")
    await env.sandbox.source.drop_database(deps.single.database or "")
    await env.sandbox.destination.drop_database(deps.template)
    await empty_bucket(deps.s3, delete=True)


def _summarize(result: ScenarioResult, deps: _Deployments, sizes: ConsolidationSizes) -> None:
    rate = {label: deps.objects / result.median(f"{label} (flow)") for label in (CONSOLIDATION, SINGLE, DASK)
            if f"{label} (flow)" in result.samples}
    process_rate = {label: deps.objects / result.median(f"{label} (process)") for label in rate}
    stages = {label: {k: round(statistics.median(s.detail["stages"].get(k, 0.0) for s in result.samples[f"{label} (flow)"]), 3)
                      for k in result.samples[f"{label} (flow)"][0].detail["stages"]} for label in rate}
    result.split = {
        "objects": deps.objects, "studies": sizes.studies, "users": sizes.users, "seed_seconds": round(deps.seed_seconds, 1),
        "objects_per_s": {k: round(v, 1) for k, v in rate.items()},
        "process_objects_per_s": {k: round(v, 1) for k, v in process_rate.items()},
        "stages": stages,
        "copy_task_runs": {label: result.samples[f"{label} (flow)"][0].detail["copy_task_runs"] for label in rate},
    }
    for label, value in rate.items():
        stage_text = ", ".join(f"{k} {v:.2f}" for k, v in stages[label].items())
        result.notes.append(f"{label:32} {value:7.1f} objects/s (whole process {process_rate[label]:.1f}); "
                            f"stages (s): {stage_text}")
    ratios = {"consolidation / single user": rate[CONSOLIDATION] / rate[SINGLE]}
    if DASK in rate:
        ratios["consolidation, dask / consolidation"] = rate[DASK] / rate[CONSOLIDATION]
        ratios["consolidation, dask / single user"] = rate[DASK] / rate[SINGLE]
    result.split["ratios"] = {k: round(v, 3) for k, v in ratios.items()}
    result.notes += [f"objects/s, {k}: {v:.2f}x" for k, v in ratios.items()]
    result.notes.append("no target (2 shared cores)")
