"""Re-runs into an existing output: what of it a new config may reuse.

The config falls into parts that a re-run treats differently (`config_parts`):

- **scoring** (`split`, `frames`, `limits`, the file extensions, `operators` with their parameters): what the stored
  rows and scores were computed with. Rows scored two ways must not be mixed, so a re-run whose scoring part differs
  from the output's stops at start-up (`ResumeError`, one message naming what changed) unless `--recompute` asks to
  re-score: part files scored otherwise are then removed and their sources processed again.
- **decide**: thresholds only. A changed `decide:` re-decides every stored row from its stored scores (no decoding):
  `status` and `reject_reasons` are recomputed exactly as the graph's decide computes them, failed rows stay failed,
  and the duplicate mark of the clustering pass is kept (the clustering pass that follows re-derives it with the new
  statuses, since a kept twin is preferred as the representative). `curation decide OUT --config C` does the same on
  demand and then rewrites the stage mixes, run.json and the report.
- **clustering**, **stages**, **captioning**: re-applied by the passes after the graph on every run (a changed `k`,
  `seed` or `sample_size` refits the centroids instead of reusing `centroids.npy`).

Each part has a fingerprint (sha256 of its canonical JSON) in run.json (`fingerprints`). Every samples part file also
carries the scoring and decide fingerprints it was written with in its Parquet metadata, so the check holds for each
row even when a run stopped before writing run.json; parts written before fingerprints existed fall back to the
fingerprints of run.json's recorded config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import pyarrow as pa

from curation import outfs
from curation.config import PipelineConfig, Rule
from curation.decide import reasons_for
from curation.manifest import rewrite_part, sample_parts, set_column

log = logging.getLogger(__name__)

PARTS = ("scoring", "decide", "clustering", "stages", "captioning")
SCORING_KEYS = ("split", "frames", "limits", "image_extensions", "video_extensions", "operators")
# What a part file's Parquet metadata records: {"scoring": fingerprint, "decide": fingerprint}.
METADATA_KEY = b"curation.fingerprints"
# Filled by the passes after the graph, so the graph's decide always sees them null; re-deciding does the same.
POST_GRAPH_COLUMNS = frozenset({"cluster_id", "duplicate_of", "caption", "caption_source"})
DUPLICATE_REASON = "duplicate_of"  # as curation.clustering names it
_CENTROID_KEYS = ("k", "sample_size", "seed")


class ResumeError(Exception):
    """The output holds rows that this config cannot be resumed onto; the message says what changed and what to do."""


# -- fingerprints --------------------------------------------------------------------------------------------------


def config_parts(config: dict[str, Any]) -> dict[str, Any]:
    """The config in its run.json form (`PipelineConfig.to_dict()`) split into the parts a re-run treats differently.
    Operator resources (CPUs, GPUs, batch size, concurrency) change no score and are left out."""
    scoring = {k: config.get(k) for k in SCORING_KEYS}
    scoring["operators"] = [{"name": op.get("name"), "params": op.get("params") or {}}
                            for op in config.get("operators") or []]
    return {"scoring": scoring, **{k: config.get(k) for k in PARTS[1:]}}


def _canonical(x: Any) -> Any:
    # 500 and 500.0 are the same threshold: a YAML spelling must not look like a change.
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {str(k): _canonical(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    return x


def fingerprint(part: Any) -> str:
    """sha256 (first 16 hex digits) of a config part's canonical JSON."""
    text = json.dumps(_canonical(part), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprints(cfg: PipelineConfig | dict[str, Any]) -> dict[str, str]:
    """Fingerprint of each part of a config (a PipelineConfig or its run.json form)."""
    d = cfg.to_dict() if isinstance(cfg, PipelineConfig) else cfg
    return {name: fingerprint(part) for name, part in config_parts(d).items()}


def part_metadata(cfg: PipelineConfig) -> dict[bytes, bytes]:
    """Parquet schema metadata recording the scoring and decide fingerprints a samples part is written with."""
    fp = fingerprints(cfg)
    return {METADATA_KEY: json.dumps({"scoring": fp["scoring"], "decide": fp["decide"]}).encode()}


def _stamp(schema: pa.Schema, stamp: dict[str, str]) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: json.dumps(stamp).encode()})


def _part_stamp(path: str, schema: pa.Schema | None = None) -> dict[str, str]:
    meta = (schema if schema is not None else outfs.parquet_schema(path)).metadata or {}
    try:
        return dict(json.loads(meta[METADATA_KEY]))
    except (KeyError, ValueError, TypeError):
        return {}  # written before fingerprints existed


