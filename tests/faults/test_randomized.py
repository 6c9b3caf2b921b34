"""Randomized faults: many trials, each a migration that meets a fault at a random point, then reruns
until it succeeds; every trial must end exactly where an uninterrupted run ends.

A trial cuts the source S3 (GET bodies, listings), the destination S3 (PUT bodies, parts) or the
destination database (either direction) after a random number of bytes, or ``kill -9``s a
``projmig migrate`` process at a random point of its traffic. After a cut the network either comes
back at once (retries may absorb it) or stays down until the run has failed. Reruns happen in this
process (a flow call) and may meet further faults; at most 5 reruns. Between runs the destination
must hold all of the migration's rows or none, and no object of the wrong size. At the end:
destination objects byte-identical (SHA-256) to the source, rows equal to an uninterrupted run's
(modulo sequence numbers and insert-time stamps), no duplicate row, no open multipart upload. Every
failed run must have raised one of projmig's errors (one line for the operator, not a traceback).

Reproducible: every fault (kind, place, byte count, what follows) comes from ``PROJMIG_FAULT_SEED``
(default: a fresh seed, printed) and the trial's number; only thread timing varies between runs. ``PROJMIG_FAULT_TRIALS`` sets the number of trials (default 20),
``PROJMIG_FAULT_ONLY=7,12`` replays some trials of a seed. The last line printed holds the totals.

Trials share the servers, the proxies and one source project; each gets a destination database
and bucket of its own (so that the copy task's cache, keyed by bucket, is its own too).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import steps
from projmig.errors import ProjmigError
from projmig.marks import is_ledger_key
from projmig.s3 import s3_client
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.schema import PROJECT_TABLES
from projmig.settings import MigrationSettings
from projmig.run import MigrationRun

from ..conftest import unique
from .conftest import (
    MiB,
    Faulty,
    Kill,
    all_or_nothing,
    destination_keys,
    duplicate_rows,
    open_uploads,
    retry,
    row_counts,
)

pytestmark = pytest.mark.usefixtures("prefect")

TRIALS = int(os.environ.get("PROJMIG_FAULT_TRIALS", "20"))
SEED = int(os.environ.get("PROJMIG_FAULT_SEED") or random.SystemRandom().randrange(10**6))
ONLY = {int(i) for i in os.environ.get("PROJMIG_FAULT_ONLY", "").replace(",", " ").split()}
MAX_RERUNS = 5
RUN_TIMEOUT = 240  # seconds for one migration run; a normal one takes a few
OPTIONS = {"s3_max_attempts": 3}  # retries still happen, and an outage fails a run in seconds

# (proxy, direction) a fault can follow; the byte count is drawn from an uninterrupted run's traffic there
WHERE = {
    "s3-get": [("src_s3", "down")],
    "s3-put": [("dst_s3", "up")],
    "db": [("dst_db", "up"), ("dst_db", "down")],
    "kill": [("src_s3", "down"), ("dst_s3", "up"), ("dst_db", "up"), ("dst_db", "down")],
}
KINDS = ["s3-get", "s3-put", "db", "kill", None, None]  # None: one of the in-process kinds; one trial in 6 is a kill

# columns the destination fills itself at insert time: sequence numbers (a rolled-back insert uses
# some up) and now() of the insert (trigger or default)
SERVER_SET = {
    "projects": {"id"},
    "projects_nodes": {"project_node_id", "modified"},
    "projects_metadata": {"modified"},
    "project_to_groups": {"created", "modified"},
}


@dataclass
class Fault:
    kind: str
    proxy: str
    direction: str
    fraction: float  # of the uninterrupted run's bytes at that proxy and direction
    then: str  # what new connections meet after the cut: "heal" or "refuse" (until the run has failed)

    def __str__(self) -> str:
        return f"{self.kind}@{self.proxy}.{self.direction}:{self.fraction:.4f}/{self.then}"


@dataclass
class TrialPlan:
    number: int
    first: Fault
    later: list[Fault | None]  # a fault for rerun 1, 2, ... (None: a clean rerun)


def draw_fault(rng: random.Random, kind: str) -> Fault:
    proxy, direction = rng.choice(WHERE[kind])
    # half of the points spread over the bytes (mostly object data), half log-spread (the first
    # requests, listings, preflight queries, small objects, commits get their share)
    fraction = rng.random() if rng.random() < 0.5 else math.exp(rng.uniform(math.log(1e-5), 0.0))
    then = "refuse" if kind == "kill" else rng.choice(["heal", "refuse"])
    return Fault(kind, proxy, direction, fraction, then)


def trial_plan(seed: int, number: int) -> TrialPlan:
    rng = random.Random(f"{seed}/{number}")  # independent of what earlier trials drew
    kind = KINDS[number % len(KINDS)] or rng.choice(["s3-get", "s3-put", "db"])
    first = draw_fault(rng, kind)
    later = [
        draw_fault(rng, rng.choice(["s3-get", "s3-put", "db"])) if rerun <= 3 and rng.random() < 0.3 else None
        for rerun in range(1, MAX_RERUNS + 1)
    ]
    return TrialPlan(number, first, later)


def plans(seed: int, trials: int) -> list[TrialPlan]:
    numbers = sorted(ONLY) if ONLY else range(trials)
    rng = random.Random(seed)
    made = [trial_plan(seed, n) for n in numbers]
    rng.shuffle(made)  # kill trials (one in six) spread over the run in a seeded order
    return made


@dataclass
class Totals:
    trials: int = 0
    faults: int = 0
    reruns: int = 0
    bytes_resent: int = 0
    kills: int = 0
    absorbed: int = 0  # faults that retries absorbed: the run still succeeded
    errors: dict[str, int] = field(default_factory=dict)  # what failed runs raised, by type


@dataclass
class Reference:
    """What an uninterrupted run does and leaves."""

    traffic: dict[tuple[str, str], int]  # bytes per (proxy, direction)
    dst_up: int
    rows: dict[str, list[str]]
    keys: dict[str, int]  # destination key -> size
    sha256: dict[str, str]  # destination key -> SHA-256 of its source object
    uuids: list[str]


# -- checks ---------------------------------------------------------------------------------------


async def dump_rows(settings: MigrationSettings, uuids: list[str]) -> dict[str, list[str]]:
    """The migration's rows per table, without the columns the destination sets itself, sorted (the
    destination bucket's name, different in every trial, as a placeholder)."""
    bucket = settings.destination.s3.bucket
    conn = await asyncpg.connect(asyncpg_dsn(settings.destination.db))
    try:
        dumped = {}
        for table in PROJECT_TABLES:
            column = {"projects": "uuid", "file_meta_data": "project_id"}.get(table, "project_uuid")
            rows = await conn.fetch(f'SELECT * FROM "{table}" WHERE {column} = ANY($1::text[])', uuids)
            skip = SERVER_SET.get(table, set())
            dumped[table] = sorted(
                json.dumps(
                    {k: "<destination bucket>" if k == "bucket_name" and v == bucket else v
                     for k, v in dict(r).items() if k not in skip},
                    sort_keys=True, default=str,
                )
                for r in rows
            )
        return dumped
    finally:
        await conn.close()


