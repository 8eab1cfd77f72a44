"""Pipeline configuration: YAML in, validated dataclasses out. A bad key or value stops the run with one message naming it."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from curation.errors import ConfigError


@dataclass(frozen=True)
class SplitConfig:
    """How sources become clips."""

    detector: str = "content"  # content | adaptive | none
    threshold: float = 27.0  # ContentDetector threshold (or AdaptiveDetector adaptive_threshold)
    min_scene_s: float = 0.5  # the detector will not cut again sooner than this
    max_clip_s: float = 10.0  # longer scenes are cut into equal parts no longer than this
    analysis_width: int = 256  # scene detection runs on frames decoded at this width


@dataclass(frozen=True)
class FramesConfig:
    """The decode-once frame views (docs/ARCHITECTURE.md, "Frame views")."""

    num_frames: int = 8
    short_side: int = 320
    motion_fps: float = 4.0
    motion_width: int = 320
    max_motion_frames: int = 64


@dataclass(frozen=True)
class LimitsConfig:
    """Guards against hostile inputs."""

    max_pixels: int = 8192 * 8192  # width*height above this is refused before decoding
    max_duration_s: float = 4 * 3600.0
    max_file_bytes: int = 64 * 1024**3
    decode_timeout_s: float = 120.0  # per source: probe + split + decode of one file


@dataclass(frozen=True)
class ClusteringConfig:
    """k-means over `embedding` after `samples/` is written, and near-duplicates within each cluster."""

    enabled: bool = False
    k: int = 100
    sample_size: int = 200_000
    seed: int = 0
    refit: bool = False
    cos_threshold: float = 0.95
    hamming_threshold: int = 8
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
    engine: str = "qwen2vl"  # captioner.engines: qwen2vl (transformers' generate) or qwen2vl_fast (same tokens)
    num_frames: int = 8  # frames per video clip (even: Qwen2-VL pairs frames in time)
    short_side: int = 336  # frames are decoded at this short side (tokens grow with its square)
    max_new_tokens: int = 200
    batch_size: int = 32  # rows per generate() call (H100, 7B, 8 frames at 336 px: 24.5 GiB peak; bench/caption.py)
    num_gpus: float = 1.0  # per captioner actor; 0 runs on CPU (tests, tiny models)
    concurrency: int = 1  # captioner actors
    dtype: str = "bfloat16"  # on GPU; CPU runs in float32
    use_ocr: bool = True  # put the row's `ocr_text` into the prompt
    max_ocr_chars: int = 300  # longer OCR text is cut to this many characters
    recaption: bool = False  # caption rows that already have a caption (a re-run otherwise skips them)
    decode_timeout_s: float = 60.0  # per row, in the isolated decoder


@dataclass(frozen=True)
class OperatorSpec:
    """One operator named in the config, with its parameters and resources."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    num_cpus: float | None = None
    num_gpus: float | None = None
    batch_size: int | None = None
    concurrency: int | None = None  # actor pool size (stateful operators)


@dataclass(frozen=True)
class Rule:
    """A threshold on one column: min, max, or a set of excluded values."""

    column: str
    min: float | None = None
    max: float | None = None
    exclude: tuple[str, ...] = ()
    reject_if_true: bool = False


@dataclass(frozen=True)
class StageSpec:
    """One training stage's data mix, selected from the kept rows after clustering (curation/stages.py)."""

    name: str
    media_types: tuple[str, ...] = ("video", "image")
    min_short_side: int = 0  # min(width, height) in pixels
    min_duration_s: float = 0.0  # videos only
    max_duration_s: float | None = None  # videos only
    where: tuple[Rule, ...] = ()  # like `decide`, but a null value does not pass
    include_duplicates: bool = False  # rows whose `duplicate_of` is set
    balance: str | None = "cluster_id"  # weights even out the groups of this column; null: no balancing
    max_balance: float = 10.0  # cap on a group's balancing factor (and 1/cap its floor)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)  # column -> value -> weight multiplier
    max_rows: int | None = None  # more rows than this: a balanced sample over `balance` groups
    seed: int = 0


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs, validated."""

    name: str = "curation"
    profile: str = "offline"
    split: SplitConfig = SplitConfig()
    frames: FramesConfig = FramesConfig()
    limits: LimitsConfig = LimitsConfig()
    operators: tuple[OperatorSpec, ...] = ()
    decide: tuple[Rule, ...] = ()
    rows_per_file: int = 2000
    image_extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
    video_extensions: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".flv", ".mpg", ".mpeg")
    clustering: ClusteringConfig = ClusteringConfig()
    captioning: CaptionConfig = CaptionConfig()
    stages: tuple[StageSpec, ...] = ()
    report: bool = True  # write <output>/report.html at the end of the run
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for run.json."""
        d = dataclasses.asdict(self)
        d.pop("raw", None)
        return d


