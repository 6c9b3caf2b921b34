"""What a run moves and how: :class:`RunChoices`, the one definition of a run's choices.

The CLI's options (``flows/cli.py``), the parameters of the ``migrate-project`` and
``rollback-migration`` flows, a deployment's default parameters (``deployments/serve.py``), the
settings they override (:meth:`projmig.settings.MigrationSettings.with_choices`) and the name of a
run are all made from the fields below: a choice added here reaches each of them. Each field says,
in its :class:`Choice`, where the old ``cfg.json`` kept it, its command-line flags, and which
commands and flows take it.

A run's choices are its own, within what its deployment allows; connections, the host's resources
(:class:`projmig.settings.HostSettings`) and tuning options are not choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

# the commands that name projects and their ids alike, so that each finds what the others did
SELECTING = frozenset({"plan", "migrate", "verify", "cleanup", "rollback"})
RECEIVING = frozenset({"plan", "migrate", "verify"})  # the commands that need the destination's owner


class UuidPolicy(StrEnum):
    KEEP = "keep"
    NEW = "new"


@dataclass(frozen=True)
class Choice:
    """How a choice appears outside the model."""

    legacy: str  # its place in the old cfg.json shape ("source.project_uuid"), still read
    flags: tuple[str, ...] = ()  # the CLI option's names; none: not a CLI option
    commands: frozenset[str] = frozenset()  # the CLI commands that take it
    rollback: bool = False  # a parameter of the rollback-migration flow too


class RunChoices(BaseModel):
    """Which projects a run moves, to whom, under which ids."""

    model_config = ConfigDict(extra="forbid")

    project_uuid: Annotated[UUID | None, Choice("source.project_uuid", rollback=True)] = Field(
        None, description="the project to move")
    project_uuids: Annotated[list[UUID], Choice("source.project_uuids", ("--project", "-p"), SELECTING, rollback=True)] = Field(
        default_factory=list, description="projects to move (with project_uuid, all of them)")
    source_owner_user_id: Annotated[int | None, Choice("source.owner_user_id", ("--owner",), SELECTING, rollback=True)] = Field(
        None, description="move every non-trashed project of this source user")
    include_hidden: Annotated[bool, Choice("source.include_hidden", ("--include-hidden/--no-hidden",), SELECTING, rollback=True)] = Field(
        False, description="also move the hidden job projects whose parent is moved (recursively)")
    destination_user_id: Annotated[int | None, Choice("destination.user_id", ("--to-user",), RECEIVING)] = Field(
        None, description="the destination user who will own the projects and files")
    destination_user_gid: Annotated[int | None, Choice("destination.user_gid")] = Field(
        None, description="that user's primary group; checked, not required (read from the destination)")
    product_name: Annotated[str | None, Choice("destination.product_name", ("--product",), RECEIVING)] = Field(
        None, description="the destination product (default: each project's own)")
    uuid_policy: Annotated[UuidPolicy, Choice("options.uuid_policy", ("--uuid-policy",), SELECTING, rollback=True)] = Field(
        UuidPolicy.KEEP, description="keep: the source's ids; new: a copy under new ids")
    copy_label: Annotated[str, Choice("options.copy_label", ("--copy-label",), SELECTING, rollback=True)] = Field(
        "", max_length=200,
        description="with uuid_policy=new, names the copy: the same label resumes it, another makes another copy")
    dry_run: Annotated[bool, Choice("options.dry_run", ("--dry-run",), frozenset({"migrate", "rollback"}), rollback=True)] = Field(
        False, description="say what would happen, write nothing")

    @property
    def projects(self) -> list[UUID]:
        """The projects named (``project_uuid`` first), each once."""
        return list(dict.fromkeys(([self.project_uuid] if self.project_uuid else []) + self.project_uuids))

    @property
    def names_projects(self) -> bool:
        return bool(self.projects) or self.source_owner_user_id is not None

    def with_given(self, given: dict[str, Any]) -> RunChoices:
        """These choices with those ``given`` (by field name; None: not given). Naming projects
        replaces the projects named before; another destination owner drops the group checked for the
        one before."""
        given = {name: value for name, value in given.items() if value is not None}
        if "project_uuid" in given or "project_uuids" in given:
            given = {"project_uuid": None, "project_uuids": [], **given}
        if "destination_user_id" in given:
            given.setdefault("destination_user_gid", None)
        return RunChoices.model_validate({**self.model_dump(), **given})

    def run_name(self) -> str:
        """``migrate-1a2b3c4d``, ``migrate-1a2b3c4d-and-2-more`` or ``migrate-projects-of-user-7``."""
        uuids = self.projects
        if not uuids and self.source_owner_user_id is not None:
            return f"migrate-projects-of-user-{self.source_owner_user_id}"
        first = str(uuids[0])[:8] if uuids else "projects"
        return f"migrate-{first}" + (f"-and-{len(uuids) - 1}-more" if len(uuids) > 1 else "")


def choice_of(name: str) -> Choice:
    return next(m for m in RunChoices.model_fields[name].metadata if isinstance(m, Choice))


CHOICES: dict[str, Choice] = {name: choice_of(name) for name in RunChoices.model_fields}
