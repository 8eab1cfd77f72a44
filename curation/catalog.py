"""The operators a config can name: config name -> "module:Class". Imported lazily so a config only loads what it uses."""

from __future__ import annotations

import importlib

from curation.config import ConfigError, OperatorSpec
from curation.operator import Operator, OperatorConfigError, Resources

_CATALOG: dict[str, str] = {
    "basic": "operators.basic:BasicShape",
    "quality": "operators.quality:TechnicalQuality",
    "motion": "operators.motion:MotionGrading",
    "ocr": "operators.ocr:OcrText",
    "watermark": "operators.watermark:WatermarkDetector",
    "nsfw": "operators.nsfw:NudeNetNsfw",
    "descriptor": "operators.embedding:ClassicalDescriptor",
    "embedding": "operators.embedding:ClipEmbedding",
    "phash": "operators.embedding:PerceptualHash",
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
