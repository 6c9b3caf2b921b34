"""``OsparcDeployment``: one osparc-simcore deployment (its PostgreSQL database and its S3 bucket) as a
Prefect block, so that the connections of a Prefect deployment are fixed by whoever creates it.

A ``migrate-project`` or ``rollback-migration`` deployment names two such blocks (parameters ``source``
and ``destination``); its runs may not name others, nor any connection field (checked in
``flows/credentials.py``, which saves the blocks from a cfg.json and reads them for a run).
The block's credentials are values (stored by the Prefect server as secret fields: shown as
``********`` by its API and UI) or references (``{"env": "NAME"}`` in the worker's environment,
``{"prefect_secret": "block-name"}``) fixed in the block too.

Register the type for the Prefect UI with ``prefect block register -m flows.blocks``.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block

from projmig.errors import ConfigError
from projmig.settings import DatabaseSettings, S3Settings


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
            raise ConfigError(f"{role}: no OsparcDeployment block named {name!r} (create it: see docs/deployments.md)") from None
        raise ConfigError(f"{role}: OsparcDeployment block {name!r} cannot be read ({type(exc).__name__})") from None
