"""Sizes, and S3's limits on objects and multipart uploads (AWS's; Ceph and MinIO take the same)."""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART_SIZE = 5 * MiB  # every part but the last
MAX_PART_SIZE = 5 * GiB  # also the largest single PUT
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB
