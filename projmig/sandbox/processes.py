"""Child processes the sandbox, the tests and the bench start themselves (a Prefect server, a Dask
cluster, the S3 servers): started in a session of their own with their output in a log file, waited
for until they answer, and stopped by the handle we hold, never by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path


class ServerError(RuntimeError):
    """A server of ours that did not start or answer."""


def spawn_logged(cmd: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """``cmd`` in a new session (a signal to the test's own group does not reach it, and its
    children can be stopped with it), stdout and stderr appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(list(cmd), env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)


def log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def answers(url: str, timeout: float = 10) -> bool:
    """Whether a GET of ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def wait_answering(process: subprocess.Popen[bytes], url: str, *, log: Path, timeout: float, what: str) -> None:
    """Until ``url`` answers 200; :class:`ServerError` with the log's tail if ``process`` exits first
    or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not answers(url, timeout=2):
        if process.poll() is not None:
            raise ServerError(f"{what} exited (status {process.returncode}); its log:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise ServerError(f"{what} did not answer on {url} within {timeout:g} s; its log:\n{log_tail(log)}")
        time.sleep(0.2)


def stop_process(process: subprocess.Popen[bytes] | None, *, timeout: float, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; to the process's whole group with
    ``group`` (its own, from :func:`spawn_logged`), for a process that starts children of its own."""
    if process is None or process.poll() is not None:
        return

    def send(sig: int) -> None:
        try:
            os.killpg(process.pid, sig) if group else os.kill(process.pid, sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()


def prefect_server_command(port: int, *, services: bool, options: Sequence[str] = ()) -> list[str]:
    """Prefect's server on 127.0.0.1:``port``, without its UI. With ``services`` (what a worker
    needs: late runs, cancellations) through ``prefect server start`` and its ``options``; without,
    Prefect's API app alone under uvicorn (what a flow reporting to it needs)."""
    if services:
        return [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                "--port", str(port), "--no-ui", *options]
    return [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
            "127.0.0.1", "--port", str(port), "--log-level", "warning", "--lifespan", "on"]


def prefect_server_env(base: Mapping[str, str], *, database: str | None = None, services: bool) -> dict[str, str]:
    """``base`` for a Prefect server's process: never a client of another API, no UI, no analytics;
    ``database`` as its SQLAlchemy URL (else Prefect's default under PREFECT_HOME)."""
    env = {**base, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if database:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
    if not services:
        # what Prefect's own test harness sets for the app alone: no background services
        env.update(PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1")
    return env


def start_prefect_server(port: int, *, env: Mapping[str, str], log: Path, services: bool,
                         options: Sequence[str] = (), timeout: float = 120) -> subprocess.Popen[bytes]:
    """A Prefect server of our own, answering on ``http://127.0.0.1:{port}/api`` when this returns."""
    process = spawn_logged(prefect_server_command(port, services=services, options=options), env=env, log=log)
    try:
        wait_answering(process, f"http://127.0.0.1:{port}/api/health", log=log, timeout=timeout, what="the Prefect server")
    except BaseException:
        stop_process(process, timeout=10, group=True)
        raise
    return process
