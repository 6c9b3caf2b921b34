"""The program :mod:`projmig.releases` runs in a subprocess to move one database from one osparc
revision to another with osparc-simcore's own alembic migrations (``python -m projmig.osparc_alembic``).

Why a subprocess: the migrations are the operator's code (their osparc-simcore checkout), they import
osparc's models and ``common_library`` from that checkout's sources, and they run synchronously on
psycopg2; none of that belongs in projmig's process (its ``sys.path``, its event loop, its logging).

It is driven like osparc's own ``sc-pg upgrade``: alembic with ``script_location`` = the package's
``simcore_postgres_database/migration`` (so osparc's ``env.py`` runs, with its one transaction around
every step: a failed step leaves the database at the revision it had), and ``sqlalchemy.url`` =
``postgresql+psycopg2://user@host:port/database``. The password never is an argument: libpq reads
``PGPASSWORD`` from the environment.

It starts before it is needed: the environment variable ``PROJMIG_OSPARC_ALEMBIC`` (JSON:
script_location, versions) says what to import, and it imports it at once; then each line on stdin
is a request (JSON: command, revision, url), answered by one line ``PROJMIG-RESULT {json}`` on
stdout: the steps it ran, or the step that failed (``revision``) with the error's type and message.
Imports nothing of projmig, so that its start costs only alembic's, SQLAlchemy's and osparc's imports.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from typing import Any

REQUEST_ENV = "PROJMIG_OSPARC_ALEMBIC"
# what every run imports: alembic, the driver osparc's env.py connects with, osparc's models (its env.py)
PRELOADED = ("alembic.command", "psycopg2", "simcore_postgres_database.settings")
RESULT_MARK = "PROJMIG-RESULT "


def _source_tree_distributions(versions: dict[str, str]) -> None:
    """Let ``importlib.metadata.version(name)`` answer for packages used from their source tree:
    osparc's ``simcore_postgres_database`` and ``common_library`` ask for their own version at import,
    and a checkout on ``PYTHONPATH`` has no installed metadata. An installed distribution of the same
    name is found first (this finder comes last)."""
    import importlib.metadata as metadata

    class SourceTreeDistribution(metadata.Distribution):
        def __init__(self, name: str, version: str):
            self._text = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"

        def read_text(self, filename: str) -> str | None:
            return self._text if filename == "METADATA" else None

        def locate_file(self, path: Any) -> Any:
            return None

    class SourceTreeFinder(metadata.DistributionFinder):
        def find_spec(self, *args: Any, **kwargs: Any) -> None:
            return None

        def find_distributions(self, context: Any = metadata.DistributionFinder.Context()) -> Any:
            wanted = None if context.name is None else metadata.Prepared.normalize(context.name)
            for name, version in versions.items():
                if wanted is None or metadata.Prepared.normalize(name) == wanted:
                    yield SourceTreeDistribution(name, version)

    sys.meta_path.append(SourceTreeFinder())


class _Steps(logging.Handler):
    """Alembic logs ``Running <step>`` before each step: the last one is where a failure happened."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.steps: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "Running %s" or not record.args:
            return
        step = record.args[0] if isinstance(record.args, tuple) else record.args
        script = getattr(step, "revision", None)  # the script whose upgrade() or downgrade() runs
        self.steps.append({
            "revision": getattr(script, "revision", None),
            "step": str(step),
            "started": time.monotonic(),
        })


def preload(setup: dict[str, Any]) -> str | None:
    """Import what every run needs while the parent still prepares the database (~1 s here: alembic
    and SQLAlchemy ~0.7 s, osparc's models, which its env.py imports, ~0.3 s). An import error is
    kept and reported by the first run."""
    _source_tree_distributions(setup.get("versions", {}))
    try:
        for module in PRELOADED:
            importlib.import_module(module)
    except BaseException as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return None


def run(setup: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    steps = _Steps()
    migration_log = logging.getLogger("alembic.runtime.migration")
    migration_log.setLevel(logging.INFO)
    migration_log.handlers[:] = [steps]
    migration_log.propagate = False  # osparc's data migrations log row contents: keep them off stderr
    started = time.monotonic()
    try:
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", setup["script_location"])
        # ConfigParser interpolates '%': a database or user name may hold one
        config.set_main_option("sqlalchemy.url", request["url"].replace("%", "%%"))
        getattr(command, request["command"])(config, request["revision"])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
        last = steps.steps[-1] if steps.steps else None
        return {
            "ok": False,
            "step": last["step"] if last else None,
            "revision": last["revision"] if last else None,
            "error_type": type(exc).__name__,
            "error": str(exc)[:20000],  # one line of the parent's pipe, whatever the migration said
            "seconds": time.monotonic() - started,
        }
    return {"ok": True, "steps": [s["step"] for s in steps.steps], "seconds": time.monotonic() - started}


def main() -> int:
    """One request per line on stdin (command, revision, url), one result line each on stdout,
    until stdin closes."""
    setup = json.loads(os.environ[REQUEST_ENV])
    started = time.monotonic()
    failed_import = preload(setup)
    ready = time.monotonic() - started
    for line in sys.stdin:
        if not line.strip():
            continue
        if failed_import:
            result = {"ok": False, "step": None, "revision": None, "error_type": failed_import.split(":", 1)[0],
                      "error": failed_import.split(": ", 1)[-1], "seconds": 0.0}
        else:
            result = run(setup, json.loads(line))
        result["preload_seconds"] = ready
        sys.stdout.write("\n" + RESULT_MARK + json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
