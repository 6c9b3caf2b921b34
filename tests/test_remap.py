"""The id rewriting of uuid_policy=new, on a hand-made graph (pure: no servers)."""

from __future__ import annotations

import json
import uuid

from projmig.graph import FileEntry, ProjectGraph, ProjectRecord, SourceObject
from projmig.plan import DestinationFacts, build_plan
from projmig.remap import UUID_RE, copy_namespace, destination_identity

STUDY, JOB, OUTSIDE = (str(uuid.uuid4()) for _ in range(3))
N1, N2, JN, OUTSIDE_NODE, FILE_UUID = (str(uuid.uuid4()) for _ in range(5))


def j(value: object) -> str:
    """A JSON column as the graph reads it: PostgreSQL's text of it."""
    return json.dumps(value)


def graph() -> ProjectGraph:
    out = f"{STUDY}/{N1}/outputs/out_1/{FILE_UUID}.dat"  # a file whose name is a uuid of nothing
    study = ProjectRecord(
        uuid=STUDY, name=f"study {STUDY}", hidden=False, owner_id=1, owner_gid=11, product_name="osparc",
        rows={
            "projects": [{"uuid": STUDY, "name": "study", "ui": j({"workbench": {N1: {"x": 1}, N2: {"x": 2}},
                                                                    "currentNodeId": N2}), "prj_owner": 1,
                          "creation_date": "c", "last_change_date": "l", "product_name": "osparc"}],
            "projects_nodes": [
                {"project_uuid": STUDY, "node_id": N1, "inputs": j({}), "outputs": j({"out_1": {"store": 0, "path": out}})},
                {"project_uuid": STUDY, "node_id": N2, "input_nodes": j([N1]),
                 "inputs": j({"in_1": {"nodeUuid": N1, "output": "out_1"},
                              "in_2": {"store": 0, "path": out, "eTag": "abc"},
                              "in_3": {"store": 0, "path": f"{OUTSIDE}/{OUTSIDE_NODE}/x.txt"}})[:-1] + ', "big": 1.10}'},
            ],
            "projects_networks": [{"project_uuid": STUDY, "networks_with_aliases": j({"net": {N1: "a", N2: "b"}})}],
            "file_meta_data": [{"file_id": out, "object_name": out, "project_id": STUDY, "node_id": N1},
                               {"file_id": f"{STUDY}/{N2}/link", "object_name": out, "project_id": STUDY,
                                "node_id": N2, "is_soft_link": True}],
        },
        files=[FileEntry(file_id=out, kind="file", object_name=out, objects=[SourceObject(key=out, size=1, etag="e")]),
               FileEntry(file_id=f"{STUDY}/{N2}/link", kind="soft_link", object_name=out)],
    )
    job = ProjectRecord(
        uuid=JOB, name=f"solvers/x/releases/1/jobs/{JOB}", hidden=True, parent_uuid=STUDY, owner_id=1, owner_gid=11,
        product_name="osparc",
        rows={
            "projects": [{"uuid": JOB, "name": f"solvers/x/releases/1/jobs/{JOB}", "prj_owner": 1, "product_name": "osparc"}],
            "projects_nodes": [{"project_uuid": JOB, "node_id": JN, "inputs": j({})}],
            "projects_metadata": [{"project_uuid": JOB, "parent_project_uuid": STUDY, "parent_node_id": N2,
                                   "root_parent_project_uuid": OUTSIDE, "root_parent_node_id": OUTSIDE_NODE}],
            "projects_to_jobs": [{"project_uuid": JOB, "job_parent_resource_name": f"solvers/x/releases/1/jobs/{JOB}"}],
        },
        files=[],
    )
    json_columns = {"projects": ["ui"], "projects_nodes": ["inputs", "outputs", "input_nodes"],
                    "projects_networks": ["networks_with_aliases"]}
    return ProjectGraph(roots=[STUDY], projects=[study, job], json_columns=json_columns)


FACTS = DestinationFacts(owner_id=2, owner_gid=22, everyone_gid=1, bucket="dst")


