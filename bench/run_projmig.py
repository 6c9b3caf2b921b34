"""One projmig run in its own process, measured from inside: ``python -m bench.run_projmig OUT.json``
with the job on stdin (``{"mode": "cli" | "insert" | "plan" | "verify", "settings": {...}, "config": "cfg.json"}``).

- ``cli``: ``projmig migrate --config cfg.json``, the command line itself (``flows.cli.app``, what
  the ``projmig`` script runs), in this process: the whole process's wall time (measured outside)
  is what an operator waits for. Inside, the ``migrate-project`` flow call is timed, and every
  library step its task runs call (``projmig.steps.*``); the flow's wall time minus the union of
  those intervals is the time spent outside projmig's own work: Prefect orchestration (flow and
  task runs, states, result persistence, artifacts).
- ``insert``: preflight, graph and plan as the flow does them, then the insert (one transaction per
  root project) alone, timed (no Prefect).
- ``plan``: what ``projmig plan`` computes (preflight, graph, plan), timed (no Prefect).
- ``verify``: what ``projmig verify`` computes (``"deep": false``: ``--quick``), timed (no Prefect).
- ``library``: the whole migration through ``projmig.commands.migrate`` (no Prefect), timed.

Every mode reports ``<mode>_seconds`` (wall) and ``<mode>_cpu_seconds`` (this process's CPU over
the same span: on a busy machine the steadier measure of the work done).
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import asyncio  # noqa: E402
import functools  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

STEPS = ("preflight", "write_probe", "read_graph", "list_destination", "make_plan", "compare", "copy_objects", "insert_roots",
         "abort_our_uploads")


class StepClock:
    """Wall-time intervals of the library steps, from any thread (task runs run in worker threads)."""

    def __init__(self) -> None:
        self.intervals: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def install(self, module: Any) -> None:
        for name in STEPS:
            setattr(module, name, self._timed(name, getattr(module, name)))

    def _timed(self, name: str, fn: Any) -> Any:
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                began = time.perf_counter()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    self._add(name, began)

            return timed_async

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(name, began)

        return timed

    def _add(self, name: str, began: float) -> None:
        with self._lock:
            self.intervals.append((name, began, time.perf_counter()))

    def union(self, names: tuple[str, ...] | None = None, within: tuple[float, float] | None = None) -> float:
        spans = sorted((b, e) for n, b, e in self.intervals if names is None or n in names)
        if within is not None:
            spans = [(max(b, within[0]), min(e, within[1])) for b, e in spans if e > within[0] and b < within[1]]
        total, cur_b, cur_e = 0.0, None, None
        for b, e in spans:
            if cur_e is None or b > cur_e:
                if cur_e is not None:
                    total += cur_e - cur_b  # type: ignore[operator]
                cur_b, cur_e = b, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None:
            total += cur_e - cur_b  # type: ignore[operator]
        return total

    def summary(self, within: tuple[float, float] | None = None) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, b, e in self.intervals:
            if within is not None and not (within[0] <= b and e <= within[1]):
                continue
            entry = out.setdefault(name, {"calls": 0, "seconds": 0.0})
            entry["calls"] += 1
            entry["seconds"] = round(entry["seconds"] + e - b, 4)
        return out


def capture_release(module: Any) -> dict[str, Any]:
    """Across osparc releases: what the flow's preflight says of the staging (its phases' seconds,
    the path, the rows staged), filled in when it returns (the CLI's own early check, which stages
    nothing, leaves it empty)."""
    seen: dict[str, Any] = {}
    preflight = module.preflight

    @functools.wraps(preflight)
    async def capturing(*args: Any, **kwargs: Any) -> Any:
        report = await preflight(*args, **kwargs)
        release = getattr(report, "release", None)
        if release is not None and release.seconds:
            seen.update(seconds=dict(release.seconds), path=release.path, direction=release.direction,
                        migrations=release.migrations, staged_rows=dict(release.staged_rows))
        return report

    module.preflight = capturing
    return seen


class AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``hooks[name](module)`` right after the module ``name`` is executed, when the code under
    measure imports it: the CLI chooses its Prefect API (flows/local_api.py sets PREFECT_API_URL)
    before it imports Prefect, whose settings are fixed at import; importing Prefect here first would
    make a CLI run without a server use Prefect's temporary server instead of the local one."""

    def __init__(self, hooks: dict[str, Any]):
        self.hooks = dict(hooks)

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.hooks:
            return None
        hook = self.hooks.pop(name)
        spec = importlib.util.find_spec(name)  # (this finder no longer answers for it)
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            hook(module)

        spec.loader.exec_module = exec_module
        return spec

    def install(self) -> None:
        for name in [n for n in self.hooks if n in sys.modules]:  # already imported: now
            self.hooks.pop(name)(sys.modules[name])
        sys.meta_path.insert(0, self)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cli(job: dict[str, Any], result: dict[str, Any]) -> None:
    from projmig import steps

    clock = StepClock()
    clock.install(steps)
    crossing = capture_release(steps)
    task_runs: list[float] = []  # when each task run started (Prefect's Task.__call__ runs it through run_task)
    timing: dict[str, Any] = {}

    def count_task_runs(task_engine: Any) -> None:
        run_task = task_engine.run_task

        def counted_run_task(*args: Any, **kwargs: Any) -> Any:
            task_runs.append(time.perf_counter())
            return run_task(*args, **kwargs)

        task_engine.run_task = counted_run_task

    def timed(name: str, *, prefect: bool) -> Callable[[Any], None]:
        """A hook that times ``module.<name>`` from its call to its return (the CLI takes it from the
        module when it runs); ``prefect``: whether that is the flow."""

        def install(module: Any) -> None:
            run = getattr(module, name)

            async def timed_run(*args: Any, **kwargs: Any) -> Any:
                timing.update(cpu0=cpu_seconds(), began=time.perf_counter(), prefect=prefect)
                try:
                    timing["report"] = await run(*args, **kwargs)
                    return timing["report"]
                finally:
                    timing["ended"], timing["cpu1"] = time.perf_counter(), cpu_seconds()

            setattr(module, name, timed_run)

        return install

    # with no Prefect API the CLI runs the library's pipeline in its process: timed alike, as its "flow"
    AfterImport({"prefect.task_engine": count_task_runs, "flows.migrate": timed("migrate_project", prefect=True),
                 "projmig.commands": timed("migrate", prefect=False)}).install()
    from flows.cli import app

    result["import_seconds"] = time.perf_counter() - STARTED
    try:
        app(["migrate", "--config", job["config"], *job.get("cli_args", [])], standalone_mode=False)
    except SystemExit as exc:  # typer.Exit: an error line was printed
        raise SystemExit(exc.code) from None
    report = timing["report"]
    began, ended = timing["began"], timing["ended"]
    result.update(flow_began_seconds=began - STARTED, cli_returned_seconds=time.perf_counter() - STARTED)
    flow_seconds = ended - began
    library = clock.union(within=(began, ended))
    calls = clock.summary(within=(began, ended))  # not the CLI's own preflight before the flow
    runs = sum(1 for t in task_runs if began <= t <= ended)
    result.update(
        flow_seconds=flow_seconds,
        prefect=timing["prefect"],  # False: the pipeline in the CLI's process, no flow
        cpu_seconds=timing["cpu1"] - timing["cpu0"],
        stages=report.seconds,
        steps=calls,
        library_seconds=library,
        transfer_seconds=clock.union(("copy_objects",), within=(began, ended)),
        overhead_seconds=flow_seconds - library,
        task_runs=runs,
        copy_task_runs=report.copy_task_runs,
        ms_per_task_run=1000 * (flow_seconds - library) / max(1, runs),
        status=report.status,
        objects=report.objects,
        objects_copied=report.objects_copied,
        objects_skipped=report.objects_skipped,
        bytes_total=report.bytes_total,
        bytes_copied=report.bytes_copied,
        rows_inserted=report.rows,
        projects=len(report.projects),
        users=len(report.users),
        release=crossing,
    )


