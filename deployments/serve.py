"""Serve the ``migrate-project`` flow (and its undo, ``rollback-migration``) as Prefect deployments,
or register them for a work pool's workers, from a cfg.json.

    python -m deployments.serve --config cfg.json --name onprem-to-aws                 # serve here
    python -m deployments.serve --config cfg.json --name onprem-to-aws --pool projmig  # for workers

Then, from anywhere that reaches the same Prefect API::

    prefect deployment run 'migrate-project/onprem-to-aws' -p project_uuid=... --watch
    prefect deployment run 'rollback-migration/onprem-to-aws' -p project_uuid=... --watch   # undo it

The cfg.json's two osparc deployments (database, bucket, credentials) are saved as the Prefect blocks
``<name>-source`` and ``<name>-destination`` (``flows.blocks.OsparcDeployment``; credentials as secret
fields or as references), its ``host`` section as ``<name>-host`` (``flows.blocks.ProjmigHost``), all
by ``flows/credentials.py``, and the deployments name them. The cfg.json's choices other than the
projects (destination owner, product, include_hidden, ...) and its options become the deployments'
parameters; ``--bounds bounds.json`` (a :class:`projmig.bounds.RunBounds`; default: closed) says which
of them a run may choose. Each run names its projects (``project_uuid`` or ``project_uuids``) and may
set include_hidden and dry_run; anything else a run gives, and any job variable, is refused before
anything connects (``flows/credentials.py``). ``prefect deploy --all`` with the repository's
``prefect.yaml`` does the same for blocks created beforehand.

``--pool`` registers the deployments only for a work pool whose runs can set no job variables (one
created from ``deployments/process-pool.json`` or ``deployments/docker-pool.json``).

The deployments' entrypoints are module paths (``flows.migrate.migrate_project``,
``flows.rollback.rollback_migration``): whatever runs a flow (this process, a process worker, the
Docker image) imports it from the installed package.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from flows.credentials import save_connections
from flows.parameters import choice_names
from projmig.bounds import RunBounds
from projmig.errors import ConfigError
from projmig.settings import MigrationSettings, format_validation_error
from projmig.text import printable

FLOW_NAME = "migrate-project"
ROLLBACK_FLOW_NAME = "rollback-migration"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# the choices each run makes for itself: never a deployment's default
PER_RUN = ("project_uuid", "project_uuids", "source_owner_user_id", "dry_run")
POOL_TEMPLATES = {"process": "deployments/process-pool.json", "docker": "deployments/docker-pool.json"}


def deployment_parameters(
    settings: MigrationSettings, blocks: tuple[str, ...], bounds: RunBounds | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(migrate-project's, rollback-migration's) parameters: the blocks (source, destination and, if
    named, host), the bounds (default: closed), the options, and the cfg.json's choices other than
    the projects (each run's), each flow's own (:func:`flows.parameters.choice_names`)."""
    bounds = bounds or RunBounds()
    options = settings.options.model_dump(mode="json", exclude_defaults=True)
    chosen = settings.choices.model_dump(mode="json", exclude_defaults=True)
    if "destination_user_id" in bounds.choices:
        chosen.pop("destination_user_gid", None)  # the group checked is the owner's a run names
    fixed = {"source": blocks[0], "destination": blocks[1], **({"host_block": blocks[2]} if len(blocks) > 2 else {}),
             "bounds": bounds.model_dump(mode="json"), **({"options": options} if options else {})}
    return tuple(  # type: ignore[return-value]
        {**fixed, **{name: chosen[name] for name in choice_names(rollback=rollback) if name in chosen and name not in PER_RUN}}
        for rollback in (False, True)
    )


