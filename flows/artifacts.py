"""What a flow run leaves in the Prefect UI when it ends: the migration report as a table and a
markdown artifact (``projmig-projects``, ``projmig-report``: names and messages escaped by
:meth:`MigrationReport.to_markdown`), a rollback's summary lines as a markdown code block
(``projmig-rollback``)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from projmig.report import MigrationReport
from projmig.rollback import RollbackResult


async def publish_report(report: MigrationReport) -> None:
    await create_table_artifact(key="projmig-projects", table=report.project_rows(), description=report.headline())
    if report.users:  # owners in accounts of their own: a row per user
        await create_table_artifact(key="projmig-users", table=report.user_rows(), description=report.headline())
    await create_markdown_artifact(key="projmig-report", markdown=report.to_markdown(), description=report.headline())


async def publish_rollback(result: RollbackResult) -> None:
    await create_markdown_artifact(
        key="projmig-rollback",
        markdown="\n".join([f"## projmig: {result.headline()}", "", *[f"    {line}" for line in result.summary_lines()]]),
        description=result.headline(),
    )
