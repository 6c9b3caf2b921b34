"""Run one measured process: wall time, exit code, peak RSS of the process (``wait4``) and of its
process tree (sampled from ``/proc``), output kept in files (pipes could block a chatty child)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ProcResult:
    cmd: list[str]
    seconds: float
    returncode: int
    peak_rss_mb: float  # the process itself: its VmHWM (the kernel's high-water mark), last sampled
    tree_peak_rss_mb: float  # sum over the process and its live descendants, sampled every 50 ms
    cpu_seconds: float  # user + system CPU of the process and the descendants it waited for
    stdout: str
    stderr: str

    def check(self, what: str) -> ProcResult:
        if self.returncode != 0:
            tail = (self.stderr or self.stdout)[-3000:]
            raise RuntimeError(f"{what} failed with exit code {self.returncode}: {' '.join(self.cmd[:4])} ...\n{tail}")
        return self


def _memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB. Not ``ru_maxrss``: a forked child's counts the parent's pages it had
    before ``exec`` (the bench's own ~200 MB), while VmHWM starts again at ``exec``."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, hwm


def _descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(parents.get(pid, []))
    return found


class TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0  # of the tree's summed RSS
        self.own_hwm_kb = 0  # the process's own high-water mark
        self.done = threading.Event()

    def run(self) -> None:
        scans = 0
        pids = [self.pid]
        while not self.done.is_set():
            if scans % 10 == 0:  # a /proc scan is not free on 2 cores: children rarely change
                pids = _descendants(self.pid)
            scans += 1
            total = 0
            for pid in pids:
                rss, hwm = _memory_kb(pid)
                total += rss
                if pid == self.pid:
                    self.own_hwm_kb = max(self.own_hwm_kb, hwm)
            self.peak_kb = max(self.peak_kb, total)
            self.done.wait(self.interval)


def run_measured(
    cmd: list[str], *, env: dict[str, str] | None = None, stdin_text: str | None = None, cwd: str | Path | None = None,
    timeout: float = 1800.0,
) -> ProcResult:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if stdin_text is not None:
            inp.write(stdin_text.encode())
            inp.seek(0)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=inp, stdout=out, stderr=err)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)  # our own child, by its handle
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            cmd=cmd,
            seconds=seconds,
            returncode=proc.returncode,
            peak_rss_mb=max(sampler.own_hwm_kb, 0) / 1024,
            tree_peak_rss_mb=sampler.peak_kb / 1024,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )
