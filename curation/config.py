"""Pipeline configuration: YAML in, validated dataclasses out. A bad key or value stops the run with one message naming it."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from curation import typed
from curation.errors import ConfigError
from curation.typed import setting


_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _even_frames(n: int) -> str | None:
    return None if n >= 2 and n % 2 == 0 else f"an even number >= 2 (Qwen2-VL pairs frames), got {n}"


@dataclass(frozen=True)
class SplitConfig:
    """How sources become clips."""

    detector: str = setting("content", choices=("content", "adaptive", "none"))
    threshold: float = setting(27.0, ge=0)  # ContentDetector threshold (or AdaptiveDetector adaptive_threshold)
    min_scene_s: float = setting(0.5, ge=0)  # the detector will not cut again sooner than this
    max_clip_s: float = setting(10.0, gt=0)  # longer scenes are cut into equal parts no longer than this
    analysis_width: int = setting(256, ge=0)  # scene detection runs on frames decoded at this width


@dataclass(frozen=True)
class FramesConfig:
    """The decode-once frame views (docs/ARCHITECTURE.md, "Frame views")."""

    num_frames: int = setting(8, ge=1)
    short_side: int = setting(320, ge=16)
    motion_fps: float = setting(4.0, gt=0)
    motion_width: int = setting(320, ge=16)
    max_motion_frames: int = setting(64, ge=0)


@dataclass(frozen=True)
class LimitsConfig:
    """Guards against hostile inputs."""

    max_pixels: int = setting(8192 * 8192, ge=0)  # width*height above this is refused before decoding
    max_duration_s: float = setting(4 * 3600.0, ge=0)
    max_file_bytes: int = setting(64 * 1024**3, ge=0)
    decode_timeout_s: float = setting(120.0, ge=0)  # per source: probe + split + decode of one file


@dataclass(frozen=True)
class ClusteringConfig:
    """k-means over `embedding` after `samples/` is written, and near-duplicates within each cluster."""

    enabled: bool = False
    k: int = setting(100, ge=0)
    sample_size: int = setting(200_000, ge=0)
    seed: int = setting(0, ge=0)
    refit: bool = False
    cos_threshold: float = setting(0.95, ge=0)
    hamming_threshold: int = setting(8, ge=0)
    use_phash: bool = True
    reject_duplicates: bool = True


# The captioning engines a config may name; `captioner.engines` loads each (and checks it has a loader for every name),
# so the config is checked without importing the captioner (the core imports nothing above it).
CAPTION_ENGINES = ("qwen2vl", "qwen2vl_fast")


@dataclass(frozen=True)
class CaptionConfig:
    """Dense captions of the kept rows after clustering: Qwen2-VL with the clip's OCR text in the prompt
    (captioner/, docs/ARCHITECTURE.md, "The flow")."""

    enabled: bool = False
    model: str = "qwen2-vl-7b"  # a model registry key, or a local folder holding a Qwen2-VL checkpoint
    # captioner.engines: qwen2vl (transformers' generate) or qwen2vl_fast (same tokens)
    engine: str = setting("qwen2vl", choices=CAPTION_ENGINES)
    num_frames: int = setting(8, check=_even_frames)  # frames per video clip (even: Qwen2-VL pairs frames in time)
    short_side: int = setting(336, ge=28)  # frames are decoded at this short side (tokens grow with its square)
    max_new_tokens: int = setting(200, ge=1)
    batch_size: int = setting(32, ge=1)  # rows per generate() call (H100, 7B, 8 frames at 336 px: 24.5 GiB peak)
    num_gpus: float = setting(1.0, ge=0)  # per captioner actor; 0 runs on CPU (tests, tiny models)
    concurrency: int = setting(1, ge=1)  # captioner actors
    dtype: str = setting("bfloat16", choices=("bfloat16", "float16", "float32"))  # on GPU; CPU runs in float32
    use_ocr: bool = True  # put the row's `ocr_text` into the prompt
    max_ocr_chars: int = setting(300, ge=0)  # longer OCR text is cut to this many characters
    recaption: bool = False  # caption rows that already have a caption (a re-run otherwise skips them)
    decode_timeout_s: float = setting(60.0, ge=0)  # per row, in the isolated decoder

    def config_check(self) -> None:
        """An enabled captioner names a model the registry knows or a local folder."""
        if self.enabled:
            from curation import models

            if self.model not in models.REGISTRY and not os.path.isdir(os.path.expanduser(self.model)):
                raise ConfigError(f"captioning.model: {self.model!r} is neither a model registry key "
                                  f"({', '.join(sorted(models.REGISTRY))}) nor a local folder")


@dataclass(frozen=True)
class OperatorSpec:
    """One operator named in the config, with its parameters and resources. `params` stays the mapping as written
    (run.json and the config fingerprints record it); the operator reads it into its own `Params` dataclass."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    num_cpus: float | None = setting(None, ge=0)
    num_gpus: float | None = setting(None, ge=0)
    batch_size: int | None = setting(None, ge=1)
    concurrency: int | None = setting(None, ge=1)  # actor pool size (stateful operators)


