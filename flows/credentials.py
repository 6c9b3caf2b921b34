"""Run-time credentials and connections, decided in one place: the prelude of every flow run, of the
CLI's commands and of ``deployments/serve.py``.

- A Prefect deployment's connections are its two ``OsparcDeployment`` blocks and its worker host's
  resources a ``ProjmigHost`` block, saved from a cfg.json (:func:`save_connections`). A run of it
  takes them as they are, with the choices and options its deployment's bounds leave open
  (:class:`projmig.bounds.RunBounds`); a run that names other blocks, any connection or host field,
  job variables of its own or anything outside the bounds is refused in one line
  (:func:`refuse_outside_deployment`), before any block is loaded or anything connects.
- The settings a flow run works with (:func:`flow_run_settings`): a local call's own, or the
  deployment's blocks and options, built from those values alone: no ``PROJMIG_*`` environment
  variable of the worker's counts; the run's choices applied, its credentials resolved.
- Secret references resolved (:func:`resolve_credentials`): environment variables, and Prefect Secret
  blocks through the Prefect API, once per run, before its first step (the library's steps take the
  values). The Prefect-free rules (which references exist, what a missing one says) are
  :mod:`projmig.credentials`'s; what Prefect holds is read here.

Prefect is imported inside the functions that use it: the CLI imports this module before it knows
whether it needs Prefect at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from projmig.bounds import RunBounds
from projmig.credentials import SecretNotFound, secret_refs
from projmig.errors import ConfigError
from projmig.settings import HostSettings, MigrationOptions, MigrationSettings, format_validation_error, resolve_secrets

# parameters a run takes as its deployment has them: the blocks, a local call's settings, the
# deployment's bounds; ``host`` (a HostSettings) is a local call's: a deployment names a host block
FIXED_PARAMETERS = ("source", "destination", "settings", "host", "host_block", "bounds")


def save_connections(name: str, settings: MigrationSettings) -> tuple[str, str, str]:
    """The cfg.json's two osparc deployments as the OsparcDeployment blocks ``<name>-source`` and
    ``<name>-destination``, its ``host`` section as the ProjmigHost block ``<name>-host`` (each
    overwritten if present; credentials as the cfg.json has them: values, stored by Prefect as secret
    fields, or references). Returns the blocks' names."""
    from .blocks import OsparcDeployment, ProjmigHost

    names = (f"{name}-source", f"{name}-destination", f"{name}-host")
    for block_name, side in zip(names, (settings.source, settings.destination)):
        OsparcDeployment(db=side.db, s3=side.s3).save(block_name, overwrite=True)
    ProjmigHost(host=settings.host).save(names[2], overwrite=True)
    return names


def refuse_outside_deployment(
    run: dict[str, Any], run_job_variables: dict[str, Any] | None,
    fixed: dict[str, Any], fixed_job_variables: dict[str, Any] | None, deployment: str,
) -> RunBounds:
    """Raise :class:`ConfigError` (one line per problem) unless a run stays within its deployment:
    its job variables are the deployment's, its fixed parameters (:data:`FIXED_PARAMETERS`) the
    deployment's own, its choices and options within the deployment's bounds. ``run`` are the run's
    parameters (the deployment's defaults merged in by Prefect), ``fixed`` the deployment's. Called
    before anything is loaded or connected; returns the bounds."""
    problems = []
    if (run_job_variables or {}) != (fixed_job_variables or {}):
        # (a closed work pool ignores them; one that is not would start the flow run with them)
        problems.append(f"job variables: fixed by {deployment} (its work pool's and its own); a run sets none")
    problems += [
        f"parameter {name!r}: fixed by {deployment} (its connections are its blocks, its host's resources its "
        "host block, its bounds its own); a run names only what to move, within the bounds"
        for name in FIXED_PARAMETERS
        if run.get(name) != fixed.get(name)
    ]
    if fixed.get("host") is not None:
        problems.append(f"parameter 'host': {deployment} names its host's resources in a ProjmigHost block (host_block)")
    try:
        bounds = RunBounds.model_validate(fixed.get("bounds") or {})
        fixed_options = MigrationOptions.model_validate(fixed.get("options") or {}).model_dump(mode="json")
    except ValidationError as exc:
        where = "bounds" if exc.title == RunBounds.__name__ else "options"
        lines = [line.replace(": <top>: ", ": ") for line in format_validation_error(exc, f"{deployment}: {where}")]
        raise ConfigError(problems + lines) from None
    problems += bounds.refusals(run, fixed, fixed_options, deployment)
    if problems:
        raise ConfigError(problems)
    return bounds


