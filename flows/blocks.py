"""``OsparcDeployment``: one osparc-simcore deployment (its PostgreSQL database and its S3 bucket) as a
Prefect block, so that the connections of a Prefect deployment are fixed by whoever creates it.

A ``migrate-project`` or ``rollback-migration`` deployment names two such blocks (parameters ``source``
and ``destination``); its runs may not name others, nor any connection field (:func:`refuse_connections`).
The block's credentials are values (stored by the Prefect server as secret fields: shown as
``********`` by its API and UI) or references (``{"env": "NAME"}`` in the worker's environment,
``{"prefect_secret": "block-name"}``) fixed in the block too.

Register the type for the Prefect UI with ``prefect block register -m flows.blocks``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block

from projmig.errors import ConfigError
from projmig.settings import DatabaseSettings, S3Settings

# parameters that name connections: a run gets the deployment's own, or is refused
CONNECTION_PARAMETERS = ("source", "destination", "settings")
# options that reach out to other machines: fixed by the deployment as well
CONNECTION_OPTIONS = ("dask_address",)


class OsparcDeployment(Block):
    """An osparc-simcore deployment: its PostgreSQL database and its S3 bucket, with credentials."""

    _block_type_name: ClassVar[str] = "osparc deployment"
    _block_type_slug: ClassVar[str] = "osparc-deployment"
    _description: ClassVar[str] = (
        "An osparc-simcore deployment for projmig: its PostgreSQL database and its S3 bucket. A projmig "
        "deployment names two (source, destination); its runs cannot name others."
    )

    db: DatabaseSettings
    s3: S3Settings


async def load_deployment_block(name: str, role: str) -> OsparcDeployment:
    """The block named ``name``, or one error line saying it is missing (never its content)."""
    try:
        return await OsparcDeployment.aload(name)
    except ValueError as exc:
        if "Unable to find" in str(exc):
            raise ConfigError(f"{role}: no OsparcDeployment block named {name!r} (create it: see the README's Prefect section)") from None
        raise ConfigError(f"{role}: OsparcDeployment block {name!r} cannot be read ({type(exc).__name__})") from None


def refuse_connections(run: dict[str, Any], fixed: dict[str, Any], deployment: str) -> None:
    """Raise :class:`ConfigError` (one line per parameter) unless a run's connection parameters are
    the deployment's own: ``run`` are the run's parameters (the deployment's defaults merged in by
    Prefect), ``fixed`` the deployment's. Called before anything is loaded or connected."""
    problems = [
        f"parameter {name!r}: the connections of {deployment} are fixed by its blocks; a run names only what to "
        "move and how (projects, owner, product, include_hidden, uuid_policy, copy_label, dry_run, options)"
        for name in CONNECTION_PARAMETERS
        if run.get(name) != fixed.get(name)
    ]
    run_options, fixed_options = run.get("options") or {}, fixed.get("options") or {}
    if isinstance(run_options, dict) and isinstance(fixed_options, dict):
        problems += [
            f"parameter 'options.{name}': fixed by {deployment} (it names another machine)"
            for name in CONNECTION_OPTIONS
            if name in run_options and run_options.get(name) != fixed_options.get(name)
        ]
    if problems:
        raise ConfigError(problems)


def merged_options(run: dict[str, Any] | None, fixed: dict[str, Any] | None) -> dict[str, Any]:
    """The options of a deployment run: the deployment's, with the run's on top."""
    merged = dict((fixed or {}).get("options") or {})
    merged.update((run or {}).get("options") or {})
    return merged


