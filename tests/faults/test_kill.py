"""``kill -9`` of a running ``projmig migrate`` (its own process, the operator's command) at chosen
moments, then a rerun: it ends in the state an uninterrupted run leaves, and in between the
destination never shows part of the migration's rows."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from flows.migrate import migrate_project
from projmig import commands, steps
from projmig.probes import PROBE_KEY
from projmig.s3 import s3_client
from projmig.run import MigrationRun

from ..conftest import CEPH_PAIRS, SEAWEEDFS
from .conftest import MiB, Faulty, Kill, MigrationProcess, all_or_nothing, duplicate_rows, open_uploads, row_counts

pytestmark = pytest.mark.usefixtures("prefect")

BIG, PART = 24 * MiB, 6 * MiB  # the sample's multipart object and its source's part size


def moment(name: str, faulty: Faulty, uuid: str, kill: Kill) -> None:
    """Arm the kill at a moment of the run, recognised by what goes over the wire."""
    p, bucket = faulty.proxies, faulty.env.destination_s3.bucket
    if name == "listing the destination":
        p.dst_s3.after(match=f"GET /{bucket}?list-type=2&prefix={uuid}".encode(), do=kill)
    elif name == "mid-copy":  # parts go one at a time: two are finished, the third is on its way
        p.dst_s3.after(up=BIG * 5 // 8, do=kill)
    elif name == "between verify and insert":
        p.dst_db.after(match=b"pg_advisory_xact_lock", do=kill)  # the insert's first statement
    elif name == "mid-insert":
        p.dst_db.after(match=b"INSERT INTO file_meta_data", do=kill)
    else:
        raise ValueError(name)


def part_numbers(requests) -> list[int]:
    """Part numbers of UploadPart requests (of copies, not of the preflight's write probe)."""
    return [int(parse_qs(urlsplit(r.target).query)["partNumber"][0]) for r in requests
            if r.method == "PUT" and "uploadId=" in r.target and PROBE_KEY not in r.target]


MOMENTS = ["listing the destination", "mid-copy", "between verify and insert", "mid-insert"]
CASES = [pytest.param(when, (SEAWEEDFS, SEAWEEDFS), True, id=when) for when in MOMENTS] + [
    # what differs between S3 implementations is in the copy: a kill inside a multipart upload
    pytest.param("mid-copy", pair, True, id=f"mid-copy-{pair[0]}-to-{pair[1]}") for pair in CEPH_PAIRS
] + [
    # the command's run with no Prefect (no server running): the same checkpoints, from the destination
    pytest.param(when, (SEAWEEDFS, SEAWEEDFS), False, id=f"{when}-no-prefect") for when in ("mid-copy", "mid-insert")
]


@pytest.mark.parametrize("when, faulty, as_flow", CASES, indirect=["faulty"])
async def test_a_killed_migration_is_finished_by_a_rerun(faulty: Faulty, tmp_path, when: str, as_flow: bool) -> None:
    sample = await faulty.sample(files=4, directory_objects=2, multipart_size=BIG, multipart_part_size=PART,
                                 hidden_children=1, child_files=1)
    [big] = [k for k in sample.objects if k.endswith(".h5")]
    config = faulty.config_file(tmp_path / "cfg.json", sample.uuid, part_concurrency=1)
    cfg = json.loads(config.read_text())
    cfg["choices"]["include_hidden"] = True
    config.write_text(json.dumps(cfg))
    direct = faulty.direct(sample.uuid).with_choices(include_hidden=True)
    expected = steps.make_plan(*(await _graph(direct))).rows_per_table()

    kill = Kill(faulty.proxies)
    moment(when, faulty, sample.uuid, kill)
    code, out = await kill.start(config, "--prefect" if as_flow else "--no-prefect").wait()
    assert kill.process.killed and code == -9, f"{when}: the kill did not happen\n{out}"

    counts = await row_counts(direct, sample.all_projects)
    assert all_or_nothing(counts, expected) is None, f"{when}: partial rows {counts}"
    finished: set[int] = set()
    if when == "mid-copy":  # the upload is left open, with the parts that arrived whole
        [upload] = await open_uploads(direct)
        assert upload["Key"] == big
        async with s3_client(direct.destination.s3) as client:
            listed = await client.list_parts(Bucket=direct.destination.s3.bucket, Key=big, UploadId=upload["UploadId"])
        finished = {p["PartNumber"] for p in listed.get("Parts", []) if p["Size"] == PART}
        assert finished, "parts finished before the kill must be in the open upload"

    faulty.proxies.heal()
    faulty.proxies.reset_counts()
    rerun = faulty.settings(sample.uuid, part_concurrency=1).with_choices(include_hidden=True)
    report = await (migrate_project(rerun) if as_flow else commands.migrate(rerun))

    assert report.status in ("migrated", "already-migrated")
    if when == "mid-copy":  # the big object continued from its finished parts: none of them was sent again
        sent_again = part_numbers(faulty.proxies.dst_s3.requests)
        assert sent_again and not finished & set(sent_again), (finished, sent_again)
        assert report.bytes_copied <= sample.total_bytes - len(finished) * PART
    if when in ("between verify and insert", "mid-insert"):
        assert report.objects_copied == 0 and report.rows_inserted == expected
    assert await row_counts(direct, sample.all_projects) == {t: expected.get(t, 0) for t in counts}
    assert await duplicate_rows(direct) == {}
    assert await open_uploads(direct) == []
    verified = await commands.verify(direct, deep=True)
    assert verified.equal, [str(d) for d in verified.differences]


async def _graph(settings):
    async with MigrationRun.open(settings, lock=False) as run:
        report = await steps.preflight(run, probe_write=False)
        return await steps.read_graph(run, report), report


@pytest.mark.parametrize("as_flow", [True, False], ids=["flow", "no-prefect"])
async def test_ctrl_c_is_one_line_and_a_rerun_finishes(faulty: Faulty, tmp_path, as_flow: bool) -> None:
    """Ctrl-C in the middle of a copy: the command says so in one line (exit 130, no traceback), keeps
    what it copied, commits nothing; the rerun finishes the migration."""
    sample = await faulty.sample(files=4, directory_objects=2, multipart_size=BIG, multipart_part_size=PART, hidden_children=0)
    config = faulty.config_file(tmp_path / "cfg.json", sample.uuid, part_concurrency=1)
    direct = faulty.direct(sample.uuid)
    process = MigrationProcess(config, "--prefect" if as_flow else "--no-prefect")
    faulty.proxies.dst_s3.after(up=BIG // 2, do=process.interrupt)

    code, out = await process.wait()

    assert process.killed and code == 130, out
    assert out.strip().splitlines()[-1] == "error: interrupted; rerun to continue", out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert await row_counts(direct, sample.all_projects) == {t: 0 for t in await row_counts(direct, sample.all_projects)}
    report = await migrate_project(faulty.settings(sample.uuid, part_concurrency=1))
    assert report.status == "migrated" and report.objects_skipped > 0, report.headline()
    assert (await commands.verify(direct, deep=True)).equal
