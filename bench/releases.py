"""The releases scenario (issue 24, point 6): a migration across osparc releases next to the same
migration between equal releases, in the same run, at 1, 5 and 20 studies (``studies``), so that both
the extra time of one study and the cost of each additional one show.

- **across releases**: the source at ``447db39c5455`` (nodes in ``projects.workbench``, text file
  dates, ...), the destination at the package's head; the run stages the studies' rows and osparc's
  migrations bring them to head (``host.schema_migrations``: projmig/staging.py, on a PostgreSQL
  server the run starts for itself, as the CLI does by default).
- **same release**: a source at head with studies of the same shape, into the same destination.

Every database is made by osparc's own migrations (``projmig.sandbox.osparc_releases``): an empty
database brought to ``447db39c5455`` (the old source), a copy of it brought on to head (the
equal-release source), and the destination's template at head; each source holds ``max(studies)``
sample studies of alice's (``seed_study``: three nodes, two hidden job children, shared with bob and
a group, a directory entry of two objects, a soft link) and an unrelated one of zoe's, and the
objects their file rows name. Each measured run is ``projmig migrate`` (bench/run_projmig.py) of the
first N studies with their jobs into a fresh copy of the destination's template and an empty bucket.

The extra time is the median flow time across releases minus the median between equal releases at
the same N; where it goes is the staging's own measurement of its phases
(``PreflightReport.release.seconds``: read_source, server, template, create, load, migrate, total).
The cost of each additional study is the slope of a least-squares line through (N, extra time).

osparc's package: ``$PROJMIG_TEST_OSPARC_PACKAGE``, else ``../shared/osparc-simcore/packages/postgres-database``
next to the repository; without it the scenario says so in one line and measures nothing.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projmig.releases import OsparcMigrations, connect
from projmig.s3 import s3_client
from projmig.sandbox.osparc_releases import (
    WORKBENCH_REVISION,
    Study,
    create_osparc_database,
    seed_identities,
    seed_study,
    stored_keys,
)
from projmig.settings import DatabaseSettings, S3Settings

from . import tools
from .env import REPO, BenchEnv, arun, empty_bucket, plain
from .scenarios import ScenarioResult, Target, run_rounds
from .tools import Sample

PACKAGE_ENV = "PROJMIG_TEST_OSPARC_PACKAGE"
DEFAULT_PACKAGE = REPO.parent / "shared" / "osparc-simcore" / "packages" / "postgres-database"
PHASES = ("read_source", "server", "template", "create", "load", "migrate", "total")
ACROSS, SAME = "across releases", "same release"


@dataclass
class ReleasesSizes:
    studies: tuple[int, ...] = (1, 5, 20)  # studies per measured migration (each with its hidden jobs)
    children: int = 2  # hidden job projects per study
    nodes: int = 3
    extra_limit_s: float = 15.0  # extra time of one study across releases
    per_study_limit_s: float = 2.0  # extra time of each additional study

    @classmethod
    def smoke(cls) -> ReleasesSizes:
        return cls(studies=(1,), children=1, nodes=2)  # (one size: the smoke test's time; no slope)


def osparc_package() -> Path | None:
    given = os.environ.get(PACKAGE_ENV)
    if given:
        return Path(given)
    return DEFAULT_PACKAGE if DEFAULT_PACKAGE.is_dir() else None


@dataclass
class _Source:
    db: DatabaseSettings
    studies: list[Study]


@dataclass
class _Deployments:
    osparc: OsparcMigrations
    old: _Source  # at 447db39c5455
    head: _Source  # at head
    s3: S3Settings  # both sources' objects
    template: str  # the destination's database at head, on the destination's server
    carol: int  # the destination user
    objects: dict[int, int]  # N -> objects of the first N studies (with their jobs)
    made: list[tuple[Any, str]]  # (deployment, database) to drop


def label(kind: str, n: int) -> str:
    return f"projmig {kind}, {n} stud{'y' if n == 1 else 'ies'}"


def run_releases(env: BenchEnv, runs: int, sizes: ReleasesSizes, options: dict[str, Any],
                 log: Callable[[str], None]) -> ScenarioResult:
    points = sorted(set(sizes.studies))
    result = ScenarioResult(
        "releases", f"across osparc releases ({WORKBENCH_REVISION} -> head) next to the same migration between "
        f"equal releases (head -> head): {', '.join(map(str, points))} studies, each with {sizes.children} hidden jobs",
        runs, 0, 0, reference="",  # (no tool ratios: the notes compare the two kinds at each size)
    )
    package = osparc_package()
    if package is None:
        line = (f"skipped: osparc-simcore's packages/postgres-database not found (set {PACKAGE_ENV}, or put "
                f"osparc-simcore at {DEFAULT_PACKAGE.parents[1]})")
        log(f"  {line}")
        result.notes.append(line)
        result.split = {"skipped": line}
        return result
    osparc = OsparcMigrations.at(package, what=PACKAGE_ENV)
    began = time.perf_counter()
    deps = arun(_deployments(env, osparc, points, sizes))
    log(f"  osparc databases ({WORKBENCH_REVISION}, head) made by osparc's migrations and seeded with "
        f"{points[-1]} studies each in {time.perf_counter() - began:.1f} s ({osparc.package})")
    try:
        steps: list[Callable[[], Any]] = []
        for n in points:
            for kind, source in ((ACROSS, deps.old), (SAME, deps.head)):
                steps.append(_step(env, deps, kind, source, n, options))
        run_rounds(runs, steps, result, log)
    finally:
        arun(_drop(env, deps))
    _summarize(result, deps, points, sizes)
    return result


def _step(env: BenchEnv, deps: _Deployments, kind: str, source: _Source, n: int,
          options: dict[str, Any]) -> Callable[[], list[Sample]]:
    roots = [s.uuid for s in source.studies[:n]]

    def step() -> list[Sample]:
        dest = env.fresh_destination(template=deps.template)
        try:
            settings = {
                "source": {"db": plain(source.db), "s3": plain(deps.s3)},
                "destination": {"db": plain(dest.db), "s3": plain(dest.s3)},
                "choices": {"project_uuids": roots, "include_hidden": True, "destination_user_id": deps.carol},
                "host": {"schema_migrations": str(deps.osparc.package)},
                "options": dict(options),
            }
            flow, proc = tools.projmig(env, roots[0], dest, settings=settings, label=label(kind, n))
        finally:
            env.drop_destination(dest)
        detail = flow.detail
        assert detail["status"] == "migrated", detail.get("status")
        assert detail["objects_copied"] == deps.objects[n], (detail["objects_copied"], deps.objects[n])
        assert bool(detail["release"]) == (kind == ACROSS), detail["release"]
        return [flow, proc]

    return step


async def _deployments(env: BenchEnv, osparc: OsparcMigrations, points: list[int], sizes: ReleasesSizes) -> _Deployments:
    studies = points[-1]
    src, dst = env.sandbox.source, env.sandbox.destination
    tag = env.tag
    made: list[tuple[Any, str]] = []

    async def create(dep: Any, name: str, template: str | None = None) -> DatabaseSettings:
        db = await dep.create_database(name, template=template)
        made.append((dep, name))
        return db

    old = await create(src, f"bench_rel_old_{tag}")
    template = await create(dst, f"bench_rel_dst_tpl_{tag}")
    async with osparc.runner(src.database("postgres")) as src_runner, osparc.runner(dst.database("postgres")) as dst_runner:
        async def sources() -> DatabaseSettings:
            await create_osparc_database(old, osparc, WORKBENCH_REVISION, runner=src_runner)
            head = await create(src, f"bench_rel_head_{tag}", template=old.database)  # (empty: a copy is quicker)
            await create_osparc_database(head, osparc, osparc.head, runner=src_runner)
            return head

        head, _ = await asyncio.gather(sources(), create_osparc_database(template, osparc, osparc.head, runner=dst_runner))
    s3 = await src.create_bucket(f"bench-rel-src-{tag}")
    dst_ids = await seed_identities(template, users=["admin", "carol", "bob"])
    old_source, head_source = await asyncio.gather(_seed(old, s3, studies, sizes), _seed(head, s3, studies, sizes))
    objects = {}
    for n in points:
        counts = {len(await _put_objects(s.db, s3, s.studies[:n], dry=True)) for s in (old_source, head_source)}
        assert len(counts) == 1, counts  # the same objects at both releases
        objects[n] = counts.pop()
    await asyncio.gather(*(_put_objects(s.db, s3, s.studies) for s in (old_source, head_source)))
    return _Deployments(osparc, old_source, head_source, s3, template.database or "", dst_ids.users["carol"].id,
                        objects, made)


async def _seed(db: DatabaseSettings, s3: S3Settings, studies: int, sizes: ReleasesSizes) -> _Source:
    """``studies`` sample studies of alice's (the first ones migrated) and one of zoe's (never)."""
    ids = await seed_identities(db, users=["alice", "bob", "zoe"], groups=["lab"])
    conn = await connect(db)
    try:
        made = [
            await seed_study(conn, ids, "alice", name=f"bench study {i} [v2]", nodes=sizes.nodes,
                             children=sizes.children, collaborator="bob", shared_group="lab", bucket=s3.bucket, offset=i)
            for i in range(studies)
        ]
        await seed_study(conn, ids, "zoe", name="zoe's study", nodes=2, bucket=s3.bucket, offset=studies)
    finally:
        await conn.close()
    return _Source(db, made)


async def _put_objects(db: DatabaseSettings, s3: S3Settings, studies: list[Study], *, dry: bool = False) -> list[str]:
    """An object for each file row of ``studies`` (:func:`stored_keys`): the keys (put unless ``dry``)."""
    keys = await stored_keys(db, [p for study in studies for p in study.projects])
    if dry:
        return keys
    slots = asyncio.Semaphore(16)
    async with s3_client(s3) as client:
        async def put(i: int, key: str) -> None:
            async with slots:
                await client.put_object(Bucket=s3.bucket, Key=key, Body=os.urandom(100 + i % 900))

        await asyncio.gather(*(put(i, key) for i, key in enumerate(keys)))
    return keys


async def _drop(env: BenchEnv, deps: _Deployments) -> None:
    for dep, name in reversed(deps.made):
        await dep.drop_database(name)
    await empty_bucket(deps.s3, delete=True)


def _median(result: ScenarioResult, tool: str) -> float:
    return result.median(tool)


def _slope(xs: list[int], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    return statistics.linear_regression(xs, ys).slope


def _summarize(result: ScenarioResult, deps: _Deployments, points: list[int], sizes: ReleasesSizes) -> None:
    per_point: dict[str, Any] = {}
    for n in points:
        across, same = (result.samples[f"{label(k, n)} (flow)"] for k in (ACROSS, SAME))
        across_proc, same_proc = (result.samples[f"{label(k, n)} (process)"] for k in (ACROSS, SAME))
        med = statistics.median
        phases = {p: round(med(s.detail["release"]["seconds"].get(p, 0.0) for s in across), 3) for p in PHASES}
        stages = {kind: {k: round(med(s.detail["stages"].get(k, 0.0) for s in samples), 3)
                         for k in samples[0].detail["stages"]}
                  for kind, samples in ((ACROSS, across), (SAME, same))}
        per_point[str(n)] = {
            "studies": n, "projects": across[0].detail["projects"], "objects": deps.objects[n],
            "across_seconds": round(med(s.seconds for s in across), 3),
            "same_seconds": round(med(s.seconds for s in same), 3),
            "extra_seconds": round(med(s.seconds for s in across) - med(s.seconds for s in same), 3),
            "across_process_seconds": round(med(s.seconds for s in across_proc), 3),
            "same_process_seconds": round(med(s.seconds for s in same_proc), 3),
            "extra_process_seconds": round(med(s.seconds for s in across_proc) - med(s.seconds for s in same_proc), 3),
            "staging_phases": phases,
            "stages": stages,
            "staged_rows": across[0].detail["release"]["staged_rows"],
            "path": across[0].detail["release"]["path"],
        }
    xs = points
    extra = [per_point[str(n)]["extra_seconds"] for n in xs]
    staging = [per_point[str(n)]["staging_phases"]["total"] for n in xs]
    slope, staging_slope = _slope(xs, extra), _slope(xs, staging)
    process_slope = _slope(xs, [per_point[str(n)]["extra_process_seconds"] for n in xs])
    first = per_point[str(xs[0])]
    result.split = {"points": per_point, "extra_per_study_seconds": round(slope, 3),
                    "staging_per_study_seconds": round(staging_slope, 3),
                    "extra_process_per_study_seconds": round(process_slope, 3), "path": first["path"]}

    result.notes.append(f"path: {first['path'][:160]}{'...' if len(first['path']) > 160 else ''}")
    cells = [f"{n} ({per_point[str(n)]['projects']}, {per_point[str(n)]['objects']})" for n in xs]
    header = f"{'studies (projects, objects)':30}" + "".join(f"{c:>16}" for c in cells)
    result.notes.append(header + "   (medians, s)")

    def row(name: str, values: list[float]) -> None:
        result.notes.append(f"{name:30}" + "".join(f"{v:>16.2f}" for v in values))

    row("flow, across releases", [per_point[str(n)]["across_seconds"] for n in xs])
    row("flow, same release", [per_point[str(n)]["same_seconds"] for n in xs])
    row("extra (flow)", extra)
    row("extra (whole CLI process)", [per_point[str(n)]["extra_process_seconds"] for n in xs])
    for phase in PHASES:
        row(f"  staging: {phase}", [per_point[str(n)]["staging_phases"][phase] for n in xs])
    for stage in first["stages"][ACROSS]:
        row(f"  stage {stage}: across - same", [
            per_point[str(n)]["stages"][ACROSS].get(stage, 0.0) - per_point[str(n)]["stages"][SAME].get(stage, 0.0)
            for n in xs])
    row("  extra beyond the staging", [e - s for e, s in zip(extra, staging)])
    if len(xs) > 1:
        result.notes.append(f"each additional study (slope over {', '.join(map(str, xs))}): extra {slope:.3f} s "
                            f"(whole process {process_slope:.3f} s), staging {staging_slope:.3f} s")
    result.targets = [
        Target(f"extra time across releases, {xs[0]} stud{'y' if xs[0] == 1 else 'ies'} (flow)", first["extra_seconds"],
               sizes.extra_limit_s, False, " s",
               note=f"(whole CLI process: {first['extra_process_seconds']:.2f} s; staging {first['staging_phases']['total']:.2f} s)"),
    ]
    if len(xs) > 1:
        result.targets.append(Target("extra time per additional study (flow, slope)", slope, sizes.per_study_limit_s,
                                     False, " s", note=f"(whole CLI process: {process_slope:.3f} s; staging: "
                                                       f"{staging_slope:.3f} s)"))
