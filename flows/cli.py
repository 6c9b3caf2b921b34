"""``projmig``: the command line.

Bad input is caught before anything is written (a library preflight: the command's own, or for
``migrate`` with a Prefect API at hand the flow's) and printed as one ``error:`` line per problem,
exit code 2. A migration that fails midway exits with 1 and says whether a
rerun will continue where it stopped. Names, keys and error details are untrusted text: the
consoles (``flows/console.py``) interpret no markup, and every line goes through
:func:`projmig.text.printable`. A command's Prefect API and credentials: ``flows/local_run.py``.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import json
import os
import signal
import sys
import threading
import typing
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError

from projmig.choices import CHOICES, RunChoices, read_pairs
from projmig.errors import ConfigError, PreflightError, ProjmigError, TransferError
from projmig.settings import HostSettings, MigrationSettings, format_validation_error, template
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
F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="cfg.json (see `projmig config-template`)")]


def choosing(command: str) -> Callable[[F], F]:
    """Give a command the CLI options of the run's choices it takes (:class:`projmig.choices.RunChoices`:
    one definition for the CLI, the flows and the deployments), so that plan, migrate, verify,
    rollback and cleanup name projects and ids alike. Typer sees each choice as an option; the command
    gets those given together as ``choices``. Unset: the cfg.json's."""
    names = [name for name, choice in CHOICES.items() if command in choice.commands]
    added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=_default(n), annotation=_option(n)) for n in names]
    # not a choice: the host's (osparc's migrations are code that runs), given where the command runs
    names.append("schema_migrations")
    added.append(inspect.Parameter("schema_migrations", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option("--schema-migrations", help=f"{HostSettings.model_fields['schema_migrations'].description} "
                                  "(host.schema_migrations)")]))

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        kept = [p for p in signature.parameters.values() if p.name != "choices"]

        @functools.wraps(fn)
        def with_choices(*args: Any, **kwargs: Any) -> Any:
            given = {n: value for n in names if (value := kwargs.pop(n)) not in (None, False, [])}
            with errors_as_lines():
                for name in [n for n in given if n in CHOICES and CHOICES[n].file]:
                    given[name] = read_pairs(given[name])
            return fn(*args, **kwargs, choices=given)

        with_choices.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]
        return with_choices  # type: ignore[return-value]

    return decorate


def _is_flag(name: str) -> bool:
    """A plain flag (``--dry-run``: given or not), not an ``--x/--no-x`` pair."""
    return RunChoices.model_fields[name].annotation is bool and "/" not in CHOICES[name].flags[0]


def _option(name: str) -> Any:
    field = RunChoices.model_fields[name]
    kind: Any = field.annotation
    if CHOICES[name].file:
        kind = typing.Optional[Path]  # noqa: UP007 (a runtime type: unset is None)
    elif _literal(kind):  # (typer takes an Enum's or a str's values, not a Literal's: checked by the model)
        kind = typing.Optional[str]  # noqa: UP007
    elif not _is_flag(name) and typing.get_origin(kind) is not list:
        kind = typing.Optional[kind]  # noqa: UP007 (a runtime type: unset is None)
    return Annotated[kind, typer.Option(*CHOICES[name].flags, help=f"{field.description} (choices.{name})")]


def _literal(kind: Any) -> bool:
    return any(typing.get_origin(a) is typing.Literal for a in (kind, *typing.get_args(kind)))


def _default(name: str) -> Any:
    return False if _is_flag(name) else None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command; known errors become ``error:`` lines and an exit code, never a traceback."""
    with errors_as_lines(), interrupt_stops():
        return asyncio.run(coro)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def interrupt_stops() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt where the command is, as in plain Python. (asyncio's own
    handling only cancels the main task, and a cancellation can be absorbed on its way, e.g. by a
    cancel scope in a library a step awaits: the run then went on to the end, seen once in the suite.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _interrupted)  # not default_int_handler: asyncio keeps off it
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def errors_as_lines() -> Iterator[None]:
    try:
        yield
    except (ConfigError, PreflightError) as exc:
        for problem in exc.problems:
            say(err, problem, label="error:", style="bold red")
        raise typer.Exit(2)
    except ProjmigError as exc:
        report = getattr(exc, "report", None)
        if report is not None and report.status == "partial":  # what did move, and what did not
            print_report(report)
        say(err, exc, label="error:", style="bold red")
        if isinstance(exc, TransferError) and exc.transient:
            say(err, "Rerun the same command to continue where it stopped.")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        # what was copied stays (verified, marked), nothing was committed half: a rerun continues
        say(err, "interrupted; rerun to continue", label="error:", style="bold red")
        raise typer.Exit(130)
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # not one of projmig's own errors: still one line, never a traceback
        say(err, f"unexpected {type(exc).__name__}: {first_line(exc)}", label="error:", style="bold red")
        raise typer.Exit(1)


def first_line(exc: BaseException) -> str:
    """The first line of an error, or of the database's error under SQLAlchemy's wrapper (whose own
    text goes on with the statement and its parameters), at most 300 characters."""
    cause = getattr(exc, "orig", None) or exc
    text = (str(cause).strip().splitlines() or [""])[0]
    return text[:300] + ("..." if len(text) > 300 else "")


def load(config: Path, choices: dict[str, Any], *, owner: bool = True) -> MigrationSettings:
    """The cfg.json with the command line's choices on top; ``owner``: the command needs the destination owner."""
    settings = MigrationSettings.load(config)
    migrations = choices.pop("schema_migrations", None)
    if migrations is not None:
        settings = settings.model_copy(update={"host": settings.host.model_copy(update={"schema_migrations": migrations})})
    try:
        settings = settings.with_choices(choices).require_something_to_move(str(config))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "options")) from None
    if owner and settings.choices.destination_user_id is None and not settings.choices.matches_users:
        raise ConfigError(f"{config}: choices.destination_user_id: give the destination user who will own the projects (--to-user)")
    return settings


