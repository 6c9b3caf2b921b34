"""The report's arithmetic, counted once for every flow: objects, rows, columns left out, status."""

from __future__ import annotations

from projmig.insert import InsertResult
from projmig.copier import CopyOutcome
from projmig.report import MigrationReport, StageTimer


def outcome(key: str, action: str, size: int, sent: int = 0, by: str = "") -> CopyOutcome:
    return CopyOutcome(src_key=key, dst_key=key, size=size, etag="e", action=action, bytes_sent=sent, verified_by=by)  # type: ignore[arg-type]


def test_objects_rows_and_dropped_columns_add_up_over_transactions() -> None:
    report = MigrationReport(status="migrated", objects=4, warnings=["from the plan"])
    report.count_objects([outcome("a", "copied", 10, sent=6, by="etag"), outcome("b", "server-side", 20, by="etag"),
                          outcome("c", "copied", 5, sent=5, by="sha256"), outcome("d", "skipped", 7)])
    assert (report.objects_copied, report.bytes_copied, report.objects_skipped, report.bytes_skipped) == (3, 31, 1, 7)  # bytes sent; a server-side copy: its size
    assert report.verified_by == {"etag": 2, "sha256": 1}

    dropped = {"projects": ["old_column"]}
    report.count_inserted(InsertResult(inserted={"projects": 1, "file_meta_data": 3}, dropped_columns=dropped))
    report.count_inserted(InsertResult(inserted={"projects": 2}, already_present=["p2"], dropped_columns=dropped))
    assert report.rows_inserted == {"projects": 3, "file_meta_data": 3} and report.rows == 6
    assert report.already_present == ["p2"]
    assert report.warnings == ["from the plan", "projects: source columns not in the destination, left out: old_column"]


def test_what_is_there_after_copying_failed_midway() -> None:
    report = MigrationReport(status="migrated")
    report.count_present([outcome("a", "skipped", 3), outcome("b", "skipped", 4)], planned=5)
    assert (report.objects_skipped, report.bytes_skipped, report.objects_copied) == (2, 7, 0)
    assert report.warnings == ["copying failed midway: 2 of 5 objects are in the destination (copied by this run or an earlier one)"]


def test_the_status_a_run_ends_with() -> None:
    nothing = MigrationReport(status="migrated")
    nothing.count_inserted(InsertResult(inserted={"projects": 0}))
    nothing.conclude({"copy": 1.5})
    assert nothing.status == "already-migrated" and nothing.seconds == {"copy": 1.5}

    rows_only = MigrationReport(status="migrated")
    rows_only.count_inserted(InsertResult(inserted={"projects": 1}))
    rows_only.conclude({})
    assert rows_only.status == "migrated"

    some = MigrationReport(status="migrated", failed={"r1": "2 objects not copied"})
    some.conclude({}, roots=2)
    assert some.status == "partial" and some.error is None

    every = MigrationReport(status="migrated", failed={"r1": "a", "r2": "b"})
    every.conclude({}, roots=2)
    assert every.status == "failed" and every.error == "every project failed: a; b"


def test_stage_times_add_up() -> None:
    timer = StageTimer()
    timer.add("copy", 1.25)
    with timer("verify"):
        pass
    timer.add("copy", 0.5)
    assert timer.seconds["copy"] == 1.75 and 0 <= timer.seconds["verify"] < 5