def load_bounds(path: Path | None) -> RunBounds:
    """The bounds in a JSON file (none: the closed defaults)."""
    if path is None:
        return RunBounds()
    try:
        return RunBounds.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or type(exc).__name__}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def make_deployments(name: str, config: Path, *, tags: list[str] | None = None, bounds: RunBounds | None = None) -> list[Any]:
    """The ``RunnerDeployment`` of each of ``migrate-project`` and ``rollback-migration`` named ``name``: the
    cfg.json's connections and host saved as blocks, its choices as their defaults, within ``bounds``."""
    from prefect.types.entrypoint import EntrypointType

    from flows.migrate import migrate_project
    from flows.rollback import rollback_migration

    settings = MigrationSettings.load(config, require_projects=False)
    migrate, rollback = deployment_parameters(settings, save_connections(name, settings), bounds)
    projects = "Name the projects per run: -p project_uuid=... (or project_uuids)."
    return [
        flow.to_deployment(
            name=name,
            parameters=parameters,
            description=description,
            tags=["projmig", *(tags or [])],
            enforce_parameter_schema=True,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        for flow, parameters, description in (
            (migrate_project, migrate, f"Migrate osparc-simcore projects from {name}-source to {name}-destination. {projects}"),
            (rollback_migration, rollback, f"Remove from {name}-destination what migrate-project/{name} inserted, "
                                           f"refusing if a project changed there since. {projects}"),
        )
    ]


def refuse_open_pool(pool: str) -> None:
    """:class:`ConfigError` unless the work pool ``pool`` exists and its runs can set no job variable
    (its base job template's variables: none, and no others allowed)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def read() -> Any:
        async with get_client() as client:
            return await client.read_work_pool(pool)

    try:
        work_pool = run_coro_as_sync(read())
    except ObjectNotFound:
        raise ConfigError(f"no work pool {pool!r}: create it with "
                          f"`prefect work-pool create {pool} --type process --base-job-template {POOL_TEMPLATES['process']}`") from None
    variables = (work_pool.base_job_template or {}).get("variables") or {}
    if variables.get("properties") or variables.get("additionalProperties", True) is not False:
        template = POOL_TEMPLATES.get(work_pool.type, POOL_TEMPLATES["process"])
        raise ConfigError(f"work pool {pool!r} lets a run set job variables (env, command, ...): update it with "
                          f"`prefect work-pool update {pool} --base-job-template {template}`")


@app.command()
def main(
    config: Annotated[Path, typer.Option("--config", "-c", help="cfg.json: both osparc deployments and the defaults")],
    name: Annotated[str, typer.Option("--name", "-n", help="deployment name: runs are `migrate-project/<name>` (and `rollback-migration/<name>`)")] = "default",
    pool: Annotated[
        str | None, typer.Option(help="register the deployments for the workers of this work pool and exit, instead of serving them")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="flow runs at once in this process (serve only)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="extra deployment tag (repeat for several)")] = None,
    bounds: Annotated[
        Path | None, typer.Option("--bounds", help="what runs may choose: a JSON file of projmig.bounds.RunBounds "
                                  "(default: the projects, include_hidden and dry_run only)")
    ] = None,
    blocks_only: Annotated[
        bool, typer.Option("--blocks-only", help="only save the blocks <name>-source, <name>-destination and <name>-host "
                           "(for prefect.yaml) and exit")
    ] = False,
) -> None:
    """Serve `migrate-project/<name>` and `rollback-migration/<name>` (flow runs execute in
    subprocesses of this one), or register them for a closed work pool (`--pool`), whose workers run them."""
    try:
        if blocks_only:
            for kind, block in zip(("OsparcDeployment", "OsparcDeployment", "ProjmigHost"),
                                   save_connections(name, MigrationSettings.load(config, require_projects=False))):
                print(f"saved {kind} block {block}")
            return
        if pool:
            refuse_open_pool(pool)
        deployments = make_deployments(name, config, tags=tag, bounds=load_bounds(bounds))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {printable(problem)}", file=sys.stderr)
        raise typer.Exit(2)
    run = f"prefect deployment run '{FLOW_NAME}/{name}' -p project_uuid=<uuid> --watch"
    undo = f"prefect deployment run '{ROLLBACK_FLOW_NAME}/{name}' -p project_uuid=<uuid> --watch"
    if pool:
        for deployment in deployments:
            deployment_id = deployment.apply(work_pool_name=pool)
            print(f"registered {deployment.flow_name}/{name} ({deployment_id}) for the workers of work pool {pool!r}")
        print(f"start one:  prefect worker start --pool {pool}")
        print(f"run it:     {run}")
        print(f"undo it:    {undo}")
        return
    from prefect import serve

    print(f"serving {FLOW_NAME}/{name} and {ROLLBACK_FLOW_NAME}/{name}; run it with: {run}", flush=True)
    print(f"undo it with: {undo}", flush=True)
    serve(*deployments, limit=limit, print_starting_message=False)


if __name__ == "__main__":
    app()
