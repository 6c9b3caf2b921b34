"""Where copy progress goes: in-process listeners (the CLI's progress bar) and a Prefect progress
artifact. Tasks report bytes as they move; listeners live in this process only (a Dask worker
has none, and then only the artifact advances, per finished task run)."""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[int], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def report_bytes(n: int) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(n)
