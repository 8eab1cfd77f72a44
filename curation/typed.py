"""The one typed config reader of the project: a YAML mapping in, a validated dataclass out.

Every config (the pipeline's, each operator's parameters, the trainer's, the visual-text generator's) is a tree of
dataclasses read by `read`. A field's annotation gives its type (nested dataclasses, `X | None`, lists, tuples,
`dict[K, V]`, `Literal[...]` choices, bool/int/float/str); `setting(...)` adds bounds, choices or a check; a dataclass
may define `config_check(self)` for rules across its fields. Any mistake is one `ConfigError` whose message names the
dotted key: `unknown config key a.b.c`, `a.b.c: expected an integer, got 'x'`, `a.b.c: must be >= 1, got 0`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, TypeVar

from curation.errors import ConfigError

T = TypeVar("T")

_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: tuple | None = None, check: Callable[[Any], str | None] | None = None,
            read: Callable[[Any, str], Any] | None = None) -> Any:
    """A dataclass field with declared constraints: bounds (`ge`/`gt`/`le`/`lt`, on a number or each number of a
    list), `choices`, `check(value) -> error text or None`, or `read(value, key)` replacing the type-driven reading."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices),
                              ("check", check), ("read", read)) if v is not None}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def convert(value: Any, tp: Any, key: str) -> Any:
    """`value` read as type `tp` (see the module docstring); a ConfigError naming `key` when it is not one."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for arg in options:
            try:
                return convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of "
                          f"{[_type_name(a) for a in options]}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return read(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):  # a fixed-length tuple such as tuple[int, int]
                raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            # YAML reads `3:` as an int; a mapping keyed by strings takes it as the text it was written as.
            if key_tp is str and isinstance(k, (int, float, bool)):
                k = str(k)
            k = convert(k, key_tp, f"{key} key {k!r}")
            out[k] = convert(v, val_tp, f"{key}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if not _is_number(value):
            # YAML reads 1e-4 (no dot) as a string; accept numeric strings for floats only.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _constrain(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    """Apply a field's declared bounds, choices and check to its read value."""
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {list(meta['choices'])}")
    numbers = [value] if _is_number(value) else (
        [v for v in value if _is_number(v)] if isinstance(value, (list, tuple)) else [])
    for name, sign, ok in _BOUNDS:
        if name in meta:
            for v in numbers:
                if not ok(v, meta[name]):
                    raise ConfigError(f"{key}: must be {sign} {meta[name]}, got {v!r}")
    if "check" in meta:
        problem = meta["check"](value)
        if problem:
            raise ConfigError(f"{key}: {problem}")


def read(cls: type[T], data: Any, prefix: str = "", fixed: dict[str, Any] | None = None) -> T:
    """Build dataclass `cls` from a mapping (None: all defaults), rejecting unknown keys, mistyped and out-of-bounds
    values; `fixed` gives fields that are not read from the mapping (a rule's column, taken from its key)."""
    fixed = fixed or {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in fixed}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]!s} (known: {sorted(fields)})")
    kwargs = dict(fixed)
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            reader = f.metadata.get("read")
            value = reader(data[name], key) if reader else convert(data[name], hints[name], key)
            _constrain(value, f.metadata, key)
            kwargs[name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key {key}")
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "config_check"):
            obj.config_check()  # rules across fields: the message it raises is about this section
    except ConfigError as e:
        if prefix and not str(e).startswith(prefix):
            raise ConfigError(f"{prefix}: {e}") from None
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e
    return obj


def to_plain(obj: Any) -> Any:
    """A dataclass config as plain dicts/lists (for run records and checkpoints)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _parse_yaml(text: str) -> Any:
    """The one call that parses YAML in the project (safe: plain data only, never objects)."""
    import yaml

    return yaml.safe_load(text)


def load_yaml_file(path: str | Any) -> Any:
    """The parsed content of a YAML file: the one place the project reads config files (a syntax error is a
    ConfigError naming the file)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, not text: every command says it alike
        raise ConfigError(f"cannot read config file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def yaml_scalar(text: str) -> Any:
    """A `--set key=value` value read as a YAML scalar (or flow list/mapping)."""
    import yaml

    try:
        return _parse_yaml(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot read value {text!r}: {exc}") from exc
