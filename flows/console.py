"""What the CLI and the demo show on the terminal: its two consoles, one line of output at a time
(:func:`say`), the migration report as a table (:func:`print_report`) and the copy progress bar
(:func:`copy_progress`).

Names, keys and error details are untrusted text: the consoles interpret no markup, emoji codes or
highlighting, and every line goes through :func:`projmig.text.printable`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from projmig.report import MigrationReport
from projmig.text import printable
from projmig.units import human_bytes

from .progress import add_listener, remove_listener

# (not a terminal: wide enough that no table cell wraps, so that a name reads as one piece in a log)
out = Console(width=None if sys.stdout.isatty() else 1000, markup=False, emoji=False, highlight=False)
err = Console(stderr=True, markup=False, emoji=False, highlight=False)


def say(console: Console, text: object, *, label: str = "", style: str = "") -> None:
    """One line of output: ``label`` (ours, styled) then ``text`` shown literally."""
    console.print(Text.assemble((label, style), " " if label else "", printable(text)), soft_wrap=True)


def print_report(report: MigrationReport) -> None:
    table = Table(title=Text(printable(report.headline())), title_justify="left", show_edge=False)
    for column in ("project", "name", "kind", "nodes", "files", "objects", "bytes"):
        numeric = column in ("nodes", "files", "objects", "bytes")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "project")
    for row in report.project_rows():
        table.add_row(*[Text(human_bytes(v) if k == "bytes" else printable(v)) for k, v in row.items()])  # type: ignore[arg-type]
    out.print(table)
    if report.rows_planned:
        say(out, "rows inserted: " + ", ".join(f"{t} {report.rows_inserted.get(t, 0)}/{n}" for t, n in report.rows_planned.items()))
    if report.seconds:
        say(out, "time: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.seconds.items()))
    if report.verified_by:
        say(out, report.verified_line())
    for table_name, n in report.left_behind.items():
        say(out, f"left behind (deployment-bound): {table_name} {n} rows")
    for group in report.dropped_groups:
        say(out, f"dropped group: {group}")
    for note in report.schema_drift:
        say(out, f"schema drift: {note}")
    for warning in report.warnings:
        say(out, warning, label="warning:", style="yellow")
    say(out, report.headline())


@contextmanager
def copy_progress() -> Iterator[None]:
    """A progress bar on stderr (a terminal only) of the bytes this process's copies move, while
    the block runs (``flows/progress.py`` brings them here)."""
    with Progress(
        TextColumn("[bold]copying[/] {task.fields[objects]} objects"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        listener = _BarListener(bar)
        add_listener(listener)
        try:
            yield
        finally:
            remove_listener(listener)


class _BarListener:
    def __init__(self, bar: Progress):
        self.bar = bar
        self.task: Any = None

    def total(self, objects: int, nbytes: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task("copy", total=nbytes, objects=objects)
        else:  # objects found still differing after the copy are copied again: the bar starts over
            self.bar.reset(self.task, total=nbytes, objects=objects)

    def advance(self, nbytes: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, nbytes)