@dataclass(frozen=True)
class Rule:
    """A threshold on one column: min, max, or a set of excluded values."""

    column: str
    # int | float: a threshold keeps the spelling of the YAML (run.json records the config as written)
    min: int | float | None = None
    max: int | float | None = None
    exclude: tuple[str, ...] = ()
    reject_if_true: bool = False

    def config_check(self) -> None:
        """A rule says something, and its range is not empty."""
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"min {self.min} is above max {self.max}")
        if self.min is None and self.max is None and not self.exclude and not self.reject_if_true:
            raise ConfigError("a rule needs min, max, exclude or reject_if_true")


def read_rules(data: Any, where: str) -> tuple[Rule, ...]:
    """`column: {min, max, exclude, reject_if_true}` entries (a `decide:` section or a stage's `where:`)."""
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of column -> {{min, max, exclude, reject_if_true}}")
    return tuple(typed.read(Rule, spec, f"{where}.{column}", fixed={"column": column}) for column, spec in data.items())


def _media_types(value: tuple) -> str | None:
    return None if value else "a non-empty list of 'video' and/or 'image'"


def _weights(value: dict) -> str | None:
    bad = [(col, v, x) for col, m in value.items() for v, x in m.items() if x < 0]
    return f"{bad[0][0]}.{bad[0][1]}: must be >= 0, got {bad[0][2]!r}" if bad else None


@dataclass(frozen=True)
class StageSpec:
    """One training stage's data mix, selected from the kept rows after clustering (curation/stages.py)."""

    name: str
    media_types: tuple[Literal["video", "image"], ...] = setting(("video", "image"), check=_media_types)
    min_short_side: int = setting(0, ge=0)  # min(width, height) in pixels
    min_duration_s: float = setting(0.0, ge=0)  # videos only
    max_duration_s: float | None = setting(None, ge=0)  # videos only
    where: tuple[Rule, ...] = setting((), read=read_rules)  # like `decide`, but a null value does not pass
    include_duplicates: bool = False  # rows whose `duplicate_of` is set
    balance: str | None = "cluster_id"  # weights even out the groups of this column; null: no balancing
    max_balance: float = setting(10.0, ge=1)  # cap on a group's balancing factor (and 1/cap its floor)
    # column -> value -> weight multiplier
    weights: dict[str, dict[str, float]] = setting(default_factory=dict, check=_weights)
    max_rows: int | None = setting(None, ge=1)  # more rows than this: a balanced sample over `balance` groups
    seed: int = 0

    def config_check(self) -> None:
        """The duration range is not empty."""
        if self.max_duration_s is not None and self.max_duration_s < self.min_duration_s:
            raise ConfigError("max_duration_s is below min_duration_s")


