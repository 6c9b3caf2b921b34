"""How far one ``--project`` travels: ``projmig migrate --project <uuid>`` on a sandbox, traced from the
CLI to the insert, and the largest modules. ``python -m bench.handoffs`` (about a minute).

Every call of a function of ``projmig/`` or ``flows/`` is looked at when it starts (not when a
coroutine resumes): if one of its arguments holds the project's uuid (the value itself, or inside a
list, dict, dataclass or pydantic model, a few levels down), the call is a step of the uuid's way.
Up to the first such call in ``projmig/insert.py``:

- *calls*: how many such calls;
- *hand-offs*: how often the uuid passes from one file to another (consecutive calls in one file
  count once);
- *files*: how many files it passes through, and which ones it enters more than once.

It only needs what both older and newer commits have (``flows.cli.app``, the sandbox and its sample
builder), so that the same script measures both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import dis
import json
import os
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

REPO = Path(__file__).resolve().parent.parent
TRACED = (str(REPO / "projmig") + os.sep, str(REPO / "flows") + os.sep)
INSERT = str(REPO / "projmig" / "insert.py")
DEPTH, WIDTH = 4, 64  # how far into an argument the uuid is looked for


def holds(value: Any, target: str, depth: int = DEPTH) -> bool:
    if isinstance(value, (str, UUID)):
        return str(value) == target
    if depth == 0 or isinstance(value, (int, float, bytes, bool)) or value is None:
        return False
    if isinstance(value, dict):
        items: list[Any] = [v for pair in list(value.items())[:WIDTH] for v in pair]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)[:WIDTH]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    elif hasattr(value, "__pydantic_fields__") and not isinstance(value, type):
        items = [getattr(value, name, None) for name in type(value).__pydantic_fields__]
    else:
        return False
    return any(holds(v, target, depth - 1) for v in items)


class Tracer:
    def __init__(self, target: str):
        self.target = target
        self.calls: list[tuple[str, str]] = []  # (file relative to the repo, function)
        self.done = False
        self._fresh: dict[Any, int] = {}

    def _start_offset(self, code: Any) -> int:
        if code not in self._fresh:
            self._fresh[code] = next(
                (i.offset for i in dis.get_instructions(code) if i.opname == "RESUME" and i.arg == 0), 0
            )
        return self._fresh[code]

    def hook(self, frame: Any, event: str, arg: Any) -> None:
        if event != "call" or self.done:
            return
        code = frame.f_code
        if not code.co_filename.startswith(TRACED) or frame.f_lasti != self._start_offset(code):
            return
        arguments = [frame.f_locals.get(name) for name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        if not any(holds(a, self.target) for a in arguments):
            return
        self.calls.append((os.path.relpath(code.co_filename, REPO), code.co_qualname))
        if code.co_filename == INSERT:
            self.done = True

    def summary(self) -> dict[str, Any]:
        files = [f for f, _ in self.calls]
        runs = [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]
        entered = Counter(runs)
        return {
            "calls": len(self.calls),
            "hand_offs": max(0, len(runs) - 1),
            "files": len(entered),
            "entered_more_than_once": {f: n for f, n in entered.most_common() if n > 1},
            "way": runs,
        }


def largest_modules(count: int = 10) -> list[tuple[str, int]]:
    sizes = [
        (str(p.relative_to(REPO)), len(p.read_text().splitlines()))
        for folder in ("projmig", "flows", "deployments") for p in (REPO / folder).rglob("*.py")
    ]
    return sorted(sizes, key=lambda s: -s[1])[:count]


async def seed(sandbox: Any, workdir: Path) -> tuple[Path, str]:
    from projmig.sandbox.sample import SampleSpec, build_sample_project

    src_db, src_ids = await sandbox.source.create_simcore_database("handoffs", users=["alice"])
    dst_db, dst_ids = await sandbox.destination.create_simcore_database("handoffs", users=["alice"], skip_user_ids=5)
    src_s3 = await sandbox.source.create_bucket("handoffs-src")
    dst_s3 = await sandbox.destination.create_bucket("handoffs-dst")
    sample = await build_sample_project(src_db, src_s3, owner_id=src_ids.users["alice"].id, spec=SampleSpec())

    def db(d: Any) -> dict[str, Any]:
        return {"host": d.host, "port": d.port, "user": d.user, "password": d.password.get_secret_value(), "database": d.database}

    def s3(s: Any) -> dict[str, Any]:
        return {"endpoint": s.endpoint, "provider": s.provider.value, "access_key": s.access_key.get_secret_value(),
                "secret_key": s.secret_key.get_secret_value(), "bucket": s.bucket}

    config = {
        # a placeholder the command line overrides: the traced uuid comes from --project only
        "source": {"db": db(src_db), "s3": s3(src_s3), "project_uuid": str(uuid4())},
        "destination": {"db": db(dst_db), "s3": s3(dst_s3), "user_id": dst_ids.users["alice"].id},
    }
    path = workdir / "cfg.json"
    path.write_text(json.dumps(config))
    return path, str(sample.uuid)


def main() -> None:
    from projmig.sandbox import Sandbox

    workdir = Path(tempfile.mkdtemp(prefix="projmig-handoffs-"))
    os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sandbox = Sandbox(workdir / "servers").start()
    try:
        config, project = asyncio.run(seed(sandbox, workdir))
        from flows.cli import app

        tracer = Tracer(project)
        threading.setprofile(tracer.hook)
        sys.setprofile(tracer.hook)
        try:
            app(["migrate", "--config", str(config), "--project", project], standalone_mode=False)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
    finally:
        sandbox.stop()
    result = tracer.summary()
    print(f"--project from the CLI to the insert: {result['calls']} calls, {result['hand_offs']} hand-offs "
          f"over {result['files']} files" + ("" if tracer.done else " (the insert was not reached)"))
    for name, times in result["entered_more_than_once"].items():
        print(f"  entered {times} times: {name}")
    print("  way: " + " -> ".join(result["way"]))
    print("largest modules:")
    for name, lines in largest_modules():
        print(f"  {lines:5d}  {name}")


if __name__ == "__main__":
    main()