def describe_changes(old: Any, new: Any, where: str = "") -> list[str]:
    """Human-readable differences between two config parts (`operators.watermark.params.edge_min: 80 -> 60`)."""
    old, new = _canonical(old), _canonical(new)
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            sub = f"{where}.{k}" if where else str(k)
            if k not in old:
                out.append(f"{sub}: added ({json.dumps(new[k])})")
            elif k not in new:
                out.append(f"{sub}: removed (was {json.dumps(old[k])})")
            else:
                out.extend(describe_changes(old[k], new[k], sub))
        return out
    if where == "operators" and isinstance(old, list) and isinstance(new, list):
        o = {op["name"]: op for op in old}
        n = {op["name"]: op for op in new}
        out = [f"operators: {name} added" for name in n if name not in o]
        out += [f"operators: {name} removed" for name in o if name not in n]
        for name in n:
            if name in o:
                out.extend(describe_changes(o[name]["params"], n[name]["params"], f"operators.{name}.params"))
        if not out:
            out.append(f"operators: order {[op['name'] for op in old]} -> {[op['name'] for op in new]}")
        return out
    return [f"{where}: {json.dumps(old)} -> {json.dumps(new)}"]


# -- the start-up check --------------------------------------------------------------------------------------------


def read_run(output: str | os.PathLike) -> dict[str, Any] | None:
    """`<output>/run.json`, or None when there is none (or it is unreadable)."""
    p = outfs.join(output, "run.json")
    try:
        return json.loads(outfs.read_text(p))
    except (OSError, ValueError):
        return None


def _recorded(run: dict[str, Any] | None) -> dict[str, str]:
    """Fingerprints run.json records (computed from its config when it predates them)."""
    if not run:
        return {}
    if isinstance(run.get("fingerprints"), dict):
        return dict(run["fingerprints"])
    return fingerprints(run["config"]) if isinstance(run.get("config"), dict) else {}


def check_resume(output: str | os.PathLike, cfg: PipelineConfig, recompute: bool = False) -> dict[str, Any]:
    """Whether `cfg` may resume into `output`: raise ResumeError when stored rows were scored with another scoring
    config (unless `recompute`); return what the run must do (`stale_parts` to remove, `refit_centroids`)."""
    output = os.fspath(output)
    parts = sample_parts(output)
    new = fingerprints(cfg)
    run = read_run(output)
    recorded = _recorded(run)
    plan: dict[str, Any] = {"existing_parts": len(parts), "stale_parts": [], "unverified_parts": 0,
                            "refit_centroids": _refit_needed(run, cfg), "previous_fingerprints": recorded or None}
    if not parts:
        return plan
    stale, unverified = [], []
    for p in parts:
        fp = _part_stamp(p).get("scoring") or recorded.get("scoring")
        if fp is None:
            unverified.append(p)
        elif fp != new["scoring"]:
            stale.append(p)
    plan["unverified_parts"] = len(unverified)
    if recompute:
        plan["stale_parts"] = stale + unverified
        return plan
    if unverified:
        log.warning("%d part files of %s/samples/ record no scoring fingerprint and there is no run.json to tell what "
                    "they were scored with: resuming onto them unchecked (--recompute re-scores them)",
                    len(unverified), output)
    if stale:
        raise ResumeError(_refusal(output, run, cfg, len(stale), len(parts)))
    return plan


def _refusal(output: str, run: dict[str, Any] | None, cfg: PipelineConfig, n_stale: int, n_parts: int) -> str:
    old_cfg = run.get("config") if run else None
    changes = []
    if isinstance(old_cfg, dict):
        changes = describe_changes(config_parts(old_cfg)["scoring"], config_parts(cfg.to_dict())["scoring"])
    what = ("\n".join(f"  {c}" for c in changes) if changes else
            "  (run.json does not record the earlier config; the part files' fingerprints differ from this one's)")
    return (f"{output} holds rows scored with a different configuration ({n_stale} of {n_parts} part files). "
            f"Changed in the scoring part (split, frames, limits, file extensions, operators and their params):\n"
            f"{what}\n"
            f"Rows scored two ways must not be mixed. Write to a new --output, or re-run with --recompute to re-score "
            f"every source into this output (the rows scored the old way are replaced). Changes to decide:, "
            f"clustering:, stages: or captioning: alone need neither: they are re-applied to the stored scores.")


