"""The manual's generated parts: the configuration reference in ``docs/configuration.md`` (from the
pydantic models of :mod:`projmig.settings` and :mod:`projmig.choices`) and the table rules in
``docs/table-rules.md`` (from :data:`projmig.schema.TABLE_RULES`).

    python -m projmig.docs                  # rewrite them in docs/
    python -m projmig.docs --check          # exit 1 when a page is out of date
    python -m projmig.docs --docs DIR ...   # the pages in DIR instead of the repository's docs/

Each part lives between two markers in its page (``<!-- projmig.docs:NAME begin -->`` and
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

DOCS = Path(__file__).resolve().parents[1] / "docs"

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
                where = [f"CLI `{choice.flags[0]}`" + (" FILE" if choice.file else "") if choice.flags else "",
                         f"old place: `{choice.legacy}`" if choice.legacy else ""]
                meaning = f"{meaning} ({'; '.join(w for w in where if w)})" if any(where) else meaning
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


# each generated part: the page it lives in (under docs/), and what makes it
PARTS = {"config": ("configuration.md", configuration_reference), "table-rules": ("table-rules.md", table_rules)}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- projmig\.docs:{re.escape(name)} begin[^>]*-->\n)(.*?)(<!-- projmig\.docs:{re.escape(name)} end -->)",
        re.DOTALL,
    )


def render(name: str, text: str) -> str:
    """``text`` (the part's page) with the generated part ``name`` brought up to date."""
    pattern = _block(name)
    if not pattern.search(text):
        raise ValueError(f"no <!-- projmig.docs:{name} begin --> ... end --> markers")
    return pattern.sub(lambda m: m.group(1) + PARTS[name][1]() + "\n" + m.group(3), text)


def is_stale(name: str, text: str) -> bool:
    """The generated part ``name`` of ``text`` is missing or differs from what the code says now."""
    found = _block(name).search(text)
    return found is None or found.group(2) != PARTS[name][1]() + "\n"


def main(argv: list[str]) -> int:
    docs = Path(argv[argv.index("--docs") + 1]) if "--docs" in argv else DOCS
    status = 0
    for name, (page, _) in PARTS.items():
        path = docs / page
        text = path.read_text()
        if "--check" in argv:
            if is_stale(name, text):
                print(f"{path}: the generated part '{name}' is out of date: run `python -m projmig.docs`", file=sys.stderr)
                status = 1
            continue
        new = render(name, text)
        if new != text:
            path.write_text(new)
            print(f"{path}: updated")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
