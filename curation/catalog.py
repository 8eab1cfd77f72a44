"""The operators a config can name: config name -> "module:Class". Imported lazily so a config only loads what it uses."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from curation.errors import ConfigError
from curation.operator import Operator, OperatorConfigError, Resources

if TYPE_CHECKING:  # types only: the config module imports this one
    from curation.config import OperatorSpec, PipelineConfig

_CATALOG: dict[str, str] = {
    "basic": "operators.basic:BasicShape",
    "quality": "operators.quality:TechnicalQuality",
    "motion": "operators.motion:MotionGrading",
    "ocr": "operators.ocr:OcrText",
    "watermark": "operators.watermark:WatermarkDetector",
    "nsfw": "operators.nsfw:NudeNetNsfw",
    "descriptor": "operators.descriptor:ClassicalDescriptor",
    "embedding": "operators.clip_embedding:ClipEmbedding",
    "phash": "operators.phash:PerceptualHash",
    "clip_heads": "operators.heads:ClipHeads",
    "quality_scorer": "operators.scorer:QualityScorer",
}


def known_operators() -> list[str]:
    """Names a config may use under `operators:`."""
    return list(_CATALOG)


def operator_class(name: str) -> type[Operator]:
    """Import and return the operator class registered under `name`."""
    try:
        target = _CATALOG[name]
    except KeyError:
        raise ConfigError(f"unknown operator {name!r}; known: {sorted(_CATALOG)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_operator(spec: OperatorSpec) -> Operator:
    """Instantiate (not set up) the operator a config entry names, validating its parameters."""
    cls = operator_class(spec.name)
    base = cls.default_resources
    resources = Resources(
        num_cpus=base.num_cpus if spec.num_cpus is None else spec.num_cpus,
        num_gpus=base.num_gpus if spec.num_gpus is None else spec.num_gpus,
        memory=base.memory,
    )
    try:
        return cls(resources=resources, batch_size=spec.batch_size, **spec.params)
    except OperatorConfigError as exc:
        raise ConfigError(f"operators.{spec.name}: {exc}") from None


def config_models(cfg: PipelineConfig, operators: list[Operator] | None = None) -> tuple[list[str], list[str]]:
    """Registry keys a config needs (a run stops without them) and may use (optional: the score stays null).

    Needed: every operator's `models` (backbones and heads as built from its params) and the captioner when
    captioning is on and names a registry key (a local checkpoint folder is checked by the config loader). Optional:
    models an operator uses when present, such as the quality scorer without `required: true`. One list for `curation
    models check/pull` and for the run's up-front check, so the two cannot disagree."""
    from curation.models import REGISTRY

    ops = operators if operators is not None else [build_operator(spec) for spec in cfg.operators]
    needed = [m for op in ops for m in op.models]
    if cfg.captioning.enabled and cfg.captioning.model in REGISTRY:
        needed.append(cfg.captioning.model)
    needed = list(dict.fromkeys(needed))
    optional = [m for op in ops for m in getattr(op, "optional_models", ()) if m not in needed]
    return needed, list(dict.fromkeys(optional))