async def settings_of(config: Path, choices: dict[str, Any], *, owner: bool = True) -> MigrationSettings:
    """The cfg.json with the command line's choices, credentials resolved (Prefect Secret blocks too)."""
    return await resolved(load(config, choices, owner=owner))


@app.command("config-template")
def config_template() -> None:
    """Print a filled-in cfg.json to start from (credentials as references, never values)."""
    print(json.dumps(template(), indent=2))


@app.command()
@choosing("plan")
def plan(config: ConfigOption, choices: dict[str, Any]) -> None:
    """Check both deployments and print what a migration would do. Writes nothing."""
    from projmig import commands

    async def main() -> None:
        report, migration = await commands.plan(await settings_of(config, choices))
        for line in report.release.lines() if report.release else []:
            say(out, line)
        for match in report.matches:
            account = match.destination.describe() if match.destination else f"no account: {match.problem}"
            theirs = [p for p in migration.projects
                      if report.selection.owners.get(p.root_uuid or p.src_uuid) == match.source.id]
            studies = sum(1 for p in theirs if p.root_uuid in (None, p.src_uuid))
            say(out, f"user {match.source.describe()} -> {account}: {studies} studies, "
                     f"{sum(p.objects for p in theirs)} objects, {human_bytes(sum(p.bytes for p in theirs))}")
        for root, why in report.selection.skipped.items():
            say(out, f"skipped {root}: {why}")
        for line in migration.summary_lines():
            say(out, line)
        if report.already_migrated:
            say(out, f"already in the destination: {', '.join(report.already_migrated)}")

    run(main())


@app.command()
@choosing("migrate")
def migrate(
    config: ConfigOption,
    choices: dict[str, Any],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show the run's log lines")] = False,
    prefect: Annotated[bool | None, typer.Option(
        "--prefect/--no-prefect", show_default=False,
        help="run as the migrate-project flow, recorded in Prefect (--prefect starts a local Prefect server if "
             "none runs), or as plain calls in this process; by default the flow when PREFECT_API_URL is set or the "
             "local server runs")] = None,
) -> None:
    """Migrate projects, with a progress bar and a report: as a Prefect flow run when there is a Prefect
    API, else in this process."""
    with errors_as_lines():
        settings = load(config, choices)
    report = run(migrate_with_progress(settings, verbose=verbose, prefect=prefect))
    print_report(report)


@app.command()
@choosing("verify")
def verify(
    config: ConfigOption,
    choices: dict[str, Any],
    quick: Annotated[bool, typer.Option("--quick", help="compare sizes and ETags only, not SHA-256 of the bytes")] = False,
) -> None:
    """Compare the destination with the source: rows (modulo the remaps) and objects. Exit 1 on a difference."""
    from projmig import commands

    async def main() -> Any:
        return await commands.verify(await settings_of(config, choices), deep=not quick)

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
@choosing("cleanup")
def cleanup(
    config: ConfigOption,
    choices: dict[str, Any],
    older_than: Annotated[str, typer.Option(help="only uploads started longer ago than this (e.g. 30m, 6h, 2d)")] = "1h",
) -> None:
    """Abort unfinished multipart uploads of projmig in the destination (only under the migrated
    projects' prefixes, only older than --older-than), once no migration of them is running."""
    from projmig import commands

    age = parse_age(older_than)

    async def main() -> list[str]:
        return await commands.cleanup(await settings_of(config, choices, owner=False), older_than=age)

    aborted = run(main())
    for key in aborted:
        say(out, f"aborted upload of {key}")
    say(out, f"{len(aborted)} unfinished uploads aborted")


@app.command()
@choosing("rollback")
def rollback(config: ConfigOption, choices: dict[str, Any]) -> None:
    """Remove from the destination what the migration with this cfg.json inserted: its rows (one
    transaction), then its objects. Refuses, removing nothing, if a destination project changed after
    the migration. A rerun after a rollback is a no-op."""
    from projmig import commands

    async def main() -> Any:
        return await commands.rollback(await settings_of(config, choices, owner=False))

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


def main() -> NoReturn:  # pragma: no cover - console script
    try:
        app()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)


def exit_now(code: object) -> NoReturn:
    """Exit as the interpreter would, without its teardown: freeing every object of Prefect's and of
    the run one by one took ~0.4 s after a migration here, and nothing needs it. What an exit does
    that matters is done first, in its order: other threads joined (thread pools told to stop), the
    atexit handlers run (Prefect drains its log and event workers there, ``logging`` flushes its
    handlers, temporary directories go), stdout and stderr flushed."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("text"): the text on stderr, status 1
        print(code, file=sys.stderr)
        status = 1
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first at exit
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more to say
            pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
