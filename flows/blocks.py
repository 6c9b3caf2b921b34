"""The blocks a Prefect deployment of projmig names, so that what its runs connect to and what they
use of the worker's host are fixed by whoever creates it:

- ``OsparcDeployment``: one osparc-simcore deployment (its PostgreSQL database and its S3 bucket); a
  ``migrate-project`` or ``rollback-migration`` deployment names two (parameters ``source`` and
  ``destination``).
- ``ProjmigHost``: the worker host's resources (a cfg.json's ``host`` section: a Dask scheduler,
  osparc's migrations package, a staging PostgreSQL server), named by the parameter ``host_block``.

Its runs may not name other blocks, nor any connection or host field (checked in
``flows/credentials.py``, which saves the blocks from a cfg.json and reads them for a run).
The block's credentials are values (stored by the Prefect server as secret fields: shown as
``********`` by its API and UI) or references (``{"env": "NAME"}`` in the worker's environment,
``{"prefect_secret": "block-name"}``) fixed in the block too.

Register the type for the Prefect UI with ``prefect block register -m flows.blocks``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from projmig.errors import ConfigError
from projmig.settings import DatabaseSettings, HostSettings, S3Settings


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


class ProjmigHost(Block):
    """What projmig may use on the machines that run a deployment's flows: a Dask scheduler, osparc's
    migrations package (a path, or the environment variable naming it there), a staging server."""

    _block_type_name: ClassVar[str] = "projmig host"
    _block_type_slug: ClassVar[str] = "projmig-host"
    _description: ClassVar[str] = (
        "The worker host's resources for a projmig deployment (a cfg.json's host section): a Dask scheduler "
        "address, osparc-simcore's migrations package, a staging PostgreSQL server. Named by the deployment "
        "(parameter host_block); its runs cannot name another."
    )

    host: HostSettings = Field(default_factory=HostSettings)


async def load_deployment_block(name: str, role: str) -> OsparcDeployment:
    """The block named ``name``, or one error line saying it is missing (never its content)."""
    return await _load(OsparcDeployment, name, role)


async def load_host_block(name: str) -> HostSettings:
    """The host's resources in the ProjmigHost block named ``name`` (one error line if it is missing)."""
    return (await _load(ProjmigHost, name, "host_block")).host


async def _load(kind: type[Block], name: str, role: str) -> Any:
    try:
        return await kind.aload(name)
    except ValueError as exc:
        if "Unable to find" in str(exc):
            raise ConfigError(f"{role}: no {kind.__name__} block named {name!r} (create it: docs/deployments.md)") from None
        raise ConfigError(f"{role}: {kind.__name__} block {name!r} cannot be read ({type(exc).__name__})") from None
