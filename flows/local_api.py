"""A Prefect API for the CLI on a machine where none is configured: a local ``prefect server``,
started in the background by the first ``projmig`` command that needs one and reused by the next.

Without it every ``projmig migrate`` would start Prefect's temporary (ephemeral) API server for itself:
~10 s per process here before the first task runs. The server started here is an ordinary
``prefect server start`` on 127.0.0.1 (a free port, no UI), with the current ``PREFECT_HOME``'s
database; its address is kept in ``$PREFECT_HOME/projmig-api.json`` and its PID in Prefect's own
``server.pid`` (so ``prefect server stop`` stops it). ``PROJMIG_PREFECT_API=ephemeral`` keeps Prefect's
temporary server instead; a configured ``PREFECT_API_URL`` (environment or profile) is always used as it is.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from projmig.errors import ProjmigError

RECORD = "projmig-api.json"
PREFECT_PID_FILE = "server.pid"  # the file `prefect server stop` reads
START_TIMEOUT = 180.0

# which Prefect API a command uses: its local server (running or starting), none yet (not started),
# the one PREFECT_API_URL configures, or Prefect's temporary one (PROJMIG_PREFECT_API=ephemeral)
Api = Literal["local", "absent", "configured", "ephemeral"]


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def configured_api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile (read without importing
    Prefect: ``profiles.toml`` is plain TOML)."""
    if "PREFECT_API_URL" in os.environ:
        return os.environ["PREFECT_API_URL"] or None
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml")
    if not profiles.is_file():
        return None
    import tomllib

    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    value = data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(value) if value else None


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


def use_local_api(say: Callable[[str], None], *, start: bool = True, wait: bool = True) -> Api:
    """Point this process's Prefect client (before Prefect is imported) at the local server, starting
    it if need be and ``start``. "local": the local server is in use; "absent": it is not running (and
    ``start`` was False); "configured" or "ephemeral": not ours to choose (an API is configured, or
    ``PROJMIG_PREFECT_API=ephemeral`` asks for Prefect's temporary one). ``wait=False``: return as
    soon as a server is starting (its address is known): the caller does other work (imports Prefect)
    meanwhile and calls :func:`wait_for_local_api` before its first Prefect call."""
    if configured_api_url():
        return "configured"
    if os.environ.get("PROJMIG_PREFECT_API") == "ephemeral":
        return "ephemeral"
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with (home / "projmig-api.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one projmig process starts it, the others wait and reuse it
        url = _recorded_url(home)
        if url is None or not (healthy(url) or _starting(home)):
            if not start:
                return "absent"
            say(f"Starting a local Prefect server in the background for this and later runs (once; "
                f"`prefect server stop` stops it; its log: {home / 'projmig-api.log'}) ...")
            url = _spawn(home)
        if wait:  # (under the lock: a command started meanwhile waits, then finds it healthy)
            wait_for_local_api()
    os.environ["PREFECT_API_URL"] = url
    return "local"


def wait_for_local_api(timeout: float = START_TIMEOUT) -> None:
    """Wait until the server :func:`use_local_api` started in this PREFECT_HOME answers; stop it and
    raise if it exits or does not answer within ``timeout`` seconds."""
    home = prefect_home()
    try:
        record = json.loads((home / RECORD).read_text())
        url, pid = str(record["api_url"]), int(record["pid"])
    except (OSError, ValueError, KeyError):
        raise ProjmigError(f"the local Prefect server's record {home / RECORD} is gone") from None
    deadline = time.monotonic() + timeout
    while not healthy(url, timeout=1.0):
        if not _alive(pid) or time.monotonic() > deadline:
            stop_local_api()
            raise ProjmigError(f"the local Prefect server did not start (see {home / 'projmig-api.log'})")
        time.sleep(0.2)


def _starting(home: Path) -> bool:
    """The recorded server was started less than START_TIMEOUT ago (by another command, which
    released the lock before it answered) and still runs: use it, do not start a second one."""
    try:
        record = json.loads((home / RECORD).read_text())
        started, pid = float(record["started"]), int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return time.time() - started < START_TIMEOUT and _alive(pid)


def _alive(pid: int) -> bool:
    """The server process still runs (a child of this command that exited is reaped here)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:  # not our child: started by another command
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_local_api() -> bool:
    """Stop the server :func:`use_local_api` started in this PREFECT_HOME (tests, ``projmig``'s own use)."""
    home = prefect_home()
    try:
        pid = int(json.loads((home / RECORD).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for path in (home / RECORD, home / PREFECT_PID_FILE):
        path.unlink(missing_ok=True)
    return True


def _recorded_url(home: Path) -> str | None:
    try:
        return str(json.loads((home / RECORD).read_text())["api_url"])
    except (OSError, ValueError, KeyError):
        return None


# what the background server takes of the environment of the command that starts it: it lives on
# after that command, and any local user can ask its API, so nothing of the command's own (passwords
# and keys given as PROJMIG_* or as credential references' variables, a proxy) goes with it
SERVER_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PG_BINDIR")


def server_environment(home: Path) -> dict[str, str]:
    """The background Prefect server's environment: a few of the system's variables, its home, and
    the server's own settings (``PREFECT_SERVER_*``, ``PREFECT_HOME``); no client setting, no secret."""
    env = {name: value for name, value in os.environ.items()
           if name in SERVER_ENVIRONMENT or name.startswith("PREFECT_SERVER_")}
    return {**env, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "false"}


def _spawn(home: Path) -> str:
    """Start ``prefect server start`` in the background and record it; its address (not yet answering)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = server_environment(home)
    with (home / "projmig-api.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
            start_new_session=True,  # outlives this command; not stopped by its Ctrl-C
        )
    (home / PREFECT_PID_FILE).write_text(str(process.pid))
    (home / RECORD).write_text(json.dumps({"api_url": url, "pid": process.pid, "started": time.time()}))
    return url
