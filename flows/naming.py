"""What Prefect shows as the name of a run: a migration's flow run by its projects (or their owner),
a copy task run by what it copies. Called by Prefect as each run starts, from its parameters."""

from __future__ import annotations

from projmig.choices import CHOICES, RunChoices


def migration_run_name() -> str:
    """``migrate-1a2b3c4d``, ``migrate-1a2b3c4d-and-2-more`` or ``migrate-projects-of-user-7``: the
    run's choices (:meth:`RunChoices.run_name`), those of its settings with its parameters on top."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    settings = params.get("settings")
    if isinstance(settings, dict):  # parameters as the API keeps them
        settings = None
    chosen = settings.choices if settings is not None else RunChoices()
    try:
        return chosen.with_given({name: params.get(name) for name in CHOICES}).run_name()
    except ValueError:  # the flow refuses such parameters with one line; the name needs none
        return chosen.run_name()


def copy_run_name() -> str:
    """``copy <file name>`` for one large object, ``copy <n> files`` for a batch."""
    from prefect.runtime import task_run
    from prefect.utilities.annotations import BaseAnnotation

    batch = task_run.parameters.get("batch") or []
    if isinstance(batch, BaseAnnotation):  # (named before its parameters are resolved)
        batch = batch.unwrap()
    if len(batch) == 1:
        return f"copy {batch[0][0].dst_key.rsplit('/', 1)[-1]}"
    return f"copy {len(batch)} files"
