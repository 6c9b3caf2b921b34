"""``projmig``: the command line.

Bad input is caught before Prefect starts (a library preflight) and printed as one ``error:``
line per problem, exit code 2. A migration that fails midway exits with 1 and says whether a
rerun will continue where it stopped. Names, keys and error details are untrusted text: the
consoles (``flows/console.py``) interpret no markup, and every line goes through
:func:`projmig.text.printable`. A command's Prefect API and credentials: ``flows/local_run.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints
from uuid import UUID

import typer

from projmig.errors import ConfigError, PreflightError, ProjmigError, TransferError
from projmig.settings import MigrationSettings, UuidPolicy, template
from projmig.units import human_bytes

from .console import err, out, print_report, say
from .local_run import migrate_with_progress, resolved

app = typer.Typer(
    name="projmig",
    help="Move an osparc-simcore project (PostgreSQL rows + S3 objects) between deployments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
T = TypeVar("T")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="cfg.json (see `projmig config-template`)")]


@dataclass(frozen=True)
class Selection:
    """Which projects a command is about, and under which ids: the same options on plan, migrate,
    verify, rollback and cleanup, so that each names what the others did. Unset: the cfg.json's."""

    project: Annotated[list[UUID] | None, typer.Option(
        "--project", "-p", help="a project uuid (repeat for several); instead of the cfg.json's")] = None
    owner: Annotated[int | None, typer.Option(
        "--owner", help="every non-trashed project of this source user (source.owner_user_id)")] = None
    include_hidden: Annotated[bool | None, typer.Option(
        "--include-hidden/--no-hidden", help="with their hidden job projects (source.include_hidden)")] = None
    uuid_policy: Annotated[UuidPolicy | None, typer.Option(
        "--uuid-policy", help="keep the ids, or copy under new ids (options.uuid_policy)")] = None
    copy_label: Annotated[str | None, typer.Option(
        "--copy-label", help="with --uuid-policy new: which copy (options.copy_label)")] = None

    def overrides(self) -> dict[str, Any]:
        return {"project_uuids": self.project, "source_owner_user_id": self.owner, "include_hidden": self.include_hidden,
                "uuid_policy": self.uuid_policy, "copy_label": self.copy_label}


@dataclass(frozen=True)
class Recipient:
    """Who receives the projects in the destination (plan, migrate, verify). Unset: the cfg.json's."""

    to_user: Annotated[int | None, typer.Option("--to-user", help="destination owner (destination.user_id)")] = None
    product: Annotated[str | None, typer.Option(
        "--product", help="destination product (destination.product_name)")] = None

    def overrides(self) -> dict[str, Any]:
        return {"destination_user_id": self.to_user, "product_name": self.product}


F = TypeVar("F", bound=Callable[..., Any])


def options_of(group: type, parameter: str) -> Callable[[F], F]:
    """Give a command the options of ``group`` (a dataclass of typer options, defined once): typer
    sees each field as an option, and the command gets them together as ``parameter``."""
    hints = get_type_hints(group, include_extras=True)
    names = [f.name for f in dataclasses.fields(group)]
    added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=hints[n]) for n in names]

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != parameter]

        @functools.wraps(command)
        def with_group(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            return command(*args, **kwargs, **{parameter: group(**values)})

        with_group.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]
        return with_group  # type: ignore[return-value]

    return decorate


