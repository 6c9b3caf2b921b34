"""The README's generated parts: the configuration reference (from the pydantic models of
:mod:`projmig.settings`) and the table rules (from :data:`projmig.schema.TABLE_RULES`).

    python -m projmig.docs            # rewrite them in README.md
    python -m projmig.docs --check    # exit 1 when README.md is out of date

Each part lives between two markers in the README (``<!-- projmig.docs:NAME begin -->`` and
``<!-- projmig.docs:NAME end -->``); the text around them is never touched.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from .credentials import SecretRef
from .schema import TABLE_RULES
from .choices import CHOICES, RunChoices
from .settings import DatabaseSettings, HostSettings, MigrationOptions, MigrationSettings, S3Settings

README = Path(__file__).resolve().parents[1] / "README.md"

# (section as written in cfg.json, model, the paths that use it)
SECTIONS: list[tuple[str, type[BaseModel], list[str]]] = [
    ("source.db, destination.db", DatabaseSettings, ["source.db", "destination.db"]),
    ("source.s3, destination.s3", S3Settings, ["source.s3", "destination.s3"]),
    ("choices", RunChoices, ["choices"]),
    ("host", HostSettings, ["host"]),
    ("options", MigrationOptions, ["options"]),
]


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type (``credential`` for a secret value or reference)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if set(args) == {SecretStr, SecretRef}:
            return "credential"
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {type_name(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", UUID: "uuid"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if value is None:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
        return f"`{value}` ({value // (1024 * 1024)} MiB)"
    return f"`{json.dumps(value)}`" if isinstance(value, (str, list, dict)) else f"`{value}`"


def env_name(paths: list[str], name: str) -> str:
    """``PROJMIG_SOURCE__DB__HOST``; for a model used at several paths ``PROJMIG_{SOURCE,DESTINATION}__DB__HOST``."""
    heads = [p.split(".", 1)[0].upper() for p in paths]
    rest = paths[0].split(".", 1)[1:] + [name]
    head = heads[0] if len(heads) == 1 else "{" + ",".join(heads) + "}"
    return "PROJMIG_" + "__".join([head, *(r.replace(".", "__").upper() for r in rest)])


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def configuration_reference() -> str:
    """Markdown tables: every field of a cfg.json with its type, default and meaning."""
    lines = [
        "Every field of a `cfg.json` (`projmig config-template` prints a filled-in one). A field can also",
        "be set by an environment variable, `PROJMIG_` + its path in capitals with `__` between levels",
        "(`PROJMIG_SOURCE__DB__HOST`); the environment wins over the file. A *credential* is a value or a",
        "reference read when the migration starts: `{\"env\": \"NAME\"}` (an environment variable) or",
        "`{\"prefect_secret\": \"block-name\"}` (a Prefect Secret block). A Prefect deployment takes `db` and `s3` from its OsparcDeployment blocks instead.",
    ]
    required = [name for name, f in MigrationSettings.model_fields.items() if f.is_required()]
    lines += ["", f"Top level: {', '.join(f'`{n}`' for n in MigrationSettings.model_fields)} "
              f"(required: {', '.join(f'`{n}`' for n in required)})."]
    for title, model, paths in SECTIONS:
        lines += ["", f"**`{title}`**" + (f": {_cell(model.__doc__ or '')}" if model.__doc__ else ""), ""]
        lines += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                continue  # a section of its own
            meaning = field.description or ""
            if field.exclude:
                meaning = f"{meaning} (read, never written back)"
            if model is RunChoices:
                choice = CHOICES[name]
                flags = f"CLI `{choice.flags[0]}`; " if choice.flags else ""
                meaning = f"{meaning} ({flags}old place: `{choice.legacy}`)"
            env = env_name(paths, name)
            lines.append(
                f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | {_cell(meaning)} "
                f"<br>`{env}` |"
            )
    return "\n".join(lines)


def table_rules() -> str:
    """Markdown table: each table that references a project, and what a migration does with it."""
    lines = ["| table | rule |", "|---|---|"]
    lines += [f"| `{table}` | {_cell(rule)} |" for table, rule in TABLE_RULES.items()]
    return "\n".join(lines)


PARTS = {"config": configuration_reference, "table-rules": table_rules}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- projmig\.docs:{re.escape(name)} begin[^>]*-->\n)(.*?)(<!-- projmig\.docs:{re.escape(name)} end -->)",
        re.DOTALL,
    )


def render(text: str) -> str:
    """``text`` (a README) with every generated part brought up to date."""
    for name, make in PARTS.items():
        pattern = _block(name)
        if not pattern.search(text):
            raise ValueError(f"README has no <!-- projmig.docs:{name} begin --> ... end --> markers")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(3), text)
    return text


def stale_parts(text: str) -> list[str]:
    """The generated parts of ``text`` that differ from what the code says now."""
    return [name for name in PARTS if _block(name).search(text) is None
            or _block(name).search(text).group(2) != PARTS[name]() + "\n"]  # type: ignore[union-attr]


def main(argv: list[str]) -> int:
    path = Path(argv[argv.index("--readme") + 1]) if "--readme" in argv else README
    text = path.read_text()
    if "--check" in argv:
        stale = stale_parts(text)
        for name in stale:
            print(f"{path}: the generated part '{name}' is out of date: run `python -m projmig.docs`", file=sys.stderr)
        return 1 if stale else 0
    new = render(text)
    if new != text:
        path.write_text(new)
        print(f"{path}: updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