_TOP_KEYS = {
    "name", "profile", "split", "frames", "limits", "operators", "decide", "rows_per_file",
    "image_extensions", "video_extensions", "clustering", "captioning", "stages", "report",
}
_STAGE_KEYS = {f for f in StageSpec.__dataclass_fields__}
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_RULE_KEYS = {"min", "max", "exclude", "reject_if_true"}
_OP_KEYS = {"name", "params", "num_cpus", "num_gpus", "batch_size", "concurrency"}


def _build_section(cls: type, data: Any, where: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        kwargs[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**kwargs)


def _parse_captioning(data: Any) -> CaptionConfig:
    c = _build_section(CaptionConfig, data, "captioning")
    if c.num_frames < 2 or c.num_frames % 2:
        raise ConfigError(f"captioning.num_frames: an even number >= 2 (Qwen2-VL pairs frames), got {c.num_frames}")
    if c.short_side < 28 or c.max_new_tokens < 1 or c.batch_size < 1 or c.concurrency < 1:
        raise ConfigError("captioning: short_side >= 28, max_new_tokens >= 1, batch_size >= 1 and concurrency >= 1 "
                          "required")
    if c.engine not in CAPTION_ENGINES:
        raise ConfigError(f"captioning.engine: one of {', '.join(sorted(CAPTION_ENGINES))}, got {c.engine!r}")
    if c.dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"captioning.dtype: bfloat16, float16 or float32, got {c.dtype!r}")
    if c.enabled:
        from curation import models

        if c.model not in models.REGISTRY and not os.path.isdir(os.path.expanduser(c.model)):
            raise ConfigError(f"captioning.model: {c.model!r} is neither a model registry key "
                              f"({', '.join(sorted(models.REGISTRY))}) nor a local folder")
    return c


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{where}: must be >= 0, got {value!r}")
        return type(default)(value) if isinstance(default, float) else int(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def _parse_operators(data: Any) -> tuple[OperatorSpec, ...]:
    from curation.catalog import known_operators

    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError("operators: expected a list")
    specs = []
    seen = set()
    for i, item in enumerate(data):
        where = f"operators[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where}: expected a mapping with a 'name'")
        unknown = sorted(set(item) - _OP_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_OP_KEYS)}")
        name = item["name"]
        if name not in known_operators():
            raise ConfigError(f"{where}.name: unknown operator {name!r}; known: {sorted(known_operators())}")
        if name in seen:
            raise ConfigError(f"{where}.name: operator {name!r} listed twice")
        seen.add(name)
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{where}.params: expected a mapping")
        for key in ("num_cpus", "num_gpus"):
            v = item.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ConfigError(f"{where}.{key}: expected a number >= 0, got {v!r}")
        for key in ("batch_size", "concurrency"):
            v = item.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{where}.{key}: expected an integer >= 1, got {v!r}")
        specs.append(OperatorSpec(name=name, params=params, num_cpus=item.get("num_cpus"),
                                  num_gpus=item.get("num_gpus"), batch_size=item.get("batch_size"),
                                  concurrency=item.get("concurrency")))
    return tuple(specs)


def _parse_rules(data: Any, section: str = "decide") -> tuple[Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of column -> {{min, max, exclude, reject_if_true}}")
    rules = []
    for column, spec in data.items():
        where = f"{section}.{column}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with min/max/exclude/reject_if_true")
        unknown = sorted(set(spec) - _RULE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_RULE_KEYS)}")
        for key in ("min", "max"):
            v = spec.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ConfigError(f"{where}.{key}: expected a number, got {v!r}")
        if spec.get("min") is not None and spec.get("max") is not None and spec["min"] > spec["max"]:
            raise ConfigError(f"{where}: min {spec['min']} is above max {spec['max']}")
        exclude = spec.get("exclude") or []
        if not isinstance(exclude, list) or not all(isinstance(v, str) for v in exclude):
            raise ConfigError(f"{where}.exclude: expected a list of strings")
        rit = spec.get("reject_if_true", False)
        if not isinstance(rit, bool):
            raise ConfigError(f"{where}.reject_if_true: expected true/false")
        if spec.get("min") is None and spec.get("max") is None and not exclude and not rit:
            raise ConfigError(f"{where}: a rule needs min, max, exclude or reject_if_true")
        rules.append(Rule(column=column, min=spec.get("min"), max=spec.get("max"), exclude=tuple(exclude),
                          reject_if_true=rit))
    return tuple(rules)