def namespaces(label: str = "") -> dict[str, str]:
    return {STUDY: copy_namespace(destination_identity("7312345678901234567", "db", "dst"), STUDY, label)}


def test_every_reference_is_rewritten_consistently() -> None:
    plan = build_plan(graph(), FACTS, namespaces())
    new = {p.src_uuid: p.dst_uuid for p in plan.projects}
    assert set(new) == {STUDY, JOB} and not set(new.values()) & {STUDY, JOB}
    study_rows, job_rows = plan.rows_of(new[STUDY]), plan.rows_of(new[JOB])
    nodes = {r["node_id"] for r in study_rows["projects_nodes"]}
    assert len(nodes) == 2 and not nodes & {N1, N2}
    n1, n2 = (r["node_id"] for r in study_rows["projects_nodes"])
    ui = json.loads(study_rows["projects"][0]["ui"])
    assert set(ui["workbench"]) == nodes and ui["currentNodeId"] == n2
    second = study_rows["projects_nodes"][1]
    inputs = json.loads(second["inputs"])
    assert json.loads(second["input_nodes"]) == [n1] and inputs["in_1"]["nodeUuid"] == n1
    path = f"{new[STUDY]}/{n1}/outputs/out_1/{FILE_UUID}.dat"  # the uuid-named file keeps its name
    assert inputs["in_2"]["path"] == path
    assert json.loads(study_rows["projects_nodes"][0]["outputs"])["out_1"]["path"] == path
    assert inputs["in_3"]["path"] == f"{OUTSIDE}/{OUTSIDE_NODE}/x.txt"  # outside the graph: kept
    assert second["inputs"].endswith(', "big": 1.10}')  # JSON text kept to the byte outside its strings
    assert set(json.loads(study_rows["projects_networks"][0]["networks_with_aliases"])["net"]) == nodes
    files = {r["file_id"]: r for r in study_rows["file_meta_data"]}
    assert set(files) == {path, f"{new[STUDY]}/{n2}/link"}
    assert files[f"{new[STUDY]}/{n2}/link"]["object_name"] == path and files[path]["node_id"] == n1
    assert [(c.src_key, c.dst_key) for c in plan.copies] == [(f"{STUDY}/{N1}/outputs/out_1/{FILE_UUID}.dat", path)]
    meta = job_rows["projects_metadata"][0]
    assert (meta["parent_project_uuid"], meta["parent_node_id"]) == (new[STUDY], n2)
    assert (meta["root_parent_project_uuid"], meta["root_parent_node_id"]) == (OUTSIDE, OUTSIDE_NODE)
    assert any(OUTSIDE in w for w in plan.warnings)
    assert job_rows["projects_to_jobs"][0]["job_parent_resource_name"].endswith(f"/jobs/{new[JOB]}")
    assert job_rows["projects"][0]["name"].endswith(new[JOB])
    # apart from the link that leaves the graph, no old id is left anywhere
    text = json.dumps(plan.rows, default=str)
    old = {STUDY, JOB, N1, N2, JN}
    assert not old & set(UUID_RE.findall(text))


def test_ids_are_deterministic_and_a_label_makes_another_copy() -> None:
    once, again = build_plan(graph(), FACTS, namespaces()), build_plan(graph(), FACTS, namespaces())
    other = build_plan(graph(), FACTS, namespaces("second"))
    assert once.rows == again.rows and once.copies == again.copies
    assert {p.dst_uuid for p in once.projects}.isdisjoint({p.dst_uuid for p in other.projects})
    elsewhere = {STUDY: copy_namespace(destination_identity("7399999999999999999", "db", "dst"), STUDY, "")}
    assert {p.dst_uuid for p in build_plan(graph(), FACTS, elsewhere).projects}.isdisjoint(
        {p.dst_uuid for p in once.projects})


def test_keep_policy_changes_no_id() -> None:
    plan = build_plan(graph(), FACTS)
    assert [(p.src_uuid, p.dst_uuid) for p in plan.projects] == [(STUDY, STUDY), (JOB, JOB)]
    assert all(c.src_key == c.dst_key for c in plan.copies)
