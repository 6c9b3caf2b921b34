"""The library stays a library: importing every projmig module loads no Prefect."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import projmig


def test_library_does_not_import_prefect() -> None:
    modules = [m.name for m in pkgutil.walk_packages(projmig.__path__, "projmig.")]
    assert "projmig.objects" in modules and "projmig.sandbox.sample" in modules
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + (
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(bad[:5]); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
