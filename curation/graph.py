"""The curation graph on Ray Data: sources → probe+split → decode once → operators → decide → rows.

This module builds the graph only (`plan`, `build_dataset`, `conform`); `curation.run` runs it and the passes after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.catalog import build_operator, config_models
from curation.config import OperatorSpec, PipelineConfig
from curation.decide import decide_batch
from curation.ingest import attach_views, drop_views, source_to_rows
from curation.operator import Operator
from curation.schema import FRAME_VIEW_COLUMNS, base_schema, manifest_schema


def _source_batch_to_rows(batch: dict[str, np.ndarray], cfg: PipelineConfig) -> pa.Table:
    # One source fans out to its clips. A typed Arrow table (not a list of dicts) keeps every block's schema
    # identical, even for blocks where a column happens to be all null.
    rows: list[dict] = []
    for uri in batch["source_uri"]:
        rows.extend(source_to_rows(str(uri), cfg))
    return pa.Table.from_pylist(rows, schema=base_schema())


# Every stage takes Arrow batches and converts them itself (`numpy_batch`): Ray's numpy conversion turns a nullable
# integer column into float64 with NaN, which silently drops the low bits of 64-bit values (`phash`).
STAGE_BATCH_FORMAT = "pyarrow"


def numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """An Arrow batch as the numpy columns operators see, nullable integers kept exact: an integer column with
    nulls becomes an object array of Python ints and None (not float64 with NaN, as Ray and numpy would make it)."""
    from ray.data.block import BlockAccessor

    exact = [f.name for f in table.schema if pa.types.is_integer(f.type) and table.column(f.name).null_count]
    rest = [n for n in table.column_names if n not in exact]
    out = BlockAccessor.for_block(table.select(rest)).to_numpy(rest) if rest else {}
    for name in exact:
        col = np.empty(table.num_rows, dtype=object)
        col[:] = table.column(name).to_pylist()
        out[name] = col
    return {n: out[n] for n in table.column_names}


class _Stage:
    """Post-processing shared by every stage: drop the frame views once no later operator needs them, and apply
    `decide` in the last stage (no extra Ray stage, no extra hop through the object store)."""

    drop_views: bool = False
    decide_cfg: PipelineConfig | None = None
    schema: pa.Schema | None = None

    def _post(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.drop_views or self.decide_cfg is not None:
            batch = drop_views(batch)
        if self.decide_cfg is not None:
            batch = decide_batch(batch, self.decide_cfg.decide)
        return restore_nulls(batch, self.schema) if self.schema is not None else batch


def restore_nulls(batch: dict[str, np.ndarray], schema: pa.Schema) -> dict[str, np.ndarray]:
    """Undo Ray's numpy conversion of nulls: a nullable int, string or list column comes back as floats with NaN
    (all-null as all-NaN). Left so, one block's `error` is float and another's string, and Ray cannot merge them."""
    out = dict(batch)
    for f in schema:
        col = batch.get(f.name)
        if col is None or pa.types.is_floating(f.type) or not isinstance(col, np.ndarray) or col.dtype.kind not in "fO":
            continue
        # Object columns too: an operator that copied a NaN-filled column into an object array keeps the NaNs.
        fixed = np.empty(len(col), dtype=object)
        for i, v in enumerate(col):
            if isinstance(v, (float, np.floating)):
                fixed[i] = None if np.isnan(v) else (int(v) if pa.types.is_integer(f.type) else v)
            else:
                fixed[i] = v
        out[f.name] = fixed
    return out


class _TaskChain(_Stage):
    """Consecutive stateless operators (and, first in the graph, the decode) run back to back in one Ray task, so
    frame views go from the decoder to every CPU scorer without crossing the object store."""

    def __init__(self, ops: list[Operator], cfg: PipelineConfig, decode: bool, drop: bool, decide: bool,
                 schema: pa.Schema) -> None:
        self.ops, self.cfg, self.decode, self.schema = ops, cfg, decode, schema
        self.drop_views = drop
        self.decide_cfg = cfg if decide else None

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        batch = numpy_batch(table)
        if self.decode:
            batch = attach_views(batch, self.cfg)
        for op in self.ops:
            batch = op(batch)
        return self._post(batch)


class _OperatorActor(_Stage):
    """Ray actor wrapper: builds the operator and loads its models once, in the actor, then serves batches."""

    def __init__(self, spec: OperatorSpec, cfg: PipelineConfig, drop: bool, decide: bool,
                 schema: pa.Schema) -> None:
        self.schema = schema
        self.op = build_operator(spec)
        self.op.setup()
        self.op.mark_ready()
        self.drop_views = drop
        self.decide_cfg = cfg if decide else None

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        return self._post(self.op(numpy_batch(table)))


@dataclass
class GraphPlan:
    """The operators of a run, built and validated, and the manifest schema they imply."""

    operators: list[tuple[OperatorSpec, Operator]]
    schema: pa.Schema
    models: list[str] = field(default_factory=list)


def plan(cfg: PipelineConfig) -> GraphPlan:
    """Build every configured operator (validating parameters) and the schema of the rows they produce."""
    ops = [(spec, build_operator(spec)) for spec in cfg.operators]
    extra: dict[str, pa.DataType] = {}
    for _, op in ops:
        extra.update(op.produces)
    models, _ = config_models(cfg, [op for _, op in ops])  # the same list as `curation models check`
    return GraphPlan(operators=ops, schema=manifest_schema(extra), models=sorted(models))


def build_dataset(uris: list[str], cfg: PipelineConfig, graph: GraphPlan):
    """The lazy Ray Data graph for a list of source URIs."""
    import ray.data

    from ray.data import ActorPoolStrategy

    _check_actor_reservations(graph)
    blocks = max(1, min(len(uris), 4096))
    ds = ray.data.from_items([{"source_uri": u} for u in uris], override_num_blocks=blocks)
    # One source per task: sources vary from one image to hours of video, so small tasks balance best.
    ds = ds.map_batches(_source_batch_to_rows, batch_size=1, batch_format="numpy", fn_kwargs={"cfg": cfg},
                        num_cpus=1)
    # Stages: runs of stateless operators become one task stage (the first one also decodes); each stateful
    # operator is its own actor pool. Fewer stages also keep Ray Data's per-operator CPU budgets whole: with one
    # stage per cheap operator, a 2-CPU node had budgets below one CPU per stage and stalled.
    groups: list[tuple[str, list[tuple[OperatorSpec, Operator]]]] = []
    for spec, op in graph.operators:
        if op.stateful or not groups or groups[-1][0] != "tasks":
            groups.append(("actor" if op.stateful else "tasks", [(spec, op)]))
        else:
            groups[-1][1].append((spec, op))
    if not groups or groups[0][0] != "tasks":
        groups.insert(0, ("tasks", []))  # the decode needs a task stage of its own
    view_cols = set(FRAME_VIEW_COLUMNS)
    last_view_user = max((gi for gi, (_, members) in enumerate(groups)
                          if any(view_cols & set(op.needs) for _, op in members)), default=0)
    for gi, (kind, members) in enumerate(groups):
        drop, decide = gi >= last_view_user, gi == len(groups) - 1
        if kind == "tasks":
            ops = [op for _, op in members]
            cpus = max([1.0 if gi == 0 else 0.25] + [op.resources.num_cpus for op in ops])
            batch = min([4 if gi == 0 else 64] + [op.batch_size for op in ops])
            chain = _TaskChain(ops, cfg, decode=(gi == 0), drop=drop, decide=decide, schema=graph.schema)
            ds = ds.map_batches(chain, batch_size=batch, batch_format=STAGE_BATCH_FORMAT, num_cpus=cpus)
        else:
            spec, op = members[0]
            ds = ds.map_batches(_OperatorActor, fn_constructor_kwargs={"spec": spec, "cfg": cfg, "drop": drop,
                                                                       "decide": decide, "schema": graph.schema},
                                compute=ActorPoolStrategy(min_size=1, max_size=spec.concurrency or 1),
                                batch_size=op.batch_size, batch_format=STAGE_BATCH_FORMAT, **op.resources.ray_args())
    return ds


def _check_actor_reservations(graph: GraphPlan) -> None:
    """Refuse a graph whose actor pools would hold every CPU: decode tasks could never run and it would hang."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0))
    held = sum(op.resources.num_cpus for _, op in graph.operators if op.stateful)
    task_cpus = max([1.0] + [op.resources.num_cpus for _, op in graph.operators if not op.stateful])
    if total and held + task_cpus > total:
        names = ", ".join(f"{s.name}={op.resources.num_cpus:g}" for s, op in graph.operators if op.stateful)
        raise RuntimeError(
            f"actor pools reserve {held:g} of the cluster's {total:g} CPUs ({names}), leaving less than the "
            f"{task_cpus:g} CPU a decode task needs: the run would never finish. Lower `num_cpus` of these "
            f"operators in the config or add CPUs."
        )


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast a batch to the manifest schema; columns it lacks are null."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type or pa.types.is_floating(f.type):
                col = _cast_column(col, f.type)
            cols.append(col)
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _cast_column(col: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    # Ray's numpy batches carry nullable integers as floats with NaN, and an all-null column of any type as
    # floats: NaN means null on the way back to Arrow.
    if pa.types.is_floating(col.type) and pa.types.is_floating(target):
        return pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col).cast(target)
    if pa.types.is_floating(col.type) and not pa.types.is_floating(target):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        if col.null_count == len(col):
            return pa.chunked_array([pa.nulls(len(col), target)])
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), target)])
    return col.cast(target)
