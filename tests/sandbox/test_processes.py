"""The one way the sandbox, the tests and the bench start, wait for and stop their child processes:
real processes, real signals."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from projmig.sandbox import ServerError, free_port
from projmig.sandbox.processes import spawn_logged, stop_process, wait_answering

PYTHON = sys.executable


def python(code: str, tmp_path: Path, name: str = "child"):
    return spawn_logged([PYTHON, "-c", code], env=os.environ, log=tmp_path / f"{name}.log")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                      "time.sleep(600)", tmp_path)
    while "up" not in (tmp_path / "child.log").read_text():
        time.sleep(0.05)
    began = time.monotonic()
    stop_process(stubborn, timeout=1)
    assert stubborn.returncode == -9 and 0.9 < time.monotonic() - began < 10


def test_a_group_stop_reaches_the_children_a_process_started(tmp_path: Path) -> None:
    parent = python("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
                    "time.sleep(600)']); print(child.pid, flush=True); time.sleep(600)", tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "child.log").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int((tmp_path / "child.log").read_text())
    stop_process(parent, timeout=10, group=True)
    assert parent.returncode == -15
    deadline = time.monotonic() + 10
    while not gone(grandchild):  # (reaped by init once its parent is gone)
        assert time.monotonic() < deadline, "the child of the stopped process still runs"
        time.sleep(0.05)


def test_stopping_a_process_that_already_ended_is_a_no_op(tmp_path: Path) -> None:
    done = python("pass", tmp_path)
    done.wait()
    stop_process(done, timeout=1, group=True)
    stop_process(None, timeout=1)
    assert done.returncode == 0


def test_a_server_that_exits_before_it_answers_is_reported_with_its_log(tmp_path: Path) -> None:
    failing = python("import sys; print('cannot bind: address in use', flush=True); sys.exit(3)", tmp_path)
    with pytest.raises(ServerError, match=r"(?s)the test server exited \(status 3\); its log:\ncannot bind"):
        wait_answering(failing, f"http://127.0.0.1:{free_port()}/health", log=tmp_path / "child.log", timeout=30,
                       what="the test server")


def test_waiting_ends_when_the_server_answers_and_times_out_when_it_does_not(tmp_path: Path) -> None:
    port = free_port()
    server = python(f"import time, http.server; time.sleep(1); http.server.ThreadingHTTPServer(('127.0.0.1', {port}), "
                    "http.server.SimpleHTTPRequestHandler).serve_forever()", tmp_path)
    try:
        wait_answering(server, f"http://127.0.0.1:{port}/", log=tmp_path / "child.log", timeout=30, what="http.server")
        with pytest.raises(ServerError, match=r"did not answer on .*/no-such-page within 0.5 s"):
            wait_answering(server, f"http://127.0.0.1:{port}/no-such-page", log=tmp_path / "child.log", timeout=0.5,
                           what="http.server")
    finally:
        stop_process(server, timeout=5)
