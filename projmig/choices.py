"""What a run moves and how: :class:`RunChoices`, the one definition of a run's choices.

The CLI's options (``flows/cli.py``), the parameters of the ``migrate-project`` and
``rollback-migration`` flows, a deployment's default parameters (``deployments/serve.py``), the
settings they override (:meth:`projmig.settings.MigrationSettings.with_choices`) and the name of a
run are all made from the fields below: a choice added here reaches each of them. Each field says,
in its :class:`Choice`, where the old ``cfg.json`` kept it, its command-line flags, and which
commands and flows take it.

A run's choices are its own, within what its deployment allows (:class:`projmig.bounds.RunBounds`: closed unless
the deployment opens more); connections, the host's resources (:class:`projmig.settings.HostSettings`)
and tuning options are not choices.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError

# the commands that name projects and their ids alike, so that each finds what the others did
SELECTING = frozenset({"plan", "migrate", "verify", "cleanup", "rollback"})
RECEIVING = frozenset({"plan", "migrate", "verify"})  # the commands that need the destination's owner


class UuidPolicy(StrEnum):
    KEEP = "keep"
    NEW = "new"


@dataclass(frozen=True)
class Choice:
    """How a choice appears outside the model."""

    legacy: str | None  # its place in the old cfg.json shape ("source.project_uuid"), still read
    flags: tuple[str, ...] = ()  # the CLI option's names; none: not a CLI option
    commands: frozenset[str] = frozenset()  # the CLI commands that take it
    rollback: bool = False  # a parameter of the rollback-migration flow too
    file: bool = False  # the CLI option names a CSV file of pairs (:func:`read_pairs`), the choice holds them


class RunChoices(BaseModel):
    """Which projects a run moves, to whom, under which ids."""

    model_config = ConfigDict(extra="forbid")

    project_uuid: Annotated[UUID | None, Choice("source.project_uuid", rollback=True)] = Field(
        None, description="the project to move")
    project_uuids: Annotated[list[UUID], Choice("source.project_uuids", ("--project", "-p"), SELECTING, rollback=True)] = Field(
        default_factory=list, description="projects to move (with project_uuid, all of them)")
    source_owner_user_id: Annotated[int | None, Choice("source.owner_user_id", rollback=True)] = Field(
        None, description="move every non-trashed project of this source user")
    source_owner_user_ids: Annotated[list[int], Choice(None, ("--owner",), SELECTING, rollback=True)] = Field(
        default_factory=list, description="move every non-trashed project of these source users (with source_owner_user_id)")
    all_users: Annotated[bool, Choice(None, ("--all-users",), SELECTING, rollback=True)] = Field(
        False, description="move every non-trashed project of every active source user (a whole deployment)")
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
    match_users: Annotated[Literal["email"] | None, Choice(None, ("--match-users",), SELECTING, rollback=True)] = Field(
        None, description="each project goes to its owner's own account in the destination: the active user with the "
        "same e-mail (case-insensitive); user_map names the exceptions")
    user_map: Annotated[dict[str, str], Choice(None, ("--user-map",), SELECTING, rollback=True, file=True)] = Field(
        default_factory=dict, description="source user (e-mail or id) -> destination user (e-mail or id); the CLI reads "
        "it from a CSV file of two columns")
    skip_unmatched: Annotated[bool, Choice(None, ("--skip-unmatched",), SELECTING, rollback=True)] = Field(
        False, description="with match_users or user_map: skip (and report) the projects of a source user without one "
        "matching active destination user, or who is not active, instead of refusing the run")
    into_folder: Annotated[str | None, Choice(None, ("--into-folder",), SELECTING, rollback=True)] = Field(
        None, max_length=200, description="in each destination account, a private folder of this name (made once, found "
        "again by a rerun) holds the migrated root projects")
    keep_folders: Annotated[bool, Choice(None, ("--keep-folders",), SELECTING, rollback=True)] = Field(
        False, description="re-create each owner's own folder tree of the source (under into_folder, else at the root)")
    group_map: Annotated[dict[str, str], Choice(None, ("--group-map",), SELECTING, rollback=True, file=True)] = Field(
        default_factory=dict, description="source standard group name -> destination group name: sharing with a mapped "
        "group is kept (else dropped and reported); the CLI reads it from a CSV file of two columns")

    @property
    def projects(self) -> list[UUID]:
        """The projects named (``project_uuid`` first), each once."""
        return list(dict.fromkeys(([self.project_uuid] if self.project_uuid else []) + self.project_uuids))

    @property
    def owners(self) -> list[int]:
        """The source users whose projects are named (``source_owner_user_id`` first), each once."""
        return list(dict.fromkeys(([self.source_owner_user_id] if self.source_owner_user_id is not None else [])
                                  + self.source_owner_user_ids))

    @property
    def names_projects(self) -> bool:
        return bool(self.projects) or bool(self.owners) or self.all_users

    @property
    def matches_users(self) -> bool:
        """Each project goes to its owner's matched account (not to one destination user)."""
        return self.match_users is not None or bool(self.user_map)

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
        if not uuids and self.all_users:
            return "migrate-all-users"
        if not uuids and self.owners:
            return f"migrate-projects-of-user{'s' if len(self.owners) > 1 else ''}-{'-'.join(map(str, self.owners))}"
        first = str(uuids[0])[:8] if uuids else "projects"
        return f"migrate-{first}" + (f"-and-{len(uuids) - 1}-more" if len(uuids) > 1 else "")


def choice_of(name: str) -> Choice:
    return next(m for m in RunChoices.model_fields[name].metadata if isinstance(m, Choice))


CHOICES: dict[str, Choice] = {name: choice_of(name) for name in RunChoices.model_fields}


def read_pairs(path: Path) -> dict[str, str]:
    """A CSV file of two columns (a header is skipped if its first cell is not a value of the map: a
    line ``source,destination``), as a dict; blank lines and ``#`` comments skipped. One error line
    (:class:`ConfigError`) names the file and the line that is not a pair."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    pairs: dict[str, str] = {}
    for number, row in enumerate(csv.reader(lines), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"{path}: line {number}: expected two values (source,destination)")
        if number == 1 and row[0].strip().lower() in ("source", "from", "source user", "source group"):
            continue
        pairs[row[0].strip()] = row[1].strip()
    return pairs