def read_stages(data: Any, where: str = "stages") -> tuple[StageSpec, ...]:
    """`stages:` a list of stage mixes, in curriculum order; a stage's errors name it (`stages.s1.max_rows`)."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{where}: expected a list of stages (each a mapping with at least `name`)")
    out, names = [], set()
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where}[{i}]: expected a mapping with a `name`")
        name = item["name"]
        # The name becomes a folder under <output>/stages/: nothing that could leave it.
        if not isinstance(name, str) or not _STAGE_NAME.match(name) or name in (".", ".."):
            raise ConfigError(f"{where}[{i}].name: letters, digits, '_', '.', '-' only (a folder name), got {name!r}")
        if name in names:
            raise ConfigError(f"{where}.{name}: stage named twice")
        names.add(name)
        out.append(typed.read(StageSpec, {k: v for k, v in item.items() if k != "name"}, f"{where}.{name}",
                              fixed={"name": name}))
    return tuple(out)


def read_operators(data: Any, where: str = "operators") -> tuple[OperatorSpec, ...]:
    """`operators:` a list of names or `{name, params, num_cpus, ...}` mappings; each name once."""
    from curation.catalog import known_operators

    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError(f"{where}: expected a list")
    specs: list[OperatorSpec] = []
    for i, item in enumerate(data):
        key = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{key}: expected a mapping with a 'name'")
        spec = typed.read(OperatorSpec, {**item, "params": item.get("params") or {}}, key)
        if spec.name not in known_operators():
            raise ConfigError(f"{key}.name: unknown operator {spec.name!r}; known: {sorted(known_operators())}")
        if any(s.name == spec.name for s in specs):
            raise ConfigError(f"{key}.name: operator {spec.name!r} listed twice")
        specs.append(spec)
    return tuple(specs)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs, validated (read from YAML by `curation.typed`)."""

    name: str = "curation"
    profile: str = setting("offline", choices=("offline", "full"))
    split: SplitConfig = SplitConfig()
    frames: FramesConfig = FramesConfig()
    limits: LimitsConfig = LimitsConfig()
    operators: tuple[OperatorSpec, ...] = setting((), read=read_operators)
    decide: tuple[Rule, ...] = setting((), read=read_rules)
    rows_per_file: int = setting(2000, ge=1)
    image_extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
    video_extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".flv", ".mpg", ".mpeg")
    clustering: ClusteringConfig = ClusteringConfig()
    captioning: CaptionConfig = CaptionConfig()
    stages: tuple[StageSpec, ...] = setting((), read=read_stages)
    report: bool = True  # write <output>/report.html at the end of the run
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for run.json."""
        d = dataclasses.asdict(self)
        d.pop("raw", None)
        return d


def parse_config(data: dict[str, Any]) -> PipelineConfig:
    """Validate a config mapping; raise ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    # A section written as an empty key (`split:`) is null in YAML: its defaults.
    sections = {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}
    cfg = typed.read(PipelineConfig, sections, fixed={"raw": data})
    # Instantiating each operator validates its parameters now, at start-up, not on a worker hours later.
    from curation.catalog import build_operator
    from curation.schema import BASE_CATEGORIES, POST_DECISION_COLUMNS, base_schema

    produced = {f.name for f in base_schema()}
    categories = dict(BASE_CATEGORIES)
    for spec in cfg.operators:
        op = build_operator(spec)
        produced |= set(op.produces)
        categories.update(op.categories)
    for rule in cfg.decide:
        if rule.column in POST_DECISION_COLUMNS:
            raise ConfigError(f"decide.{rule.column}: this column is filled after decisions are made, so the rule "
                              f"could never fire; use {POST_DECISION_COLUMNS[rule.column]}")
        if rule.column not in produced:
            raise ConfigError(f"decide.{rule.column}: no column of that name in the schema or produced by the "
                              f"configured operators")
        _check_values(f"decide.{rule.column}.exclude", rule.column, rule.exclude, categories)
    for st in cfg.stages:
        cols = [r.column for r in st.where] + list(st.weights) + ([st.balance] if st.balance else [])
        for col in cols:
            if col not in produced:
                raise ConfigError(f"stages.{st.name}: no column {col!r} in the schema or produced by the configured "
                                  f"operators")
        for rule in st.where:
            _check_values(f"stages.{st.name}.where.{rule.column}.exclude", rule.column, rule.exclude, categories)
        for col, per_value in st.weights.items():
            _check_values(f"stages.{st.name}.weights.{col}", col, tuple(per_value), categories)
        if st.balance == "cluster_id" and not cfg.clustering.enabled:
            raise ConfigError(f"stages.{st.name}: balance: cluster_id needs clustering.enabled (or set balance: null)")
    if cfg.clustering.enabled and not any(s.name in ("embedding", "descriptor") for s in cfg.operators):
        raise ConfigError("clustering.enabled: needs an `embedding` or `descriptor` operator to fill `embedding`")
    return cfg


_SECTIONS = ("split", "frames", "limits", "clustering", "captioning", "operators", "decide", "stages")


def _check_values(where: str, column: str, values: tuple[str, ...], categories: dict[str, tuple[str, ...]]) -> None:
    """Values named for a categorical column must be among the values it takes (a typo would never match)."""
    valid = categories.get(column)
    if valid is None:
        return
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise ConfigError(f"{where}: unknown value(s) {unknown} for {column}; valid values: {', '.join(valid)}")


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML pipeline config."""
    p = Path(path)
    data = typed.load_yaml_file(p)  # a missing or unreadable file is its ConfigError
    try:
        return parse_config(data or {})
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
