"""Where copy progress goes: in-process listeners (the CLI's progress bar) and nothing else.

Tasks report bytes as they move; the flow reports how much there is to move. Listeners live in
this process only: a Dask worker has none (the flow's progress artifact still advances per task)."""

from __future__ import annotations

import threading
from typing import Protocol


class Listener(Protocol):
    def total(self, objects: int, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _each() -> list[Listener]:
    with _lock:
        return list(_listeners)


def report_total(objects: int, nbytes: int) -> None:
    for listener in _each():
        listener.total(objects, nbytes)


def report_bytes(nbytes: int) -> None:
    for listener in _each():
        listener.advance(nbytes)
