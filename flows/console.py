"""What the CLI and the demo show on the terminal: its two consoles, one line of output at a time
(:func:`say`), the migration report as a table (:func:`print_report`) and the copy progress bar
(:func:`copy_progress`).

Names, keys and error details are untrusted text: the consoles interpret no markup, emoji codes or
highlighting, and every line goes through :func:`projmig.text.printable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from projmig.text import printable
from projmig.units import human_bytes

from .progress import add_listener, remove_listener

if TYPE_CHECKING:  # the report's model (the plan's, the graph's: SQLAlchemy) is not needed to print a line
    from rich.progress import Progress
    from rich.table import Table

    from projmig.report import MigrationReport

NOT_A_TERMINAL_WIDTH = 100  # rules and tables in a log (CI, `| tee`)


def make_console(*, stderr: bool = False, file: IO[str] | None = None, record: bool = False) -> Console:
    """A console that interprets nothing in what it prints (markup, emoji codes, highlighting: what
    projmig styles, it styles with :class:`rich.text.Text`), as wide as its terminal, or
    ``NOT_A_TERMINAL_WIDTH`` columns when it writes to a file or a pipe."""
    console = Console(stderr=stderr, file=file, markup=False, emoji=False, highlight=False, record=record)
    if not console.is_terminal:
        console.width = NOT_A_TERMINAL_WIDTH
    return console


out = make_console()
err = make_console(stderr=True)


def say(console: Console, text: object, *, label: str = "", style: str = "") -> None:
    """One line of output: ``label`` (ours, styled) then ``text`` shown literally."""
    console.print(Text.assemble((label, style), " " if label else "", printable(text)), soft_wrap=True)


def print_report(report: MigrationReport, console: Console | None = None) -> None:
    """The report: its projects as a table on a terminal, else one line each (a name in a log stays in
    one piece, whatever its length), then what moved, the time per stage, notes and warnings."""
    console = console or out
    if console.is_terminal:
        console.print(_project_table(report))
    else:
        for row in report.project_rows():
            size = human_bytes(row["bytes"])  # type: ignore[arg-type]
            say(console, f"  {row['project']}  {row['name']} ({row['kind']}): {row['nodes']} nodes, {row['files']} files, "
                         f"{row['objects']} objects, {size}")
    _print_details(report, console)


def _project_table(report: MigrationReport) -> Table:
    from rich.table import Table

    table = Table(title=Text(printable(report.headline())), title_justify="left", show_edge=False)
    for column in ("project", "name", "kind", "nodes", "files", "objects", "bytes"):
        numeric = column in ("nodes", "files", "objects", "bytes")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column == "project")
    for row in report.project_rows():
        table.add_row(*[Text(human_bytes(v) if k == "bytes" else printable(v)) for k, v in row.items()])  # type: ignore[arg-type]
    return table


def _print_details(report: MigrationReport, out: Console) -> None:
    for user in report.user_rows():
        say(out, f"user {user['user']} -> {user['account']}: {user['studies']} studies, {user['objects']} objects, "
                 f"{human_bytes(user['bytes'])}: {user['status']}")  # type: ignore[arg-type]
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
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

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
