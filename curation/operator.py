"""The operator contract (docs/ARCHITECTURE.md, "The operator contract"): an operator scores rows, never drops them,
and isolates per-row failures."""

from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from curation import typed
from curation.errors import ConfigError


@dataclass(frozen=True)
class Resources:
    """What one operator instance (task or actor) asks Ray for."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes; None lets Ray decide

    def ray_args(self) -> dict[str, Any]:
        """Keyword arguments for `map_batches`."""
        args: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.memory:
            args["memory"] = self.memory
        return args


class OperatorConfigError(ConfigError):
    """A bad operator parameter in the pipeline config (a check across parameters, in `Operator.validate`)."""


@dataclass(frozen=True)
class NoParams:
    """The parameters of an operator that takes none."""


class Operator:
    """Base class of every scorer.

    Subclasses set the class attributes and implement `score_row` (one row at a time) or, when batching pays off
    (GPU models), `score_rows` (a list of rows at once). `__call__` is what Ray Data calls: it skips rows already
    `failed`, catches a failure per row (recording `error` and marking the row `failed`) and returns typed columns
    in which a score that was not computed is null.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[dict[str, pa.DataType]] = {}
    # Models this operator resolves through the model registry before the run touches data.
    models: ClassVar[tuple[str, ...]] = ()
    # Models it uses when the cache holds them and does without otherwise (its score stays null): listed and pulled
    # by `curation models`, never a reason to stop a run.
    optional_models: ClassVar[tuple[str, ...]] = ()
    # Operators that hold a model run as an actor pool (model loaded once per actor); the others as tasks.
    stateful: ClassVar[bool] = False
    default_resources: ClassVar[Resources] = Resources()
    default_batch_size: ClassVar[int] = 8
    # Parameters accepted from config: a dataclass read by `curation.typed` (types, defaults, declared bounds).
    Params: ClassVar[type] = NoParams
    # name -> default of `Params`, derived (read-only).
    params: ClassVar[dict[str, Any]] = {}
    # Categorical columns among `produces`: column -> every value it can take. Rules and stage weights naming a
    # value outside these (`exclude: [statc]`) are refused at start-up instead of silently never matching.
    categories: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Attributes holding loaded models or engines: left out when Ray pickles the operator to ship it to a worker,
    # which loads its own in setup().
    transient: ClassVar[tuple[str, ...]] = ()

    def __init__(self, resources: Resources | None = None, batch_size: int | None = None, **params: Any) -> None:
        self.resources = resources or self.default_resources
        self.batch_size = int(batch_size or self.default_batch_size)
        # The one typed reader: an unknown, mistyped or out-of-bounds parameter is a ConfigError naming
        # `operators.<name>.params.<key>`.
        self.p = typed.read(self.Params, params, f"operators.{self.name}.params")
        self.config = {f.name: getattr(self.p, f.name) for f in dataclasses.fields(self.p)}
        self.validate()
        self._ready = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # `params` (name -> default) is derived from the declared dataclass, for listings and docs.
        cls.params = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                      for f in dataclasses.fields(cls.Params)}

    def validate(self) -> None:
        """Checks across parameters that their declared types and bounds cannot express (`self.p`); raise
        OperatorConfigError naming the key."""

    def __getstate__(self) -> dict:
        """Pickle without the `transient` attributes (loaded models): workers load their own in setup()."""
        state = dict(self.__dict__)
        for key in self.transient:
            state.pop(key, None)
        state["_ready"] = False  # the copy has none of the models: it sets up again before its first batch
        return state

    def mark_ready(self) -> None:
        """Record that `setup()` has run (an actor calls it itself before serving), so `__call__` does not redo it."""
        self._ready = True

    def setup(self) -> None:
        """Load models once per actor (never at import time)."""

    def score_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Score one row; return a dict of (some of) the `produces` columns."""
        raise NotImplementedError

    def score_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Score many rows at once. Default: one at a time. Override for batched models."""
        return [self.score_row(r) for r in rows]

    # -- what Ray Data calls -------------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._ready:
            self.setup()
            self._ready = True
        n = len(batch["sample_id"])
        status = list(batch["status"])
        error = list(batch["error"]) if "error" in batch else [None] * n
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        todo = [i for i in range(n) if status[i] != "failed"]
        results: dict[int, dict[str, Any]] = {}
        if todo:
            try:
                out = self.score_rows([rows[i] for i in todo])
                if len(out) != len(todo):
                    raise RuntimeError(f"score_rows returned {len(out)} results for {len(todo)} rows")
                results = dict(zip(todo, out))
            except Exception:  # noqa: BLE001 - fall back to one row at a time so one bad row cannot sink the batch
                for i in todo:
                    try:
                        results[i] = self.score_rows([rows[i]])[0]
                    except Exception as exc:  # noqa: BLE001
                        status[i] = "failed"
                        error[i] = f"{self.name}: {type(exc).__name__}: {exc}"
                        _log_row_failure(self.name, rows[i], exc)
        out_batch = dict(batch)
        for col, dtype in self.produces.items():
            values = [results.get(i, {}).get(col) for i in range(n)]
            out_batch[col] = to_column(values, dtype)
        out_batch["status"] = np.array(status, dtype=object)
        out_batch["error"] = np.array(error, dtype=object)
        return out_batch


def to_column(values: list[Any], dtype: pa.DataType) -> np.ndarray:
    """Build a numpy column that Ray converts to Arrow with nulls kept as nulls."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = None if v is None else np.asarray(v, dtype=np.float32).tolist()
        return arr
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if v is None:
            arr[i] = None
        elif pa.types.is_floating(dtype):
            f = float(v)
            arr[i] = None if np.isnan(f) else f
        elif pa.types.is_integer(dtype):
            arr[i] = int(v)
        elif pa.types.is_boolean(dtype):
            arr[i] = bool(v)
        else:
            arr[i] = v
    return arr


def _log_row_failure(op: str, row: dict[str, Any], exc: Exception) -> None:
    import logging

    logging.getLogger(__name__).warning(
        "operator %s failed on %s: %s\n%s", op, row.get("source_uri"), exc, traceback.format_exc(limit=3)
    )
