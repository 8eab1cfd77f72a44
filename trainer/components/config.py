"""The trainer's config files: YAML read and mapped onto dataclasses by the core's one typed reader
(`curation.typed`), plus `--set dotted.key=value` overrides."""

from __future__ import annotations

from typing import Any, TypeVar

from curation import typed
from curation.errors import ConfigError  # one error class for every config of the project

T = TypeVar("T")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping with the project's one typed reader (`curation.typed.read`)."""
    return typed.read(cls, data, prefix)


def load_yaml(path: str, cls: type[T], overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Read a YAML file, apply `--set dotted.key=value` overrides, and build dataclass `cls` (validated): the one
    config reader of the trainer's scripts; every error is one ConfigError naming the key."""
    data = typed.load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return from_dict(cls, apply_overrides(data, list(overrides)) if overrides else data)


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain dicts/lists (for run records and checkpoints)."""
    return typed.to_plain(obj)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `dotted.key=value` overrides (values read as YAML scalars) to a raw config mapping; returns a copy.

    A list element is addressed by its index (`phases.1.lr=1e-4`). A path through something that is not a mapping
    or list, or an index past a list's end, is a ConfigError naming the override.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            value = typed.yaml_scalar(raw)
        except ConfigError as e:
            raise ConfigError(f"--set {key}: {e}") from e
        parts = key.strip().split(".")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {where} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i])} is a value, not a section")
    return out
