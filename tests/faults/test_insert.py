"""The destination's rows arrive in one transaction: a connection cut while it runs leaves all of
them or none, and the rerun finishes the job without copying an object again or adding a row twice."""

from __future__ import annotations

import pytest

from flows.migrate import migrate_project
from projmig import commands, insert, steps
from projmig.errors import InsertError
from projmig.probes import PROBE_KEY
from projmig.run import MigrationRun

from .conftest import Faulty, all_or_nothing, duplicate_rows, open_uploads, row_counts

pytestmark = pytest.mark.usefixtures("prefect")


async def migrated_sample(faulty: Faulty):
    sample = await faulty.sample(files=6, hidden_children=2, child_files=1, multipart_size=0, directory_objects=3)
    settings = faulty.settings(sample.uuid, s3_max_attempts=2)
    settings = settings.with_choices(include_hidden=True)
    direct = faulty.direct(sample.uuid).with_choices(include_hidden=True)
    return sample, settings, direct


async def cut_then_rerun(faulty: Faulty, match: bytes, *, deep: bool) -> None:
    """Cut the destination database's connection after a message containing ``match``: the insert
    fails, rolled back, no row and no open upload left; once healed, the rerun inserts each row once
    and sends no object again (``deep``: the rows and the objects' bytes verified, else sizes and ETags)."""
    sample, settings, direct = await migrated_sample(faulty)
    expected = steps.make_plan(*(await _graph(direct))).rows_per_table()
    faulty.proxies.dst_db.after(match=match, do="cut")

    with pytest.raises(InsertError) as failed:
        await migrate_project(settings)
    assert "rolled back" in str(failed.value)
    assert faulty.proxies.dst_db.faults, "the cut must have happened"
    assert sum((await row_counts(direct, sample.all_projects)).values()) == 0
    assert await open_uploads(direct) == []

    faulty.proxies.heal()
    faulty.proxies.dst_s3.reset_counts()
    report = await migrate_project(settings)

    assert report.status == "migrated" and report.rows_inserted == expected
    assert report.objects_copied == 0 and report.copy_task_runs == 0  # every object was already there
    # no object was sent again: PUTs only of parts the preflight's write probe puts into an upload it aborts
    puts = [r.target for r in faulty.proxies.dst_s3.requests if r.method == "PUT"]
    assert puts and all(f"/{sample.uuid}/{PROBE_KEY}?" in t and "uploadId=" in t for t in puts), puts
    assert await row_counts(direct, sample.all_projects) == {t: expected.get(t, 0) for t in await row_counts(direct, sample.all_projects)}
    assert await duplicate_rows(direct) == {}
    verified = await commands.verify(direct, deep=deep)
    assert verified.equal, [str(d) for d in verified.differences]


async def test_a_cut_before_commit_leaves_no_row_and_the_rerun_inserts_each_once(faulty: Faulty) -> None:
    # mid-transaction: projects, nodes and access rights are in; the files are on their way
    await cut_then_rerun(faulty, b"INSERT INTO file_meta_data", deep=True)


async def test_a_cut_during_copy_leaves_no_row_and_the_rerun_inserts_each_once(
    faulty: Faulty, monkeypatch: pytest.MonkeyPatch
) -> None:
    # large tables go in with COPY (projmig.insert.COPY_FROM_ROWS rows and up): here from 2 rows on,
    # so that this small project's file rows take that path
    monkeypatch.setattr(insert, "COPY_FROM_ROWS", 2)
    await cut_then_rerun(faulty, b"COPY", deep=False)


async def test_a_commit_whose_answer_is_lost_is_found_complete_by_the_rerun(faulty: Faulty) -> None:
    sample, settings, direct = await migrated_sample(faulty)
    expected = steps.make_plan(*(await _graph(direct))).rows_per_table()
    db = faulty.proxies.dst_db

    def lose_the_answer() -> None:  # COMMIT reaches the server; its reply does not come back
        db.after(down=1, do="cut")

    db.after(match=b"COMMIT", do=lose_the_answer)
    with pytest.raises(InsertError) as failed:
        await migrate_project(settings)
    assert len(db.faults) == 2, db.faults
    counts = await row_counts(direct, sample.all_projects)
    assert all_or_nothing(counts, expected) is None, counts
    assert "nothing was inserted" not in str(failed.value), "the commit may well have happened"

    db.heal()
    report = await migrate_project(settings)
    assert report.status == "already-migrated" and report.rows == 0
    assert sorted(report.already_present) == sorted(sample.all_projects)
    assert await duplicate_rows(direct) == {}
    verified = await commands.verify(direct, deep=False)
    assert verified.equal, [str(d) for d in verified.differences]


async def _graph(settings):
    async with MigrationRun.open(settings, lock=False) as run:
        report = await steps.preflight(run, probe_write=False)
        return await steps.read_graph(run, report), report