def _refit_needed(run: dict[str, Any] | None, cfg: PipelineConfig) -> bool:
    """Centroids fitted with another k, seed or sample size must be refitted, not reused."""
    old = ((run or {}).get("config") or {}).get("clustering") if run else None
    if not isinstance(old, dict) or not cfg.clustering.enabled:
        return False
    new = cfg.to_dict()["clustering"]
    return any(_canonical(old.get(k)) != _canonical(new.get(k)) for k in _CENTROID_KEYS)


def remove_stale(output: str | os.PathLike, plan: dict[str, Any]) -> int:
    """`--recompute`: delete the part files scored with another config (their sources are then processed again) and
    the centroids fitted on their embeddings. Returns the number of rows removed."""
    rows = 0
    for p in plan["stale_parts"]:
        rows += outfs.parquet_rows(p)
        outfs.remove(p)
    if plan["stale_parts"]:
        plan["refit_centroids"] = True
        log.info("--recompute: removed %d part files (%d rows) scored with another config; their sources are "
                 "processed again", len(plan["stale_parts"]), rows)
    return rows


# -- re-deciding stored rows ---------------------------------------------------------------------------------------


def redecide_table(table: pa.Table, rules: tuple[Rule, ...], keep_duplicate_reason: bool) -> tuple[pa.Table, int]:
    """`table` with `status` and `reject_reasons` recomputed from its stored scores by the graph's decide rules;
    returns it and the number of rows whose decision changed. Failed rows stay failed; with
    `keep_duplicate_reason`, a row marked `duplicate_of` keeps the reason the clustering pass gave it."""
    names = set(table.column_names)
    cols = [r.column for r in rules if r.column in names and r.column not in POST_GRAPH_COLUMNS]
    values = {c: table.column(c).to_pylist() for c in cols}
    status = table.column("status").to_pylist()
    reasons = table.column("reject_reasons").to_pylist() if "reject_reasons" in names else [None] * len(status)
    dups = table.column("duplicate_of").to_pylist() if keep_duplicate_reason and "duplicate_of" in names else None
    new_status, new_reasons, changed = [], [], 0
    for i, st in enumerate(status):
        if st == "failed":
            new_status.append(st)
            new_reasons.append(reasons[i])
            continue
        rs = reasons_for({c: values[c][i] for c in cols}, rules)
        if dups is not None and dups[i] is not None and DUPLICATE_REASON not in rs:
            rs.append(DUPLICATE_REASON)
        s = "rejected" if rs else "kept"
        changed += int(s != st or list(reasons[i] or []) != rs)
        new_status.append(s)
        new_reasons.append(rs)
    table = set_column(table, "status", pa.array(new_status, table.schema.field("status").type))
    rtype = table.schema.field("reject_reasons").type if "reject_reasons" in names else pa.list_(pa.string())
    table = set_column(table, "reject_reasons", pa.array(new_reasons, rtype))
    return table, changed


def redecide_manifest(output: str | os.PathLike, cfg: PipelineConfig, force: bool = False) -> dict[str, Any]:
    """Re-decide the stored rows of every part file decided with other rules (all of them with `force`), rewriting
    each such part atomically with the new decide fingerprint. No decoding: scores are read from the parts."""
    output = os.fspath(output)
    t0 = time.perf_counter()
    new = fingerprints(cfg)
    recorded = _recorded(read_run(output))
    keep_dup = cfg.clustering.enabled and cfg.clustering.reject_duplicates
    summary = {"parts": 0, "parts_redecided": 0, "rows_redecided": 0, "rows_changed": 0}
    for p in sample_parts(output):
        summary["parts"] += 1
        schema = outfs.parquet_schema(p)
        stamp = _part_stamp(p, schema)
        if not force and (stamp.get("decide") or recorded.get("decide")) == new["decide"]:
            continue
        if "scoring" not in stamp and recorded.get("scoring"):
            stamp["scoring"] = recorded["scoring"]  # what run.json says this legacy part was scored with
        stamp["decide"] = new["decide"]
        changes: list[int] = []

        def redecide(table: pa.Table, stamp: dict[str, str] = stamp) -> pa.Table:
            table, changed = redecide_table(table, cfg.decide, keep_dup)
            changes.append(changed)
            return table.replace_schema_metadata(_stamp(table.schema, stamp).metadata)

        table = rewrite_part(p, redecide)
        changed = changes[0]
        summary["parts_redecided"] += 1
        summary["rows_redecided"] += table.num_rows
        summary["rows_changed"] += changed
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    if summary["parts_redecided"]:
        log.info("decide: re-decided %d rows in %d part files from their stored scores (%d changed)",
                 summary["rows_redecided"], summary["parts_redecided"], summary["rows_changed"])
    return summary
