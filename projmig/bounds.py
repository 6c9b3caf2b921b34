"""What a deployment leaves to its runs: :class:`RunBounds`, closed unless the deployment opens more.

A deployment run's choices (:mod:`projmig.choices`) and options (:class:`projmig.settings.MigrationOptions`)
are its deployment's own values unless its bounds open them; ``flows/credentials.py`` refuses a run
outside them before anything connects.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .choices import CHOICES, RunChoices
from .settings import MigrationOptions

# what a deployment's run may choose unless the deployment opens more: which projects, and whether
# to write (any run may ask for a dry run)
OPEN_BY_DEFAULT = ("project_uuid", "project_uuids", "include_hidden", "dry_run")
# options that turn a check off or change what runs the copies: a deployment's alone, never a run's
DEPLOYMENT_ONLY_OPTIONS = frozenset({"allow_schema_drift", "allow_missing_objects", "verification", "task_runner", "s3_data_client"})


def openable_options() -> list[str]:
    """The options a deployment may open to its runs: the numeric ones (concurrency, memory, batch
    sizes, waits, timeouts), where a run's smaller value asks less of the host and weakens no check."""
    return [name for name, field in MigrationOptions.model_fields.items()
            if field.annotation in (int, float) and name not in DEPLOYMENT_ONLY_OPTIONS]


class RunBounds(BaseModel):
    """What a deployment leaves to its runs: every choice and option not opened here is the
    deployment's own value, and a run that gives another is refused before anything connects."""

    model_config = ConfigDict(extra="forbid")

    choices: list[str] = Field(
        default_factory=lambda: list(OPEN_BY_DEFAULT),
        description="the choices a run may make (fields of choices); every other choice is the deployment's",
    )
    destination_user_ids: list[int] = Field(
        default_factory=list,
        description="with destination_user_id open: the destination owners a run may name besides the deployment's "
        "own (empty: any)",
    )
    product_names: list[str] = Field(
        default_factory=list,
        description="with product_name open: the products a run may name besides the deployment's own (empty: any)",
    )
    options: list[str] = Field(
        default_factory=list,
        description="the options a run may set, each at most the deployment's own value: numeric ones only "
        "(copy_concurrency, memory_limit, batch_max_files, ...); the safety switches, verification and the "
        "task runner are the deployment's alone",
    )

    @field_validator("choices")
    @classmethod
    def _choices(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in CHOICES]
        if unknown:
            raise ValueError(f"not choices: {', '.join(map(repr, unknown))}")
        return names

    @field_validator("options")
    @classmethod
    def _options(cls, names: list[str]) -> list[str]:
        openable = openable_options()
        problems = [f"{name!r} is the deployment's alone" if name in DEPLOYMENT_ONLY_OPTIONS
                    else f"{name!r} is not an option a run may set ({', '.join(openable)})"
                    for name in names if name not in openable]
        if problems:
            raise ValueError("; ".join(problems))
        return names

    @model_validator(mode="after")
    def _lists_need_their_choice(self) -> RunBounds:
        for listed, choice in (("destination_user_ids", "destination_user_id"), ("product_names", "product_name")):
            if getattr(self, listed) and choice not in self.choices:
                raise ValueError(f"{listed}: {choice} is not open to runs (add it to choices)")
        return self

    def refusals(self, run: dict[str, Any], fixed: dict[str, Any], fixed_options: dict[str, Any], deployment: str) -> list[str]:
        """Why a run is outside these bounds, one line each (none: inside). ``run`` and ``fixed`` are
        the run's and the deployment's parameters as Prefect holds them (JSON; the run's with the
        deployment's merged in), ``fixed_options`` every option's value for the deployment. A run's
        own value is never repeated: it is untrusted text."""
        defaults = RunChoices().model_dump(mode="json")
        problems = []
        for name in CHOICES:
            given, own = _effective(run, name, defaults), _effective(fixed, name, defaults)
            if given == own:
                continue
            if name not in self.choices:
                problems.append(f"{name}: fixed by {deployment} ({json.dumps(own)}); its runs choose "
                                f"{', '.join(self.choices) or 'nothing'}")
            elif name == "destination_user_id" and self.destination_user_ids and given not in self.destination_user_ids:
                problems.append(f"destination_user_id: {deployment} allows {_listed([own, *self.destination_user_ids])} only")
            elif name == "product_name" and self.product_names and given not in self.product_names:
                problems.append(f"product_name: {deployment} allows {_listed([own, *self.product_names])} only")
        options = run.get("options")
        for name, value in (options if isinstance(options, dict) else {}).items():
            own = fixed_options.get(name)
            if value == own:
                continue
            if name not in fixed_options:
                problems.append("options: a field that is not an option")
            elif name not in self.options:
                problems.append(f"options.{name}: fixed by {deployment} ({json.dumps(own)})")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value > own:
                problems.append(f"options.{name}: at most {json.dumps(own)} in a run of {deployment} (its own value)")
        return problems


def _effective(parameters: dict[str, Any], name: str, defaults: dict[str, Any]) -> Any:
    """A choice as a run takes it: the parameter given, else the choice's default."""
    value = parameters.get(name)
    return defaults[name] if value is None else value


def _listed(values: list[Any]) -> str:
    return ", ".join(json.dumps(v) for v in dict.fromkeys(v for v in values if v is not None))
