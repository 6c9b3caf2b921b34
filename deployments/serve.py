"""Serve the ``migrate-project`` flow (and its undo, ``rollback-migration``) as Prefect deployments,
or register them for a work pool's workers.

    python -m deployments.serve --config cfg.json --name onprem-to-aws                 # serve here
    python -m deployments.serve --config cfg.json --name onprem-to-aws --pool projmig  # for workers

Then, from anywhere that reaches the same Prefect API::

    prefect deployment run 'migrate-project/onprem-to-aws' -p project_uuid=... --watch
    prefect deployment run 'rollback-migration/onprem-to-aws' -p project_uuid=... --watch   # undo it

The cfg.json names the two deployments (databases, buckets) and the options; it becomes the
deployment's default ``settings`` parameter. Every credential in it must be a reference
(``{"env": "NAME"}``: an environment variable of the process that runs the flow, or
``{"prefect_secret": "block-name"}``: a Prefect Secret block), never a value: a deployment's
parameters are stored by the Prefect server and shown in its UI. The deployment's parameter schema
accepts only references for credentials, so the server refuses a run whose parameters carry a
pasted password. The projects to move are not part of the deployment: each run names them
(``project_uuid``, ``project_uuids`` or ``source_owner_user_id``).

The deployments' entrypoints are module paths (``flows.migrate.migrate_project``,
``flows.rollback.rollback_migration``): whatever runs a flow (this process, a process worker, the
Docker image) imports it from the installed package. Both deployments of a name share the cfg.json:
a rollback run with the migration run's parameters removes what that run inserted.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from projmig.errors import ConfigError
from projmig.settings import MigrationSettings, literal_credentials

FLOW_NAME = "migrate-project"
ROLLBACK_FLOW_NAME = "rollback-migration"
PASSWORD_SCHEMA = {"format": "password", "type": "string", "writeOnly": True}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def deployment_parameters(config: Path) -> dict[str, Any]:
    """The deployment's default parameters from a cfg.json: its settings without the projects to
    move. Raises :class:`ConfigError` when a credential is a value instead of a reference."""
    settings = MigrationSettings.load(config, require_projects=False)
    pasted = literal_credentials(settings)
    if pasted:
        raise ConfigError([
            f"{config}: {where}: a deployment's parameters are stored and shown by Prefect; give this "
            'credential as {"env": "NAME"} or {"prefect_secret": "block-name"}'
            for where in pasted
        ])
    data = settings.model_dump(mode="json", exclude_none=True)
    for key in ("project_uuid", "project_uuids", "owner_user_id"):
        data["source"].pop(key, None)  # each run names its projects
    return {"settings": data}


def references_only(schema: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameter schema with every credential narrowed to a reference (no plain value)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if isinstance(node.get("anyOf"), list):
                node = {**node, "anyOf": [alt for alt in node["anyOf"] if alt != PASSWORD_SCHEMA]}
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(copy.deepcopy(schema))


def make_deployments(name: str, config: Path, *, tags: list[str] | None = None) -> list[Any]:
    """``RunnerDeployment``\ s of ``migrate-project`` and ``rollback-migration`` named ``name``, with the
    cfg.json's settings as their defaults."""
    from prefect.types.entrypoint import EntrypointType
    from prefect.utilities.callables import ParameterSchema

    from flows.migrate import migrate_project
    from flows.rollback import rollback_migration

    parameters = deployment_parameters(config)
    projects = "Name the projects per run: -p project_uuid=... (or project_uuids, source_owner_user_id)."
    deployments = []
    for flow, description in (
        (migrate_project, f"Migrate osparc-simcore projects with {config.name}'s deployments and options. {projects}"),
        (rollback_migration, f"Remove from the destination what migrate-project/{name} inserted, refusing if a "
                             f"project changed there since. {projects}"),
    ):
        deployment = flow.to_deployment(
            name=name,
            parameters=parameters,
            description=description,
            tags=["projmig", *(tags or [])],
            enforce_parameter_schema=True,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
        deployment._parameter_openapi_schema = ParameterSchema(**references_only(schema))
        deployments.append(deployment)
    return deployments


@app.command()
def main(
    config: Annotated[Path, typer.Option("--config", "-c", help="cfg.json whose credentials are all references")],
    name: Annotated[str, typer.Option("--name", "-n", help="deployment name: runs are `migrate-project/<name>` (and `rollback-migration/<name>`)")] = "default",
    pool: Annotated[
        str | None, typer.Option(help="register the deployments for the workers of this work pool and exit, instead of serving them")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="flow runs at once in this process (serve only)")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="extra deployment tag (repeat for several)")] = None,
) -> None:
    """Serve `migrate-project/<name>` and `rollback-migration/<name>` (flow runs execute in
    subprocesses of this one), or register them for a work pool (`--pool`), whose workers run them."""
    try:
        deployments = make_deployments(name, config, tags=tag)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
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