async def object_hashes(s3, keys: list[str]) -> dict[str, str]:
    async with s3_client(s3) as client:
        sem = asyncio.Semaphore(8)

        async def one(key: str) -> tuple[str, str]:
            async with sem:
                async def get() -> bytes:
                    resp = await client.get_object(Bucket=s3.bucket, Key=key)
                    async with resp["Body"] as body:
                        return await body.read()

                return key, hashlib.sha256(await retry(f"GET {key}", get)).hexdigest()

        return dict(await asyncio.gather(*(one(k) for k in keys)))


async def remove_bucket(s3) -> None:
    async with s3_client(s3) as client:
        for upload in (await client.list_multipart_uploads(Bucket=s3.bucket)).get("Uploads", []):
            await client.abort_multipart_upload(Bucket=s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
        async for page in pages:
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                await client.delete_objects(Bucket=s3.bucket, Delete={"Objects": keys})
        await client.delete_bucket(Bucket=s3.bucket)


def traffic(faulty: Faulty) -> dict[tuple[str, str], int]:
    p = faulty.proxies
    return {(name, d): getattr(p, name).bytes[d] for name in ("src_s3", "dst_s3", "dst_db") for d in ("up", "down")}


# -- one trial --------------------------------------------------------------------------------------


class Trial:
    def __init__(self, base: Faulty, plan: TrialPlan, uuid: str, ref: Reference, tmp: Path):
        self.base, self.plan, self.uuid, self.ref, self.tmp = base, plan, uuid, ref, tmp
        self.faulty: Faulty | None = None
        self.log: list[str] = []
        self.faults = 0
        self.reruns = 0
        self.dst_up = 0
        self.errors: list[str] = []

    def where(self) -> str:
        return f"seed {SEED}, trial {self.plan.number} ({self.plan.first}; later {[str(f) for f in self.plan.later if f]})"

    async def setup(self) -> None:
        sandbox = self.base.env.sandbox
        name = unique("t_rnd").replace("-", "_")
        db = await sandbox.destination.create_database(name, template="tpl_fixture")
        s3 = await sandbox.destination.create_bucket(unique("rnd"))
        env = dataclasses.replace(self.base.env, destination_db=db, destination_s3=s3)
        self.faulty = Faulty(env, self.base.proxies)

    async def teardown(self) -> None:
        assert self.faulty is not None
        await remove_bucket(self.faulty.direct(self.uuid).destination.s3)
        await self.faulty.env.sandbox.destination.drop_database(self.faulty.env.destination_db.database or "")

    def settings(self) -> MigrationSettings:
        return self.faulty.settings(self.uuid, **OPTIONS).with_choices(include_hidden=True)

    def direct(self) -> MigrationSettings:
        return self.faulty.direct(self.uuid).with_choices(include_hidden=True)

    def arm(self, fault: Fault, do: Any = "cut") -> None:
        proxy = getattr(self.faulty.proxies, fault.proxy)
        at = max(1, int(fault.fraction * self.ref.traffic[(fault.proxy, fault.direction)]))
        proxy.after(**{fault.direction: at}, do=do, then=fault.then)

    def fresh_proxies(self) -> None:
        self.faulty.proxies.heal()
        self.faulty.proxies.reset_counts()

    def count_run(self) -> int:
        """Faults injected during the in-process run that just ended."""
        p = self.faulty.proxies
        injected = len(p.faults())
        self.faults += injected
        self.dst_up += p.dst_s3.up
        return injected

    async def run(self) -> None:
        """The first run with its fault, then reruns until one succeeds."""
        ok = await (self.killed_run() if self.plan.first.kind == "kill" else self.flow_run(self.plan.first))
        while not ok:
            await self.between_runs()
            if self.reruns == MAX_RERUNS:
                raise AssertionError(f"{self.where()}: no success after {MAX_RERUNS} reruns: {self.log}")
            self.reruns += 1
            ok = await self.flow_run(self.plan.later[self.reruns - 1])

    async def flow_run(self, fault: Fault | None) -> bool:
        self.fresh_proxies()
        if fault is not None:
            self.arm(fault)
        deadline = asyncio.timeout(RUN_TIMEOUT)
        try:
            async with deadline:
                report = await migrate_project(self.settings())
        except Exception as exc:  # the run failed: what it said goes into the trial's log
            assert not deadline.expired(), f"{self.where()}: a run took more than {RUN_TIMEOUT} s: {self.log}"
            injected = self.count_run()
            first = (str(exc).splitlines() or [""])[0][:200]
            self.errors.append(type(exc).__name__)
            self.log.append(f"run {self.reruns}: {fault} -> {injected} faults, {type(exc).__name__}: {first}")
            assert injected, f"{self.where()}: a run failed without an injected fault: {type(exc).__name__}: {exc}"
            # an operator gets one line naming what failed, not a traceback
            assert isinstance(exc, ProjmigError), f"{self.where()}: not a projmig error: {type(exc).__name__}: {exc}"
            return False
        injected = self.count_run()
        self.log.append(f"run {self.reruns}: {fault} -> {injected} faults, {report.status}")
        assert report.status in ("migrated", "already-migrated"), f"{self.where()}: {report.status} {self.log}"
        return True

    async def killed_run(self) -> bool:
        """``projmig migrate`` in a process of its own, ``kill -9``ed at the fault's point."""
        self.fresh_proxies()
        config = self.faulty.config_file(self.tmp / f"cfg-{self.plan.number}.json", self.uuid, **OPTIONS)
        data = json.loads(config.read_text())
        data["choices"]["include_hidden"] = True
        config.write_text(json.dumps(data))
        kill = Kill(self.faulty.proxies)
        self.arm(self.plan.first, do=kill)
        code, out = await kill.start(config).wait(timeout=RUN_TIMEOUT)
        self.dst_up += self.faulty.proxies.dst_s3.up
        self.faults += kill.process.killed  # one fault: the kill (the cuts after it only stand in for it)
        self.log.append(f"run 0: {self.plan.first} -> {'killed' if kill.process.killed else f'exit {code}'}")
        if not kill.process.killed:  # the point lay beyond what this run sent: it simply finished
            assert code == 0, f"{self.where()}: the migration process failed without a fault (exit {code}):\n{out[-3000:]}"
            return True
        assert code == -9, f"{self.where()}: exit {code}, faults {self.faulty.proxies.faults()}"
        return False

    async def between_runs(self) -> None:
        """What a failed run may leave: all rows or none, and no object of the wrong size."""
        direct = self.direct()
        counts = await row_counts(direct, self.ref.uuids)
        expected = {t: len(rows) for t, rows in self.ref.rows.items() if rows}
        partial = all_or_nothing(counts, expected)
        assert partial is None, f"{self.where()}: partial rows visible after a failed run: {partial}; {self.log}"
        present = await destination_keys(direct)
        # besides the copies: projmig's records of the uploads it keeps open for the rerun (projmig/marks.py)
        wrong = {k: n for k, n in present.items() if self.ref.keys.get(k) != n and not is_ledger_key(k)}
        assert not wrong, f"{self.where()}: objects of the wrong size or unknown after a failed run: {wrong}; {self.log}"

    async def check_end_state(self) -> None:
        direct = self.direct()
        why = f"{self.where()}: {self.log}"
        assert await open_uploads(direct) == [], f"open multipart uploads left; {why}"
        assert await duplicate_rows(direct) == {}, why
        assert await dump_rows(direct, self.ref.uuids) == self.ref.rows, f"rows differ from an uninterrupted run's; {why}"
        assert await destination_keys(direct) == self.ref.keys, f"other objects than an uninterrupted run's; {why}"
        got = await object_hashes(direct.destination.s3, sorted(self.ref.keys))
        differ = sorted(k for k in got if got[k] != self.ref.sha256[k])
        assert not differ, f"objects differ from their source (SHA-256): {differ}; {why}"


# -- the test ---------------------------------------------------------------------------------------


@pytest.mark.timeout(600 + 30 * TRIALS)  # a trial takes 3-15 s; a hang fails it instead of blocking CI
async def test_randomized_faults_always_end_in_the_uninterrupted_state(faulty: Faulty, tmp_path, capsys) -> None:
    started = time.monotonic()
    sample = await faulty.sample(
        files=6, directory_objects=3, multipart_size=11 * MiB, multipart_part_size=5 * MiB, hidden_children=1, child_files=1,
    )
    to_run = plans(SEED, TRIALS)

    # an uninterrupted run: its traffic scales the fault points, its result is what every trial must reach
    faulty.proxies.heal()
    faulty.proxies.reset_counts()
    settings = faulty.settings(sample.uuid, **OPTIONS).with_choices(include_hidden=True)
    direct = faulty.direct(sample.uuid).with_choices(include_hidden=True)
    report = await migrate_project(settings)
    assert report.status == "migrated" and not faulty.proxies.faults()
    plan = steps.make_plan(*(await _graph(direct)))
    ref = Reference(
        traffic=traffic(faulty), dst_up=faulty.proxies.dst_s3.up,
        rows=await dump_rows(direct, sample.all_projects), keys=await destination_keys(direct),
        sha256={}, uuids=sample.all_projects,
    )
    source_sha = await object_hashes(direct.source.s3, [c.src_key for c in plan.copies])
    ref.sha256 = {c.dst_key: source_sha[c.src_key] for c in plan.copies}
    assert sorted(ref.keys) == sorted(ref.sha256) and all(ref.rows.values())
    dst_sha = await object_hashes(direct.destination.s3, sorted(ref.keys))
    assert dst_sha == ref.sha256, "the uninterrupted run itself must copy every object exactly"
    with capsys.disabled():
        print(f"\nrandomized faults: seed {SEED} (PROJMIG_FAULT_SEED), {len(to_run)} trials (PROJMIG_FAULT_TRIALS); "
              f"an uninterrupted run: {len(ref.keys)} objects, {sum(ref.keys.values())} bytes, traffic "
              + ", ".join(f"{p}.{d} {n}" for (p, d), n in ref.traffic.items()), flush=True)

    totals = Totals()
    for plan_ in to_run:
        trial = Trial(faulty, plan_, sample.uuid, ref, tmp_path)
        t0 = time.monotonic()
        await trial.setup()
        try:
            await trial.run()
            faulty.proxies.heal()
            await trial.check_end_state()
        finally:
            faulty.proxies.heal()
        await trial.teardown()
        totals.trials += 1
        totals.faults += trial.faults
        totals.reruns += trial.reruns
        totals.bytes_resent += max(0, trial.dst_up - ref.dst_up)
        totals.kills += plan_.first.kind == "kill" and "killed" in trial.log[0]
        totals.absorbed += trial.reruns == 0 and trial.faults > 0 and plan_.first.kind != "kill"
        for name in trial.errors:
            totals.errors[name] = totals.errors.get(name, 0) + 1
        with capsys.disabled():
            raised = f" ({', '.join(trial.errors)})" if trial.errors else ""
            print(f"trial {plan_.number}: {plan_.first} -> {trial.faults} faults, {trial.reruns} reruns{raised}, "
                  f"{time.monotonic() - t0:.1f} s", flush=True)

    data = sum(ref.keys.values())
    with capsys.disabled():
        print(f"failed runs raised: {totals.errors}; processes killed: {totals.kills}; faults absorbed by retries: "
              f"{totals.absorbed}; {time.monotonic() - started:.0f} s")
        print(f"randomized faults totals: seed={SEED} trials={totals.trials} faults={totals.faults} "
              f"reruns={totals.reruns} bytes_resent={totals.bytes_resent} "
              f"({totals.bytes_resent / (data * max(1, totals.trials)):.1%} of the {totals.trials} x {data} bytes moved)",
              flush=True)
    assert totals.faults >= totals.trials // 2, "most trials must actually meet their fault"


async def _graph(settings):
    async with MigrationRun.open(settings, lock=False) as run:
        report = await steps.preflight(run, probe_write=False)
        return await steps.read_graph(run, report), report