selecting = options_of(Selection, "selection")
receiving = options_of(Recipient, "recipient")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command; known errors become ``error:`` lines and an exit code, never a traceback."""
    with errors_as_lines():
        return asyncio.run(coro)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def errors_as_lines() -> Iterator[None]:
    try:
        yield
    except (ConfigError, PreflightError) as exc:
        for problem in exc.problems:
            say(err, problem, label="error:", style="bold red")
        raise typer.Exit(2)
    except ProjmigError as exc:
        say(err, exc, label="error:", style="bold red")
        if isinstance(exc, TransferError) and exc.transient:
            say(err, "Rerun the same command to continue where it stopped.")
        raise typer.Exit(1)


def load(config: Path, **overrides: Any) -> MigrationSettings:
    return MigrationSettings.load(config).with_overrides(**overrides)


@app.command("config-template")
def config_template() -> None:
    """Print a filled-in cfg.json to start from (credentials as references, never values)."""
    print(json.dumps(template(), indent=2))


@app.command()
@receiving
@selecting
def plan(config: ConfigOption, selection: Selection, recipient: Recipient) -> None:
    """Check both deployments and print what a migration would do. Writes nothing."""
    from projmig import steps

    async def main() -> None:
        settings = await resolved(load(config, **selection.overrides(), **recipient.overrides()))
        report, migration = await steps.plan_migration(settings)
        for line in migration.summary_lines():
            say(out, line)
        if report.already_migrated:
            say(out, f"already in the destination: {', '.join(report.already_migrated)}")

    run(main())


@app.command()
@receiving
@selecting
def migrate(
    config: ConfigOption,
    selection: Selection,
    recipient: Recipient,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, write nothing")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's log lines")] = False,
) -> None:
    """Migrate projects as a local Prefect flow run, with a progress bar and a report."""
    with errors_as_lines():
        settings = load(config, **selection.overrides(), **recipient.overrides(), dry_run=dry_run or None)
    report = run(migrate_with_progress(settings, verbose=verbose))
    print_report(report)


@app.command()
@receiving
@selecting
def verify(
    config: ConfigOption,
    selection: Selection,
    recipient: Recipient,
    quick: Annotated[bool, typer.Option("--quick", help="compare sizes and ETags only, not SHA-256 of the bytes")] = False,
) -> None:
    """Compare the destination with the source: rows (modulo the remaps) and objects. Exit 1 on a difference."""
    from projmig import steps

    async def main() -> Any:
        settings = await resolved(load(config, **selection.overrides(), **recipient.overrides()))
        return await steps.verify_migration(settings, deep=not quick)

    result = run(main())
    for note in result.notes:
        say(out, note, label="note:")
    for difference in result.differences:
        say(out, difference, label="differs:", style="red")
    how = "size + ETag" if quick else f"SHA-256 of {human_bytes(result.bytes_hashed)}"
    summary = (
        f"{len(result.projects)} projects, {result.rows_checked} rows and {result.objects_checked} objects "
        f"checked ({how}) in {result.seconds:.1f} s"
    )
    if result.equal:
        say(out, summary, label="equal:", style="green")
        return
    say(out, summary, label=f"{len(result.differences)} differences:", style="red")
    raise typer.Exit(1)


@app.command()
@selecting
def cleanup(
    config: ConfigOption,
    selection: Selection,
    older_than: Annotated[str, typer.Option(help="only uploads started longer ago than this (e.g. 30m, 6h, 2d)")] = "1h",
) -> None:
    """Abort unfinished multipart uploads of projmig in the destination (only under the migrated
    projects' prefixes, only older than --older-than), once no migration of them is running."""
    from projmig import steps

    age = parse_age(older_than)

    async def main() -> list[str]:
        settings = await resolved(load(config, **selection.overrides()))
        # the projects' locks (projmig/locks.py): never under a running migration or rollback of them
        async with steps.holding_locks(settings):
            report, migration = await steps.plan_migration(settings)
            # the copies' uploads this migration started, and the preflight's write probe
            return await steps.abort_our_uploads(settings, migration.copies, older_than=age, probe_key=report.probe_key)

    aborted = run(main())
    for key in aborted:
        say(out, f"aborted upload of {key}")
    say(out, f"{len(aborted)} unfinished uploads aborted")


@app.command()
@selecting
def rollback(
    config: ConfigOption,
    selection: Selection,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would be removed, remove nothing")] = False,
) -> None:
    """Remove from the destination what the migration with this cfg.json inserted: its rows (one
    transaction), then its objects. Refuses, removing nothing, if a destination project changed after
    the migration. A rerun after a rollback is a no-op."""
    from projmig import steps

    async def main() -> Any:
        settings = await resolved(load(config, **selection.overrides()))
        return await steps.rollback_migration(settings, dry_run=dry_run)

    result = run(main())
    for line in result.summary_lines():
        say(out, line)
    say(out, result.headline())


def parse_age(text: str) -> timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise typer.BadParameter(f"{text!r}: use a number and s, m, h or d (e.g. 30m)") from None


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option(help="where the servers keep their data (default: a temp dir)")] = None,
    keep: Annotated[bool, typer.Option(help="keep the data directory afterwards")] = False,
) -> None:
    """Start two local deployments (PostgreSQL + SeaweedFS each), seed a sample study, migrate it,
    verify it, migrate it again (a no-op), and stop everything."""
    from flows.demo import run_demo

    run(run_demo(out, workdir=workdir, keep=keep))


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
