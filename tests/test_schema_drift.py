"""Migrating into a destination at another schema revision (options.allow_schema_drift): refused
while the destination cannot take the rows (each incompatible column named), migrated once it can,
with every dropped or defaulted column reported."""

from __future__ import annotations

import asyncpg
import pytest

from flows.migrate import migrate_project
from projmig import commands
from projmig.errors import PreflightError
from projmig.sandbox.sample import SampleSpec, build_sample_project
from projmig.sandbox.simcore import asyncpg_dsn
from projmig.text import markdown_text

from .conftest import Simcore

pytestmark = pytest.mark.usefixtures("prefect")


async def execute(db, sql: str, *args) -> list:
    conn = await asyncpg.connect(asyncpg_dsn(db))
    try:
        if args:
            return await conn.fetch(sql, *args)
        await conn.execute(sql)
        return []
    finally:
        await conn.close()


async def test_destination_at_another_revision(simcore: Simcore) -> None:
    sample = await build_sample_project(
        simcore.source_db, simcore.source_s3, owner_id=simcore.alice,
        spec=SampleSpec(files=3, multipart_size=0, directory_objects=0, hidden_children=1, child_files=1,
                        file_size=4096, special_names=False),
    )
    # the destination one revision further: projects gained a nullable column, projects_nodes lost an
    # unused one; and (for now) projects_networks gained a column the source cannot fill
    await execute(simcore.destination_db, """
        ALTER TABLE projects ADD COLUMN review_note varchar;
        ALTER TABLE projects_nodes DROP COLUMN boot_options;
        ALTER TABLE projects_networks ADD COLUMN network_class integer NOT NULL;
        UPDATE alembic_version SET version_num = 'f00dfeed0001';""")
    # ... and one source node uses the column the destination dropped
    node = sample.node_ids[1]
    await execute(simcore.source_db, f"""UPDATE projects_nodes SET boot_options = '{{"mode": "x"}}' WHERE node_id = '{node}'""")

    settings = simcore.settings(sample.uuid, source={"include_hidden": True})
    with pytest.raises(PreflightError) as strict:
        await commands.plan(settings)
    assert strict.value.problems == [
        "schema revision mismatch: source is at 3f8c0e8d11a4, destination at f00dfeed0001 (set host.schema_migrations "
        "to osparc-simcore's packages/postgres-database to migrate across the releases with osparc's own migrations, "
        "or set options.allow_schema_drift to migrate where the columns allow it)"
    ]

    drifting = simcore.settings(sample.uuid, source={"include_hidden": True}, options={"allow_schema_drift": True})
    with pytest.raises(PreflightError) as refused:
        await commands.plan(drifting)
    assert sorted(refused.value.problems) == [
        "schema drift: destination projects_networks.network_class is NOT NULL without a default; the source has "
        "no such column to fill it",
        "schema drift: projects_nodes.boot_options is not in the destination and holds data in 1 of the rows to "
        "move (it would be lost)",
    ]

    # the destination can take the rows once the column is nullable and the data is gone
    await execute(simcore.destination_db, "ALTER TABLE projects_networks ALTER COLUMN network_class DROP NOT NULL")
    await execute(simcore.source_db, f"UPDATE projects_nodes SET boot_options = NULL WHERE node_id = '{node}'")
    report = await migrate_project(drifting)

    assert report.status == "migrated", report.headline()
    assert report.schema_drift == [
        "projects.review_note: defaulted to NULL (only in the destination)",
        "projects_nodes.boot_options: dropped (not in the destination; empty in every row moved)",
        "projects_networks.network_class: defaulted to NULL (only in the destination)",
    ]
    # the markdown report escapes what it quotes (markdown_text: "_" would start emphasis)
    assert "schema drift" in report.to_markdown() and markdown_text("projects_nodes.boot_options: dropped") in report.to_markdown()
    assert report.rows_inserted["projects"] == 2 and report.rows_inserted["projects_nodes"] == len(sample.node_ids) + 1
    notes = await execute(simcore.destination_db, "SELECT review_note FROM projects WHERE uuid = ANY($1::varchar[])", sample.all_projects)
    assert [r["review_note"] for r in notes] == [None, None]
    verified = await commands.verify(drifting, deep=False)
    assert verified.equal, [str(d) for d in verified.differences]


async def test_a_destination_altered_by_hand_at_the_same_revision_is_refused_where_data_would_be_lost(simcore: Simcore) -> None:
    """Both databases at one revision, but the destination's projects_nodes lost a column by hand: a
    project whose nodes use it is refused (its data would be dropped without a word); once no row
    moved holds a value there, the migration goes on and its report says the column was dropped."""
    sample = await build_sample_project(simcore.source_db, simcore.source_s3, owner_id=simcore.alice, spec=SampleSpec(
        files=2, multipart_size=0, directory_objects=0, hidden_children=0))
    await execute(simcore.destination_db, "ALTER TABLE projects_nodes DROP COLUMN boot_options")
    node = sample.node_ids[0]
    await execute(simcore.source_db, f"""UPDATE projects_nodes SET boot_options = '{{"mode": "x"}}' WHERE node_id = '{node}'""")
    settings = simcore.settings(sample.uuid)

    with pytest.raises(PreflightError) as refused:
        await commands.plan(settings)
    assert refused.value.problems == [
        "schema drift: projects_nodes.boot_options is not in the destination and holds data in 1 of the rows to move "
        "(it would be lost) (both databases at revision 3f8c0e8d11a4: one altered by hand?)"
    ]

    await execute(simcore.source_db, f"UPDATE projects_nodes SET boot_options = NULL WHERE node_id = '{node}'")
    checked, plan = await commands.plan(settings)
    assert plan.schema_drift == ["projects_nodes.boot_options: dropped (not in the destination; empty in every row moved)"]
