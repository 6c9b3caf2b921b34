"""What Prefect shows as the name of a run: a migration's flow run by its projects (or their owner),
a copy task run by what it copies. Called by Prefect as each run starts, from its parameters."""

from __future__ import annotations


def migration_run_name() -> str:
    """``migrate-1a2b3c4d``, ``migrate-1a2b3c4d-and-2-more`` or ``migrate-projects-of-user-7``."""
    from prefect.runtime import flow_run

    params = flow_run.parameters
    uuids = params.get("project_uuids") or ([params["project_uuid"]] if params.get("project_uuid") else [])
    settings = params.get("settings")
    if not uuids and settings is not None:
        if isinstance(settings, dict):
            uuids = settings.get("source", {}).get("project_uuid") or []
        else:
            uuids = settings.project_uuids
        uuids = uuids if isinstance(uuids, list) else [uuids]
    owner = params.get("source_owner_user_id") or getattr(getattr(settings, "source", None), "owner_user_id", None)
    if not uuids and owner is not None:
        return f"migrate-projects-of-user-{owner}"
    first = str(uuids[0])[:8] if uuids else "projects"
    return f"migrate-{first}" + (f"-and-{len(uuids) - 1}-more" if len(uuids) > 1 else "")


def copy_run_name() -> str:
    """``copy <file name>`` for one large object, ``copy <n> files`` for a batch."""
    from prefect.runtime import task_run

    batch = task_run.parameters.get("batch") or []
    if len(batch) == 1:
        return f"copy {batch[0][0].dst_key.rsplit('/', 1)[-1]}"
    return f"copy {len(batch)} files"