def merged_options(run: dict[str, Any] | None, fixed: dict[str, Any] | None) -> dict[str, Any]:
    """The options of a deployment run: the deployment's, with the run's on top."""
    merged = dict((fixed or {}).get("options") or {})
    merged.update((run or {}).get("options") or {})
    return merged


async def flow_run_settings(
    settings: MigrationSettings | None, choices: dict[str, Any], *, source: str | None, destination: str | None,
    options: MigrationOptions | None, host: HostSettings | None, owner_required: bool = True,
) -> MigrationSettings:
    """The prelude of a flow run: its settings (:func:`connections`), the run's ``choices`` applied,
    projects (and for a migration, the destination owner) required, credentials resolved."""
    chosen = await connections(settings, source, destination, options, host)
    try:
        chosen = chosen.with_choices(choices)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "parameters")) from None
    chosen.require_something_to_move("parameters")
    if owner_required and chosen.choices.destination_user_id is None and not chosen.choices.matches_users:
        raise ConfigError("destination_user_id: give the destination user who will own the projects")
    return await resolve_credentials(chosen)


async def connections(
    settings: MigrationSettings | None, source: str | None, destination: str | None,
    options: MigrationOptions | None, host: HostSettings | None,
) -> MigrationSettings:
    """The settings of a flow run: ``settings`` as given in a local call (or its blocks, ``source`` and
    ``destination``); in a deployment run, the deployment's own blocks and options, after refusing a
    run outside its deployment (before any block is loaded or anything connects)."""
    from prefect.context import FlowRunContext

    from .blocks import load_deployment_block, load_host_block

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is not None and flow_run.deployment_id is not None:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            deployment = await client.read_deployment(flow_run.deployment_id)
        name = f"{context.flow.name}/{deployment.name}"  # type: ignore[union-attr]
        refuse_outside_deployment(flow_run.parameters, flow_run.job_variables, deployment.parameters,
                                  deployment.job_variables, name)
        fixed = deployment.parameters
        source, destination = fixed.get("source"), fixed.get("destination")
        host_block = fixed.get("host_block")
        chosen: dict[str, Any] = merged_options(flow_run.parameters, fixed)
        given_host: HostSettings | dict[str, Any] = await load_host_block(host_block) if host_block else {}
    elif settings is not None:
        return settings
    else:
        chosen = options.model_dump(exclude_unset=True) if options is not None else {}
        given_host = host if host is not None else {}
    if source is None or destination is None:
        raise ConfigError("give settings (a local call) or source and destination (OsparcDeployment block names)")
    src, dst = await load_deployment_block(source, "source"), await load_deployment_block(destination, "destination")
    try:
        return MigrationSettings.from_values({
            "source": {"db": src.db, "s3": src.s3},
            "destination": {"db": dst.db, "s3": dst.s3},
            "host": given_host,
            "options": chosen,
        })
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "parameters")) from None


async def resolve_credentials(
    settings: MigrationSettings, *, before_prefect: Callable[[], object] | None = None
) -> MigrationSettings:
    """Replace secret references (environment variables, Prefect Secret blocks) by their values.
    A block that is missing, unreadable or empty is one error line naming the field and the block.
    ``before_prefect``: called once before the first Secret block is read (the CLI chooses its
    Prefect API there); settings that name no block never import Prefect."""
    names = {ref.prefect_secret for ref in secret_refs(settings) if ref.prefect_secret}
    if not names:
        return resolve_secrets(settings)
    if before_prefect is not None:
        before_prefect()
    values: dict[str, str | SecretNotFound] = {}
    for name in names:
        values[name] = await _read_secret_block(name)

    def lookup(name: str) -> str:
        value = values[name]
        if isinstance(value, SecretNotFound):
            raise value
        return value

    return resolve_secrets(settings, prefect_secret=lookup)


async def _read_secret_block(name: str) -> str | SecretNotFound:
    from prefect.blocks.system import Secret

    try:
        secret = await Secret.aload(name)
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        if "Unable to find" in str(exc):
            return SecretNotFound(f"Prefect Secret block {name!r} does not exist")
        return SecretNotFound(f"Prefect Secret block {name!r} cannot be read ({type(exc).__name__})")
    except Exception as exc:  # the API unreachable, another block type under that name, ...
        return SecretNotFound(f"Prefect Secret block {name!r} cannot be read ({type(exc).__name__})")
    value = secret.get()
    return value if isinstance(value, str) else json.dumps(value)
