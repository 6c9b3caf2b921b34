"""A command run from a terminal (the CLI and the demo) as Prefect needs it: a Prefect API for this
process (:func:`use_prefect_api`), the settings' credentials resolved (:func:`resolved`: through
``flows/credentials.py``, starting Prefect only for Secret blocks), and ``projmig migrate``'s run
itself (:func:`migrate_with_progress`): the ``migrate-project`` flow with a progress bar, its
preflight the check (the command's own first, only when the local server has yet to start), or,
with no Prefect API to record it, the library's pipeline in this process.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from projmig.errors import ConfigError
from projmig.settings import MigrationSettings

from .console import copy_progress, err, say
from .credentials import resolve_credentials
from .local_api import Api, wait_for_local_api
from .progress import report_bytes, report_total

if TYPE_CHECKING:
    from projmig.report import MigrationReport


async def resolved(settings: MigrationSettings, *, importing: threading.Thread | None = None) -> MigrationSettings:
    """``settings`` with their credentials' values (environment variables, Prefect Secret blocks).
    ``importing``: a thread importing Prefect meanwhile, awaited before this one imports it too (two
    threads importing the same modules in another order deadlock)."""
    return await resolve_credentials(settings, before_prefect=lambda: _prefect_for_secrets(importing))


def _prefect_for_secrets(importing: threading.Thread | None) -> None:
    if importing is not None:
        importing.join()
    use_prefect_api()
    # reading a block emits an event; one still queued at exit is a warning line, not our business
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)


async def migrate_with_progress(
    settings: MigrationSettings, *, verbose: bool = False, prefect: bool | None = None
) -> MigrationReport:
    """``prefect``: True, the ``migrate-project`` flow (a Prefect API is started if none answers);
    False, the library's pipeline in this process; None, the flow when a Prefect API is there to
    record it (configured, or the local server running) or Dask is asked for, else the pipeline."""
    quiet_prefect(verbose)
    dask = settings.options.task_runner == "dask"
    if prefect is False and dask:
        raise ConfigError("options.task_runner: 'dask' runs the copies as Prefect task runs: drop --no-prefect")
    api = use_prefect_api(start=False, wait=False) if prefect is not False else "absent"
    if api == "absent" and not prefect and not dask:
        report = await _migrate_in_process(settings, verbose)
        if prefect is None:  # (after the run: bad input stays one error line)
            say(err, "No Prefect server running: migrated in this process, not recorded in Prefect "
                     "(`projmig migrate --prefect` starts a local server that records this and later runs).")
        return report
    # Prefect is imported (~1.5 s of CPU) in the background meanwhile, unless no API runs: then the
    # local server is started only after the CLI's own preflight passed (bad input costs no server),
    # and Prefect imported while it starts (another process: ~5 s here)
    importing = _import_in_background("flows.migrate") if api != "absent" else None
    try:
        # credentials resolved once for the run (the flow gets their values, masked in its parameters)
        settings = await resolved(settings, importing=importing)
        # (an API that answers at once: the local server, running or starting, or a configured one;
        # not Prefect's temporary one, ~10 s to start)
        if api not in ("local", "configured"):
            # bad input fails here, in seconds, before a Prefect server has to start; with an API that
            # answers, the flow's own preflight is the check (the same errors, one line each), not a second one
            await _preflight(settings)
    finally:
        if importing is not None:
            # also when a check failed: a daemon thread still importing when the interpreter exits is
            # stopped inside native code, and the process aborts ("FATAL: exception not rethrown")
            # instead of exiting 2 after its error line
            importing.join()
    if importing is None:
        api = use_prefect_api(wait=False)
        importlib.import_module("flows.migrate")
    if api == "local":
        wait_for_local_api()
    from flows.migrate import migrate_project

    with copy_progress():
        return await migrate_project(settings)


async def _migrate_in_process(settings: MigrationSettings, verbose: bool) -> MigrationReport:
    # the same pipeline as the flow's, its steps plain calls: nothing of Prefect is imported (a
    # ``prefect_secret`` credential excepted), no server is needed; a rerun skips what is there by
    # the destination's listing, as the flow's does
    from projmig import commands
    from projmig.pipeline import Steps

    class WithProgress(Steps):
        async def copying(self, objects: int, nbytes: int) -> None:
            report_total(objects, nbytes)

    # the run's log lines (the flow's go to Prefect): on the terminal with --verbose, else none
    # (Python's last-resort handler would print its warnings bare)
    log = logging.getLogger("projmig")
    if not log.handlers:  # (once a process: the demo migrates twice)
        if verbose:  # projmig's own lines (what the flow logs), not the libraries'
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            log.setLevel(logging.INFO)
        else:
            handler = logging.NullHandler()
        log.addHandler(handler)
    settings = await resolved(settings)
    with copy_progress():
        return await commands.migrate(settings, WithProgress(on_bytes=report_bytes))


async def _preflight(settings: MigrationSettings) -> None:
    from projmig import steps
    from projmig.run import MigrationRun

    async with MigrationRun.open(settings, lock=False) as checking:
        # (across osparc releases the rows are staged once, by the flow's own preflight)
        await steps.preflight(checking, probe_write=False, stage=False)


def quiet_prefect(verbose: bool) -> None:
    # the ephemeral server's telemetry write races its own first start ("database is locked")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # the run's log lines (a failure's traceback too) still reach the Prefect API; the terminal
        # gets the progress bar, the report and one error line
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def use_prefect_api(start: bool = True, wait: bool = True) -> Api:
    """A Prefect API for this command: the configured one, else a local server kept running in the
    background for later commands (``flows/local_api.py``; ``wait=False``: maybe still starting,
    :func:`flows.local_api.wait_for_local_api` waits), else Prefect's temporary one."""
    from flows.local_api import use_local_api

    chosen = use_local_api(lambda message: say(err, message), start=start, wait=wait)
    if chosen == "ephemeral":
        _say_if_prefect_is_new()
    return chosen


def _import_in_background(module: str) -> threading.Thread:
    thread = threading.Thread(target=importlib.import_module, args=(module,), daemon=True)
    thread.start()
    return thread


def _say_if_prefect_is_new() -> None:
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    if not (home / "prefect.db").exists():
        say(err, "Starting Prefect for the first time: setting up its local database takes ~20 s (once).")
