"""``PREP/prepare_report.json``: what prepare found and did, as one typed record.

:class:`PrepareReport` holds the keys prepare computes from the archive (counts, EXIF,
truncation, duplicates, the split and its hash, disagreements, warnings, caches), in the order
they are written. prepare then adds ``gt_boxes``/``box_disagreements`` (data.boxes) and the run
facts ``timings_s``, ``workers``, ``rebuilt``. Readers get the JSON object (a dict).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class PrepareReport(BaseModel):
    """The archive-derived part of the prepare report (every field is written, in this order)."""

    model_config = ConfigDict(extra="forbid")

    fxbench_version: str
    data_version: str
    created: str  # local time, %Y-%m-%dT%H:%M:%S%z
    archive: str  # resolved path of the archive (zip or folder)
    archive_root: str  # the dataset root's prefix inside it
    archive_fingerprint: str
    images: int  # decoded images in the manifest
    fractured: int  # by the evidence (cross-checked annotations)
    non_fractured: int
    csv_rows: int
    csv_fractured: int  # dataset.csv's own column
    fracture_count_total: int
    polygons: dict[str, int]  # per annotation source
    boxes: dict[str, int]
    polygons_rasterized: int
    rasterized_from: dict[str, int]
    annotation_files: Any
    exif_rotated: int
    exif_rotated_ids: list[str]
    exif_orientations: dict[str, int]
    exif_rotated_fractured_ids: list[str]
    truncated: int
    truncated_ids: list[str]
    truncated_strict_decode_failed: int
    truncated_fractured_ids: list[str]
    image_modes: dict[str, int]
    image_sizes: dict[str, int]  # "WxH" -> count, most frequent first
    duplicate_groups: int
    duplicate_images: int
    duplicate_group_members: list[list[str]]
    byte_identical_groups: int
    duplicate_groups_mixed_labels: Any
    split_mode: str
    seed: int
    split_ratios: dict[str, float]
    split_counts: dict[str, int]
    split_label_counts: dict[str, dict[str, int]]
    split_sha256: str
    cross_split_duplicate_groups: int
    cross_split_duplicate_group_members: list[list[str]]
    split_modes: dict[str, dict[str, Any]]  # every mode's summary, for comparison
    folds: dict[str, Any] | None
    disagreements: list[dict[str, Any]]
    disagreement_count: int
    skipped_images: list[dict[str, Any]]
    warnings_count: int
    warnings_by_kind: dict[str, int]
    warnings: list[dict[str, Any]]
    caches: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to prepare_report.json (before prepare's later keys)."""
        return self.model_dump(mode="json")