async def insert(job: dict[str, Any], result: dict[str, Any]) -> None:
    from projmig import steps
    from projmig.buckets import ObjectState
    from projmig.run import MigrationRun
    from projmig.settings import MigrationSettings

    settings = MigrationSettings.parse(job["settings"], origin="bench")
    result["import_seconds"] = time.perf_counter() - STARTED
    async with MigrationRun.open(settings) as run:
        _, plan = await steps.plan_migration(run)
        verified = {c.dst_key: ObjectState(size=c.size, etag=c.etag) for c in plan.copies}
        began, cpu = time.perf_counter(), cpu_seconds()
        inserted = await steps.insert_roots(run, plan, verified, list(plan.roots()))
        result.update(insert_seconds=time.perf_counter() - began, insert_cpu_seconds=cpu_seconds() - cpu)
    failed = [r.error for r in inserted if r.error is not None]
    if failed:
        raise failed[0]
    per_table: dict[str, int] = {}
    for root in inserted:
        for table, n in root.result.inserted.items():  # type: ignore[union-attr]
            per_table[table] = per_table.get(table, 0) + n
    result.update(rows_inserted=sum(per_table.values()), rows_per_table=per_table)


async def plan(job: dict[str, Any], result: dict[str, Any]) -> None:
    from projmig import commands
    from projmig.settings import MigrationSettings

    settings = MigrationSettings.parse(job["settings"], origin="bench")
    result["import_seconds"] = time.perf_counter() - STARTED
    began, cpu = time.perf_counter(), cpu_seconds()
    _, made = await commands.plan(settings)
    result.update(
        plan_seconds=time.perf_counter() - began,
        plan_cpu_seconds=cpu_seconds() - cpu,
        objects=len(made.copies),
        rows=sum(made.rows_per_table().values()),
    )


async def verify(job: dict[str, Any], result: dict[str, Any]) -> None:
    from projmig import commands
    from projmig.settings import MigrationSettings

    settings = MigrationSettings.parse(job["settings"], origin="bench")
    result["import_seconds"] = time.perf_counter() - STARTED
    began, cpu = time.perf_counter(), cpu_seconds()
    report = await commands.verify(settings, deep=job.get("deep", True))
    result.update(
        verify_seconds=time.perf_counter() - began,
        verify_cpu_seconds=cpu_seconds() - cpu,
        equal=report.equal,
        differences=[str(d) for d in report.differences[:5]],
        objects_checked=report.objects_checked,
        rows_checked=report.rows_checked,
    )


async def library(job: dict[str, Any], result: dict[str, Any]) -> None:
    """The same migration through the library's own pipeline (``projmig.commands.migrate``), no
    Prefect in the process: what the flow costs beyond projmig's work, and how Prefect's presence
    changes the steps' own times."""
    from projmig import commands, steps
    from projmig.settings import MigrationSettings

    clock = StepClock()
    clock.install(steps)
    settings = MigrationSettings.parse(job["settings"], origin="bench")
    result["import_seconds"] = time.perf_counter() - STARTED
    began, cpu = time.perf_counter(), cpu_seconds()
    report = await commands.migrate(settings)
    ended = time.perf_counter()
    result.update(library_seconds=ended - began, library_cpu_seconds=cpu_seconds() - cpu, stages=report.seconds,
                  steps=clock.summary(within=(began, ended)), status=report.status, objects=report.objects,
                  objects_copied=report.objects_copied, rows_inserted=report.rows)


MODES = {"insert": insert, "plan": plan, "verify": verify, "library": library}


def peak_rss_mb() -> float:
    """This process's VmHWM (ru_maxrss would count the forking parent's pages as well)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    out = sys.argv[1]
    job = json.loads(sys.stdin.read())
    result: dict[str, Any] = {"mode": job["mode"], "pid": os.getpid()}
    if job["mode"] == "cli":
        cli(job, result)
    else:
        asyncio.run(MODES[job["mode"]](job, result))
    result["self_peak_rss_mb"] = peak_rss_mb()
    with open(out, "w") as fh:
        json.dump(result, fh)
    if job["mode"] == "cli":  # the command's own way out (flows/cli.py main), part of its process time
        from flows.cli import exit_now

        exit_now(0)


if __name__ == "__main__":
    main()
