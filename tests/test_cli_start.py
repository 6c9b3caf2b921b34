"""The command line starts with what it needs only (issue 26, point 4): ``projmig --help``, a
command's ``--help`` and importing ``flows.cli`` load neither Prefect nor the copy machinery (nor
SQLAlchemy, botocore, asyncpg: `projmig --help` connects to nothing), and what ``projmig plan`` and
``projmig verify`` import when they run (``projmig.commands``) holds no Prefect. Each check runs in a
fresh interpreter. Its time is printed (``pytest -s``), never asserted: this machine's load decides it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

PREFECT = ("prefect",)
COPYING = ("projmig.copier", "projmig.multipart")  # what moves bytes (plan and verify list, never copy)
CONNECTING = ("sqlalchemy", "asyncpg", "botocore", "aiobotocore", "aiohttp")  # what talks to a deployment


def loaded(code: str) -> tuple[set[str], float]:
    """The modules a fresh interpreter holds after ``code``, and its wall time (seconds)."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - began
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1])), took


def among(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


def cli(*args: str) -> str:
    """``projmig ARGS`` in this interpreter as the console script runs it; its output not printed."""
    return (
        "import contextlib, io\nfrom flows.cli import app\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try:\n        app({list(args)!r})\n    except SystemExit as exc:\n        assert exc.code in (0, None), exc.code\n"
    )


@pytest.mark.parametrize("args", [(), ("--help",), ("plan", "--help"), ("verify", "--help"), ("migrate", "--help")],
                         ids=lambda a: "import flows.cli" if not a else " ".join(a))
def test_the_cli_starts_without_prefect_nor_the_copy_machinery(args: tuple[str, ...]) -> None:
    modules, took = loaded(cli(*args) if args else "import flows.cli")
    print(f"projmig {' '.join(args) or '(import flows.cli)'}: {took:.2f} s, {len(modules)} modules")
    assert among(modules, PREFECT) == []
    assert among(modules, COPYING) == []
    assert among(modules, CONNECTING) == []


def test_plan_and_verify_import_no_prefect() -> None:
    """What ``plan``/``verify`` import when they run (their library calls, the credentials' resolution);
    Prefect only for a Secret block reference, which these settings do not hold."""
    modules, took = loaded("import flows.cli, flows.credentials\nfrom projmig import commands")
    print(f"flows.cli + projmig.commands: {took:.2f} s, {len(modules)} modules")
    assert among(modules, PREFECT) == []
    assert "projmig.commands" in modules and "sqlalchemy" in modules  # (the check sees what it looks for)


def test_a_local_server_still_starting_is_used_not_started_again(tmp_path, monkeypatch) -> None:
    """`projmig migrate` starts the local Prefect server without waiting for it (it imports Prefect
    meanwhile): a second command finding it recorded, not yet answering but running, uses it and
    waits for it; a record whose server is gone is not used (flows/local_api.py)."""
    import os

    from flows import local_api

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    # use_local_api sets PREFECT_API_URL itself: the setenv records the value this process had, so
    # that the teardown restores it (a delenv of an absent variable records nothing, and the
    # address set here leaked into later tests' commands); the test's own removals below go
    # around monkeypatch for the same reason
    monkeypatch.setenv("PREFECT_API_URL", "")
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("PROJMIG_PREFECT_API", raising=False)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "no-profiles.toml"))
    spawned: list[str] = []
    monkeypatch.setattr(local_api, "_spawn", lambda home: spawned.append(str(home)) or "http://127.0.0.1:9/api")
    starting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # stands for the server
    try:
        (tmp_path / local_api.RECORD).write_text(json.dumps(
            {"api_url": "http://127.0.0.1:9/api", "pid": starting.pid, "started": time.time()}))
        assert local_api.use_local_api(print, start=False, wait=False) == "local" and spawned == []
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"
        del os.environ["PREFECT_API_URL"]
        starting.kill()
        starting.wait()
        assert local_api.use_local_api(print, start=False, wait=False) == "absent"  # gone: not used
        assert local_api.use_local_api(print, start=True, wait=False) == "local" and spawned == [str(tmp_path)]
        del os.environ["PREFECT_API_URL"]
        monkeypatch.setenv("PROJMIG_PREFECT_API", "ephemeral")  # Prefect's temporary server, asked for
        assert local_api.use_local_api(print) == "ephemeral" and len(spawned) == 1
        monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # configured: used as it is
        assert local_api.use_local_api(print) == "configured" and len(spawned) == 1
    finally:
        starting.kill()
        starting.wait()


@pytest.mark.parametrize("ending, status, stderr", [
    ("exit_now(3)", 3, ""),
    ("exit_now(None)", 0, ""),
    ("exit_now('no such thing')", 1, "no such thing\n"),
])
def test_the_command_exits_without_teardown_but_with_all_it_said_and_did(tmp_path, ending: str, status: int, stderr: str) -> None:
    """``flows/cli.py``'s way out (:func:`flows.cli.exit_now`) skips the interpreter's teardown, not
    what an exit does: a worker thread finishes its job, atexit handlers run, stdout is flushed whole."""
    marker = tmp_path / "atexit"
    script = (
        "import atexit, concurrent.futures, pathlib, sys, time\n"
        "from flows.cli import exit_now\n"
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('ran'))\n"
        "pool = concurrent.futures.ThreadPoolExecutor(1)\n"
        f"pool.submit(lambda: (time.sleep(0.3), pathlib.Path({str(marker) + '.thread'!r}).write_text('done')))\n"
        "sys.stdout.write('x' * 200000)\n"
        f"{ending}\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (status, stderr)
    assert result.stdout == "x" * 200000
    assert marker.read_text() == "ran" and (tmp_path / "atexit.thread").read_text() == "done"
