"""Serve the ``migrate-project`` flow (and its undo, ``rollback-migration``) as Prefect deployments,
or register them for a work pool's workers, from a cfg.json.

    python -m deployments.serve --config cfg.json --name onprem-to-aws                 # serve here
    python -m deployments.serve --config cfg.json --name onprem-to-aws --pool projmig  # for workers

Then, from anywhere that reaches the same Prefect API::

    prefect deployment run 'migrate-project/onprem-to-aws' -p project_uuid=... --watch
    prefect deployment run 'rollback-migration/onprem-to-aws' -p project_uuid=... --watch   # undo it

The cfg.json's two osparc deployments (database, bucket, credentials) are saved as the Prefect blocks
``<name>-source`` and ``<name>-destination`` (``flows.blocks.OsparcDeployment``; credentials as secret
fields or as references; saved by ``flows/credentials.py``, which also reads them for each run and
refuses a run naming other connections), and the deployments name them: a run cannot name other blocks nor any
connection field. The cfg.json's choices (destination owner, product, include_hidden, ...), host and
options become the deployments' default parameters; each run names its projects (``project_uuid``,
``project_uuids`` or ``source_owner_user_id``). ``prefect deploy --all`` with the repository's ``prefect.yaml`` does the same
for blocks created beforehand.

The deployments' entrypoints are module paths (``flows.migrate.migrate_project``,
``flows.rollback.rollback_migration``): whatever runs a flow (this process, a process worker, the
Docker image) imports it from the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.credentials import save_connections
from flows.parameters import choice_names
from projmig.errors import ConfigError
from projmig.settings import MigrationSettings
from projmig.text import printable

FLOW_NAME = "migrate-project"
ROLLBACK_FLOW_NAME = "rollback-migration"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# the choices each run makes for itself: never a deployment's default
PER_RUN = ("project_uuid", "project_uuids", "source_owner_user_id", "dry_run")


def deployment_parameters(settings: MigrationSettings, blocks: tuple[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(migrate-project's, rollback-migration's) default parameters: the blocks, the host's resources,
    the options, and the cfg.json's choices other than the projects (each run's), each flow's own
    (:func:`flows.parameters.choice_names`)."""
    options = settings.options.model_dump(mode="json", exclude_defaults=True)
    host = settings.host.model_dump(mode="json", exclude_defaults=True)
    chosen = settings.choices.model_dump(mode="json", exclude_defaults=True)
    fixed = {"source": blocks[0], "destination": blocks[1], **({"host": host} if host else {}),
             **({"options": options} if options else {})}
    return tuple(  # type: ignore[return-value]
        {**fixed, **{name: chosen[name] for name in choice_names(rollback=rollback) if name in chosen and name not in PER_RUN}}
        for rollback in (False, True)
    )


def make_deployments(name: str, config: Path, *, tags: list[str] | None = None) -> list[Any]:
    """The ``RunnerDeployment`` of each of ``migrate-project`` and ``rollback-migration`` named ``name``: the
    cfg.json's connections saved as blocks, its choices as their defaults."""
    from prefect.types.entrypoint import EntrypointType

    from flows.migrate import migrate_project
    from flows.rollback import rollback_migration

    settings = MigrationSettings.load(config, require_projects=False)
    migrate, rollback = deployment_parameters(settings, save_connections(name, settings))
    projects = "Name the projects per run: -p project_uuid=... (or project_uuids, source_owner_user_id)."
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


@app.command()
def main(
    config: Annotated[Path, typer.Option("--config", "-c", help="cfg.json: both osparc deployments and the defaults")],
    name: Annotated[str, typer.Option("--name", "-n", help="deployment name: runs are `migrate-project/<name>` (and `rollback-migration/<name>`)")] = "default",
    pool: Annotated[
        str | None, typer.Option(help="register the deployments for the workers of this work pool and exit, instead of serving them")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="flow runs at once in this process (serve only)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="extra deployment tag (repeat for several)")] = None,
    blocks_only: Annotated[
        bool, typer.Option("--blocks-only", help="only save the blocks <name>-source and <name>-destination (for prefect.yaml) and exit")
    ] = False,
) -> None:
    """Serve `migrate-project/<name>` and `rollback-migration/<name>` (flow runs execute in
    subprocesses of this one), or register them for a work pool (`--pool`), whose workers run them."""
    try:
        if blocks_only:
            for block in save_connections(name, MigrationSettings.load(config, require_projects=False)):
                print(f"saved OsparcDeployment block {block}")
            return
        deployments = make_deployments(name, config, tags=tag)
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
