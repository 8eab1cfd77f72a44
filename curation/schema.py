"""The row schema: one row per sample (a clip of a video or one image). Column names are part of the product."""

from __future__ import annotations

import hashlib

import pyarrow as pa

STATUSES = ("kept", "rejected", "failed")
MOTION_TIERS = ("optimal", "medium", "static", "camera_driven", "low_quality", "shaky")
MEDIA_TYPES = ("video", "image")
# Categorical columns of the base schema and every value they take (operators declare theirs in `categories`).
BASE_CATEGORIES: dict[str, tuple[str, ...]] = {"media_type": MEDIA_TYPES, "status": STATUSES}

# Identity and probe columns, filled before any operator runs.
IDENTITY_FIELDS: list[pa.Field] = [
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("media_type", pa.string()),
    pa.field("start_frame", pa.int64()),
    pa.field("end_frame", pa.int64()),
    pa.field("fps", pa.float64()),
    pa.field("num_frames", pa.int64()),
    pa.field("duration_s", pa.float64()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("codec", pa.string()),
    pa.field("rotation", pa.int64()),
    pa.field("source_size_bytes", pa.int64()),
    pa.field("clip_index", pa.int64()),
    pa.field("clips_in_source", pa.int64()),
]

# Score columns (docs/ARCHITECTURE.md, "Schema"). Operators may add more through their `produces`; these are always
# present.
SCORE_FIELDS: list[pa.Field] = [
    pa.field("text_area_ratio", pa.float64()),
    pa.field("ocr_text", pa.string()),
    pa.field("watermark_score", pa.float64()),
    pa.field("nsfw_score", pa.float64()),
    pa.field("aesthetic_score", pa.float64()),
    pa.field("synthetic_score", pa.float64()),
    pa.field("sharpness", pa.float64()),
    pa.field("exposure", pa.float64()),
    pa.field("quality_score", pa.float64()),
    pa.field("motion_score", pa.float64()),
    pa.field("camera_motion", pa.float64()),
    pa.field("object_motion", pa.float64()),
    pa.field("shake_score", pa.float64()),
    pa.field("motion_tier", pa.string()),
    pa.field("embedding", pa.list_(pa.float32())),
    pa.field("cluster_id", pa.int64()),
    pa.field("duplicate_of", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("caption_source", pa.string()),
]

# Filled by passes after the graph has decided (clustering: cluster_id, duplicate_of; captioning: caption,
# caption_source), so `decide:` rules cannot use them; stage `where:` rules, which run after those passes, can.
POST_DECISION_COLUMNS = {
    "cluster_id": "stages (a stage's `where:` or `balance: cluster_id`)",
    "duplicate_of": "clustering.reject_duplicates: true (or a stage's `where:`)",
    "caption": "stages (a stage's `where:`) or the captioning section",
    "caption_source": "stages (a stage's `where:`)",
}

DECISION_FIELDS: list[pa.Field] = [
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_reasons", pa.list_(pa.string())),
    pa.field("error", pa.string()),
]

# Frame views travel between decode and the last operator that needs them; they are never written.
FRAME_VIEW_COLUMNS = ("frames", "motion_frames", "frame_indices", "motion_frame_indices", "motion_fps")


def base_schema() -> pa.Schema:
    """The schema every manifest has, before operator-specific extra columns."""
    return pa.schema(IDENTITY_FIELDS + SCORE_FIELDS + DECISION_FIELDS)


def manifest_schema(extra: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The base schema plus extra operator columns, inserted before the decision columns."""
    fields = list(IDENTITY_FIELDS) + list(SCORE_FIELDS)
    known = {f.name for f in fields} | {f.name for f in DECISION_FIELDS}
    for name, dtype in (extra or {}).items():
        if name not in known:
            fields.append(pa.field(name, dtype))
            known.add(name)
    return pa.schema(fields + DECISION_FIELDS)


def make_sample_id(source_uri: str, start_frame: int | None, end_frame: int | None) -> str:
    """A stable id: hash of the source URI and the frame range (same input, same id, on any machine)."""
    key = f"{source_uri}|{start_frame if start_frame is not None else ''}|{end_frame if end_frame is not None else ''}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


def empty_row(source_uri: str) -> dict:
    """A row with every schema column null except the source; callers fill what they know."""
    row = {f.name: None for f in base_schema()}
    row["source_uri"] = source_uri
    row["status"] = "kept"
    return row


def failed_row(source_uri: str, error: str, **known) -> dict:
    """A `failed` row for a source that could not be probed or split, keeping what was learned before failing."""
    row = empty_row(source_uri)
    row.update(known)
    row["sample_id"] = make_sample_id(source_uri, row.get("start_frame"), row.get("end_frame"))
    row["status"] = "failed"
    row["error"] = error
    row["clips_in_source"] = row.get("clips_in_source") or 1
    row["clip_index"] = row.get("clip_index") or 0
    return row