def _number(v: Any, where: str, lo: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {v!r}")
    return float(v)


def _parse_stages(data: Any) -> tuple[StageSpec, ...]:
    """`stages:` a list of stage mixes, in curriculum order."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError("stages: expected a list of stages (each a mapping with at least `name`)")
    out, names = [], set()
    for i, item in enumerate(data):
        where = f"stages[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"{where}: expected a mapping with a `name`")
        name = item["name"]
        # The name becomes a folder under <output>/stages/: nothing that could leave it.
        if not isinstance(name, str) or not _STAGE_NAME.match(name) or name in (".", ".."):
            raise ConfigError(f"{where}.name: letters, digits, '_', '.', '-' only (a folder name), got {name!r}")
        where = f"stages.{name}"
        if name in names:
            raise ConfigError(f"{where}: stage named twice")
        names.add(name)
        unknown = sorted(set(item) - _STAGE_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(_STAGE_KEYS)}")
        kw: dict[str, Any] = {"name": name}
        if "media_types" in item:
            mt = item["media_types"]
            if not isinstance(mt, list) or not mt or not set(mt) <= {"video", "image"}:
                raise ConfigError(f"{where}.media_types: a non-empty list of 'video' and/or 'image', got {mt!r}")
            kw["media_types"] = tuple(mt)
        if "min_short_side" in item:
            kw["min_short_side"] = int(_number(item["min_short_side"], f"{where}.min_short_side", 0))
        if "min_duration_s" in item:
            kw["min_duration_s"] = _number(item["min_duration_s"], f"{where}.min_duration_s", 0)
        if item.get("max_duration_s") is not None:
            kw["max_duration_s"] = _number(item["max_duration_s"], f"{where}.max_duration_s", 0)
            if kw["max_duration_s"] < kw.get("min_duration_s", 0.0):
                raise ConfigError(f"{where}: max_duration_s is below min_duration_s")
        kw["where"] = _parse_rules(item.get("where"), f"{where}.where")
        if "include_duplicates" in item:
            if not isinstance(item["include_duplicates"], bool):
                raise ConfigError(f"{where}.include_duplicates: expected true/false")
            kw["include_duplicates"] = item["include_duplicates"]
        if "balance" in item:
            if item["balance"] is not None and not isinstance(item["balance"], str):
                raise ConfigError(f"{where}.balance: a column name or null")
            kw["balance"] = item["balance"]
        if "max_balance" in item:
            kw["max_balance"] = _number(item["max_balance"], f"{where}.max_balance", 1)
        if "weights" in item:
            w = item["weights"]
            if not isinstance(w, dict) or not all(isinstance(m, dict) for m in w.values()):
                raise ConfigError(f"{where}.weights: expected column -> {{value: multiplier}}")
            kw["weights"] = {str(col): {str(v): _number(x, f"{where}.weights.{col}.{v}", 0) for v, x in m.items()}
                             for col, m in w.items()}
        if item.get("max_rows") is not None:
            kw["max_rows"] = int(_number(item["max_rows"], f"{where}.max_rows", 1))
        if "seed" in item:
            kw["seed"] = int(_number(item["seed"], f"{where}.seed"))
        out.append(StageSpec(**kw))
    return tuple(out)


def parse_config(data: dict[str, Any]) -> PipelineConfig:
    """Validate a config mapping; raise ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a mapping at the top level")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    profile = data.get("profile", "offline")
    if profile not in ("offline", "full"):
        raise ConfigError(f"profile: expected 'offline' or 'full', got {profile!r}")
    rpf = data.get("rows_per_file", 2000)
    if isinstance(rpf, bool) or not isinstance(rpf, int) or rpf < 1:
        raise ConfigError(f"rows_per_file: expected an integer >= 1, got {rpf!r}")
    split = _build_section(SplitConfig, data.get("split"), "split")
    if split.detector not in ("content", "adaptive", "none"):
        raise ConfigError(f"split.detector: expected content|adaptive|none, got {split.detector!r}")
    if split.max_clip_s <= 0:
        raise ConfigError("split.max_clip_s: must be > 0")
    frames = _build_section(FramesConfig, data.get("frames"), "frames")
    if frames.num_frames < 1 or frames.short_side < 16 or frames.motion_width < 16 or frames.motion_fps <= 0:
        raise ConfigError("frames: num_frames >= 1, short_side >= 16, motion_width >= 16 and motion_fps > 0 required")
    limits = _build_section(LimitsConfig, data.get("limits"), "limits")
    base = PipelineConfig()
    cfg = PipelineConfig(
        name=_coerce(data.get("name", base.name), base.name, "name"),
        profile=profile,
        split=split,
        frames=frames,
        limits=limits,
        operators=_parse_operators(data.get("operators")),
        decide=_parse_rules(data.get("decide")),
        rows_per_file=rpf,
        image_extensions=_coerce(data.get("image_extensions", list(base.image_extensions)), base.image_extensions,
                                 "image_extensions"),
        video_extensions=_coerce(data.get("video_extensions", list(base.video_extensions)), base.video_extensions,
                                 "video_extensions"),
        clustering=_build_section(ClusteringConfig, data.get("clustering"), "clustering"),
        captioning=_parse_captioning(data.get("captioning")),
        stages=_parse_stages(data.get("stages")),
        report=_coerce(data.get("report", True), True, "report"),
        raw=data,
    )
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
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    try:
        return parse_config(data or {})
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
