"""What a migration did, for people: one headline, a table per project, and the notes that matter;
and its arithmetic (objects copied or found, rows inserted, columns left out, the final status),
counted here once for every flow."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .plan import MigrationPlan, PlannedProject
from .text import markdown_text
from .units import human_bytes

if TYPE_CHECKING:
    from .insert import InsertResult
    from .copier import CopyOutcome
    from .people import Match

Status = Literal["migrated", "already-migrated", "dry-run", "failed", "partial"]  # partial: some projects failed


class UserRow(BaseModel):
    """One source user's part of a run across accounts (owners matched: ``choices.match_users``)."""

    source: str  # "e-mail (user id)" in the source
    destination: str | None = None  # their account in the destination
    studies: int = 0  # root projects of theirs in this run
    projects: int = 0  # ... with their hidden jobs
    objects: int = 0
    bytes: int = 0
    failed: int = 0  # root projects of theirs that failed
    skipped: str | None = None  # why their projects were left out (choices.skip_unmatched)


class MigrationReport(BaseModel):
    status: Status
    users: list[UserRow] = Field(default_factory=list)  # one row per source owner, when owners are matched
    projects: list[PlannedProject] = Field(default_factory=list)
    rows_planned: dict[str, int] = Field(default_factory=dict)
    rows_inserted: dict[str, int] = Field(default_factory=dict)
    already_present: list[str] = Field(default_factory=list)  # migrated by an earlier run: left as they are
    files: int = 0
    objects: int = 0
    objects_copied: int = 0
    objects_skipped: int = 0
    bytes_total: int = 0
    bytes_copied: int = 0  # uploaded (or copied server-side) by this run
    bytes_skipped: int = 0
    copy_task_runs: int = 0
    seconds: dict[str, float] = Field(default_factory=dict)
    left_behind: dict[str, int] = Field(default_factory=dict)
    dropped_groups: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    schema_drift: list[str] = Field(default_factory=list)  # columns dropped or defaulted between revisions
    failed: dict[str, str] = Field(default_factory=dict)  # root project (source uuid) -> why it was not migrated
    verification: str = ""  # how objects were proven whole (the preflight's probes)
    verified_by: dict[str, int] = Field(default_factory=dict)  # objects copied by this run, per method that proved them
    error: str | None = None

    @classmethod
    def from_plan(cls, plan: MigrationPlan, status: Status) -> MigrationReport:
        return cls(
            status=status,
            projects=plan.projects,
            rows_planned=plan.rows_per_table(),
            files=sum(p.files for p in plan.projects),
            objects=len(plan.copies),
            bytes_total=plan.total_bytes,
            left_behind=plan.left_behind,
            dropped_groups=plan.dropped_groups,
            warnings=plan.warnings,
            schema_drift=plan.schema_drift,
        )

    def count_objects(self, outcomes: Iterable[CopyOutcome]) -> None:
        """Objects and bytes copied or already there, and what proved each copy whole."""
        outcomes = list(outcomes)
        copied = [o for o in outcomes if o.action != "skipped"]
        self.objects_copied = len(copied)
        self.objects_skipped = len(outcomes) - len(copied)
        self.bytes_copied = sum(o.bytes_sent if o.action == "copied" else o.size for o in copied)
        self.bytes_skipped = sum(o.size for o in outcomes if o.action == "skipped")
        self.verified_by = dict(sorted(Counter(o.verified_by for o in copied).items()))

    def count_present(self, there: list[CopyOutcome], planned: int) -> None:
        """Copying failed midway, so which objects this run copied is not known: count what is in the
        destination now (``there``, of ``planned``), and say so."""
        self.objects_skipped, self.bytes_skipped = len(there), sum(o.size for o in there)
        self.warnings.append(
            f"copying failed midway: {len(there)} of {planned} objects are in the destination "
            "(copied by this run or an earlier one)"
        )

    def count_inserted(self, result: InsertResult) -> None:
        """What one insert transaction did, added to the others': rows per table, the projects it found
        there from an earlier run, and the source columns the destination lacks (one warning a table)."""
        self.already_present += result.already_present
        for table, n in result.inserted.items():
            self.rows_inserted[table] = self.rows_inserted.get(table, 0) + n
        for table, columns in result.dropped_columns.items():
            note = f"{table}: source columns not in the destination, left out: {', '.join(columns)}"
            if note not in self.warnings:
                self.warnings.append(note)

    def conclude(self, seconds: dict[str, float], roots: int = 1) -> None:
        """The end of a run that got past copying: its time per stage, and its status: ``partial``
        when some of its ``roots`` root projects failed (:attr:`failed`), ``failed`` when all did,
        ``already-migrated`` when it copied and inserted nothing."""
        self.seconds = dict(seconds)
        if self.failed:
            self.status = "partial"
            if len(self.failed) == roots:
                self.status, self.error = "failed", f"every project failed: {'; '.join(self.failed.values())}"
        elif self.objects_copied == 0 and self.rows == 0:
            self.status = "already-migrated"

    def verified_line(self) -> str:
        """e.g. ``verified: 3 by checksum SHA256, 1 by sha256`` (the objects this run copied)."""
        return "verified: " + ", ".join(f"{n} by {how}" for how, n in self.verified_by.items()) if self.verified_by else ""

    @property
    def rows(self) -> int:
        return sum(self.rows_inserted.values())

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def headline(self) -> str:
        n = len(self.projects)
        what = f"{n} project{'s' if n != 1 else ''}"
        if self.status == "dry-run":
            return (
                f"dry run: would migrate {what}: {self.files} files, {self.objects} objects "
                f"({human_bytes(self.bytes_total)}), {sum(self.rows_planned.values())} rows; nothing was written"
            )
        if self.status == "already-migrated":
            return (
                f"nothing to do: {what} already migrated, left as they are ({self.bytes_copied} bytes copied, "
                f"{self.rows} rows inserted)"
            )
        if self.status == "failed":
            return f"failed: {self.error}"
        if self.status == "partial":
            roots = len({p.root_uuid or p.src_uuid for p in self.projects})
            return (
                f"partly migrated: {len(self.failed)} of {roots} root projects failed (rerun to retry them); "
                f"{self.objects_copied} objects copied ({human_bytes(self.bytes_copied)}), {self.rows} rows inserted"
            )
        frozen = len(self.already_present)
        if frozen:
            moved = n - frozen
            what = f"{moved} project{'s' if moved != 1 else ''}"
        left = f"; {frozen} already migrated, left as they are" if frozen else ""
        return (
            f"migrated {what}: {self.objects_copied} objects copied ({human_bytes(self.bytes_copied)}), "
            f"{self.objects_skipped} already there, {self.rows} rows inserted in {self.total_seconds:.1f} s{left}"
        )

    def project_rows(self) -> list[dict[str, object]]:
        return [
            {
                "project": p.dst_uuid if p.dst_uuid == p.src_uuid else f"{p.src_uuid} -> {p.dst_uuid}",
                "name": p.name,
                "kind": "hidden job" if p.hidden else "study",
                "nodes": p.nodes,
                "files": p.files,
                "objects": p.objects,
                "bytes": p.bytes,
            }
            for p in self.projects
        ]

    def count_users(self, matches: Iterable[Match], skipped: dict[str, str], owners: dict[str, int | None]) -> None:
        """A row per source owner (``matches``: each one's account, :mod:`projmig.people`; ``skipped``:
        root -> why left out; ``owners``: project -> its source owner): their studies, objects and bytes."""
        rows: dict[int, UserRow] = {}
        for match in matches:
            rows[match.source.id] = UserRow(
                source=match.source.describe(), destination=match.destination.describe() if match.destination else None,
                skipped=match.problem if match.problem else None)
        for project in self.projects:
            owner = owners.get(project.root_uuid or project.src_uuid)
            row = rows.get(owner) if owner is not None else None
            if row is None:
                continue
            row.projects += 1
            row.studies += project.root_uuid in (None, project.src_uuid)
            row.objects += project.objects
            row.bytes += project.bytes
            row.failed += project.src_uuid in self.failed
        for root, why in skipped.items():
            owner = owners.get(root)
            if owner in rows:
                rows[owner].skipped = why.split(": ", 1)[-1]
        self.users = sorted(rows.values(), key=lambda r: r.source)

    def user_rows(self) -> list[dict[str, object]]:
        return [
            {"user": r.source, "account": r.destination or "-", "studies": r.studies, "projects": r.projects,
             "objects": r.objects, "bytes": r.bytes, "status": _user_status(r)}
            for r in self.users
        ]

    def to_markdown(self) -> str:
        """The report as markdown; every name, key and message in it is escaped (:func:`markdown_text`)."""
        lines = [f"## projmig: {markdown_text(self.headline())}", ""]
        if self.users:
            lines += ["| user | account | studies | objects | bytes | status |", "|---|---|---:|---:|---:|---|"]
            for u in self.user_rows():
                lines.append(f"| {markdown_text(u['user'])} | {markdown_text(u['account'])} | {u['studies']} | "
                             f"{u['objects']} | {human_bytes(u['bytes'])} | {markdown_text(u['status'])} |")  # type: ignore[arg-type]
            lines.append("")
        lines += ["| project | name | kind | nodes | files | objects | bytes |", "|---|---|---|---:|---:|---:|---:|"]
        for r in self.project_rows():
            lines.append(
                f"| `{r['project']}` | {markdown_text(r['name'])} | {r['kind']} | {r['nodes']} | {r['files']} | {r['objects']} | "
                f"{human_bytes(r['bytes'])} |"  # type: ignore[arg-type]
            )
        lines += ["", "| | objects | bytes |", "|---|---:|---:|"]
        lines.append(f"| copied | {self.objects_copied} | {human_bytes(self.bytes_copied)} |")
        lines.append(f"| already there | {self.objects_skipped} | {human_bytes(self.bytes_skipped)} |")
        lines.append(f"| total | {self.objects} | {human_bytes(self.bytes_total)} |")
        if self.rows_planned:
            lines += ["", "| table | rows inserted | rows planned |", "|---|---:|---:|"]
            for table, planned in self.rows_planned.items():
                lines.append(f"| {markdown_text(table)} | {self.rows_inserted.get(table, 0)} | {planned} |")
        if self.verification:
            lines += ["", markdown_text(self.verification)]
        if self.verified_by:
            lines += ["", markdown_text(self.verified_line())]
        if self.seconds:
            lines += ["", "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())]
            if self.copy_task_runs:
                lines.append(f"copy task runs: {self.copy_task_runs}")
        for title, items in (
            ("failed projects", [f"{root}: {why}" for root, why in self.failed.items()]),
            ("schema drift", self.schema_drift),
            ("left behind (deployment-bound)", [f"{t}: {n} rows" for t, n in self.left_behind.items()]),
            ("dropped groups", self.dropped_groups),
            ("warnings", self.warnings),
        ):
            if items:
                lines += ["", f"**{title}**", *[f"- {markdown_text(i)}" for i in items]]
        return "\n".join(lines)


def _user_status(row: UserRow) -> str:
    if row.skipped:
        return f"skipped: {row.skipped}"
    if row.failed:
        return f"{row.failed} of {row.studies} studies failed"
    return "migrated" if row.studies else "nothing to move"


class StageTimer:
    """Seconds per stage of a run (preflight, graph, copy, verify, insert), as the report shows them:
    ``with timer("copy"): ...`` or ``timer.add("copy", seconds)``; a stage timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(stage, time.monotonic() - started)

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + seconds, 3)
