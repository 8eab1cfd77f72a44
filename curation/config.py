"""Pipeline configuration: YAML in, validated dataclasses out. A bad key or value stops the run with one message naming it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad pipeline config; the message names the offending key."""


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
    """The decode-once frame views (DESIGN.md §4)."""

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
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for run.json."""
        d = dataclasses.asdict(self)
        d.pop("raw", None)
        return d


_TOP_KEYS = {
    "name", "profile", "split", "frames", "limits", "operators", "decide", "rows_per_file",
    "image_extensions", "video_extensions", "clustering",
}
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


def _parse_rules(data: Any) -> tuple[Rule, ...]:
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise ConfigError("decide: expected a mapping of column -> {min, max, exclude, reject_if_true}")
    rules = []
    for column, spec in data.items():
        where = f"decide.{column}"
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
        raw=data,
    )
    # Instantiating each operator validates its parameters now, at start-up, not on a worker hours later.
    from curation.catalog import build_operator
    from curation.schema import base_schema

    produced = {f.name for f in base_schema()}
    for spec in cfg.operators:
        produced |= set(build_operator(spec).produces)
    for rule in cfg.decide:
        if rule.column not in produced:
            raise ConfigError(f"decide.{rule.column}: no column of that name in the schema or produced by the "
                              f"configured operators")
    if cfg.clustering.enabled and not any(s.name in ("embedding", "descriptor") for s in cfg.operators):
        raise ConfigError("clustering.enabled: needs an `embedding` or `descriptor` operator to fill `embedding`")
    return cfg


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
