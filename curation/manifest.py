"""Manifest I/O (docs/ARCHITECTURE.md, "Outputs"): atomic Parquet parts, resume by source, and run.json.

A part file appears only when complete (written under a hidden temporary name, then renamed; on an object store, in
one PUT: `curation/outfs.py`), and a source's rows
are only ever written together, all clips of it in one part. So every `source_uri` present in `samples/` is finished,
and a re-run skips exactly those.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads

from curation import outfs

SAMPLES = "samples"
STAGES = "stages"


def part_files(directory: str | os.PathLike) -> list[str]:
    """Completed part files of a manifest directory, as locations (temporary files are hidden and ignored).
    The one place that lists part files: every pass and verb goes through here (or `sample_parts`)."""
    return outfs.list_files(directory, "part-*.parquet")


def sample_parts(output: str | os.PathLike) -> list[str]:
    """Completed part files of an output's `samples/` (the rows every later pass reads and rewrites)."""
    return part_files(outfs.join(output, SAMPLES))


def rewrite_part(path: str, change: Callable[[pa.Table], pa.Table]) -> pa.Table:
    """Read one part file, apply `change` to its table and write the result back atomically (readers see the old
    file or the new one, never half of one); return the new table. What every post-pass uses to update rows."""
    table = change(outfs.read_parquet(path))
    write_table_atomic(table, path)
    return table


def read_manifest(directory: str | os.PathLike, columns: list[str] | None = None, *, exclude: tuple[str, ...] = (),
                  only_existing: bool = False, filter: Any = None) -> pa.Table:
    """All completed parts of a manifest directory (local or on an object store) as one table.

    `columns`: which to read (all by default), minus `exclude`; with `only_existing`, names the manifest lacks are
    skipped instead of being an error. `filter`: a pyarrow.dataset expression applied while reading, so that e.g.
    only kept rows are ever materialised."""
    files = part_files(directory)
    if not files:
        return pa.table({})
    paths, fs = outfs.arrow_paths(files)
    ds = pads.dataset(paths, format="parquet", filesystem=fs)
    if columns is None and exclude:
        columns = ds.schema.names
    if columns is not None:
        columns = [c for c in columns if c not in exclude and (not only_existing or c in ds.schema.names)]
    return ds.to_table(columns=columns, filter=filter)


def finished_sources(output: str | os.PathLike) -> set[str]:
    """Sources whose rows are already written under `output/samples/` (a re-run skips them)."""
    t = read_manifest(outfs.join(output, SAMPLES), columns=["source_uri"])
    if t.num_rows == 0:
        return set()
    return set(t.column("source_uri").unique().to_pylist())


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    """`table` with column `name` replaced by `values` (same position and field metadata), or appended."""
    if name in table.column_names:
        i = table.column_names.index(name)
        field = table.schema.field(i)
        return table.set_column(i, pa.field(name, values.type, field.nullable, field.metadata), values)
    return table.append_column(name, values)


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a zstd Parquet file that appears whole (temporary name + fsync + rename; one PUT on object stores)."""
    outfs.write_parquet(table, path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write JSON that appears whole (temporary name + rename; one PUT on object stores)."""
    outfs.write_json(obj, path)


class SampleWriter:
    """Collects rows as they stream out of the graph and writes whole sources into atomic part files."""

    def __init__(self, output: str | os.PathLike, schema: pa.Schema, rows_per_file: int,
                 flush_interval_s: float = 120.0) -> None:
        self.dir = outfs.join(output, SAMPLES)
        outfs.makedirs(self.dir)
        self.schema = schema
        self.rows_per_file = rows_per_file
        # A part is also written when finished rows have waited this long, so a crash hours into a slow run
        # loses minutes of work, not a whole part's worth.
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self.run_tag = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self._pending: dict[str, list[dict]] = defaultdict(list)  # source -> rows seen so far
        self._ready: list[dict] = []  # rows of complete sources, not yet written
        self._seq = 0
        self.sources_written = 0
        self.rows_written = 0
        self.files: list[str] = []

    def add_table(self, table: pa.Table) -> None:
        """Take a batch of finished rows; flush a part whenever enough complete sources are ready."""
        for row in table.to_pylist():
            src = row["source_uri"]
            rows = self._pending[src]
            rows.append(row)
            if len(rows) >= int(row.get("clips_in_source") or 1):
                self._ready.extend(self._pending.pop(src))
                self.sources_written += 1
                if len(self._ready) >= self.rows_per_file:
                    self.flush()
        if self._ready and time.monotonic() - self._last_flush > self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Write the rows of complete sources as one part file."""
        if not self._ready:
            return
        table = pa.Table.from_pylist(self._ready, schema=self.schema)
        name = f"part-{self.run_tag}-{self._seq:05d}.parquet"
        write_table_atomic(table, outfs.join(self.dir, name))
        self.files.append(name)
        self._seq += 1
        self.rows_written += len(self._ready)
        self._ready = []
        self._last_flush = time.monotonic()

    def close(self) -> dict[str, int]:
        """Flush what is complete; report sources whose clips never all arrived (a bug if non-zero)."""
        self.flush()
        incomplete = {src: len(rows) for src, rows in self._pending.items()}
        return incomplete


def error_kind(error: Any) -> str:
    """The kind an `error` is counted under: the text before its first colon (`ProbeError: ...` -> `ProbeError`)."""
    return str(error).split(":", 1)[0] if error else "unknown"


def counts(output: str | os.PathLike) -> dict[str, Any]:
    """Counts per status and per reject reason over the whole `samples/` manifest."""
    t = read_manifest(outfs.join(output, SAMPLES), columns=["source_uri", "status", "reject_reasons", "error"])
    if t.num_rows == 0:
        return {"rows": 0, "sources": 0, "status": {}, "reject_reasons": {}, "errors": {}}
    df = t.to_pandas()
    reasons: dict[str, int] = defaultdict(int)
    for rr in df.loc[df["status"] == "rejected", "reject_reasons"]:
        for r in rr if rr is not None else []:
            reasons[r] += 1
    errors: dict[str, int] = defaultdict(int)
    for e in df.loc[df["status"] == "failed", "error"]:
        errors[error_kind(e)] += 1
    return {
        "rows": int(len(df)),
        "sources": int(df["source_uri"].nunique()),
        "status": {k: int(v) for k, v in df["status"].value_counts().sort_index().items()},
        "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "errors": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


class OutputError(ValueError):
    """A folder named as a pipeline output is not one, or an `--output` cannot be one."""


RUN_JSON = "run.json"


def require_output(output: str | os.PathLike, verb: str = "this command") -> Path | str:
    """`output` (a Path; on an object store its URL) when it holds a pipeline output (run.json and samples/); else
    OutputError saying what is missing, so that a mistyped path is one clear message instead of zero counts, an
    empty page or a traceback."""
    if outfs.is_url(output):
        out: Path | str = os.fspath(output)
        has_run = outfs.is_file(outfs.join(out, RUN_JSON))
        has_samples = bool(sample_parts(out))  # an object store has no empty folders
    else:
        out = Path(output)
        if not out.exists():
            raise OutputError(f"{out}: no such folder ({verb} needs the --output folder of a `curation run`)")
        if not out.is_dir():
            raise OutputError(f"{out}: a file, not a pipeline output folder")
        has_run, has_samples = (out / RUN_JSON).is_file(), (out / SAMPLES).is_dir()
    if not has_run and not has_samples:
        raise OutputError(f"{out}: not a pipeline output (no {RUN_JSON}, no {SAMPLES}/): {verb} needs the --output "
                          "folder of a `curation run`")
    if not has_samples:
        raise OutputError(f"{out}: {RUN_JSON} but no {SAMPLES}/ folder: the manifests are gone or were moved")
    if not has_run:
        raise OutputError(f"{out}: {SAMPLES}/ but no {RUN_JSON}: the run did not finish; run it again with the same "
                          "--output to resume it")
    return out


def check_new_output(output: str | os.PathLike) -> None:
    """Refuse, before Ray starts, an `--output` that cannot become an output folder (an existing file, or a path
    under one)."""
    if "://" in str(output) and not str(output).startswith("file://"):
        return  # object storage: nothing to check locally
    out = Path(str(output)[len("file://"):] if str(output).startswith("file://") else output)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise OutputError(f"--output {out}: {'is' if p == out else f'is under {p}, which is'} a file, not a "
                              "folder")
        if p.exists():
            break


def output_summary(output: str | os.PathLike) -> dict[str, Any]:
    """What `curation summary` prints: the counts, the near-duplicates and the size of each stage mix on disk."""
    out = os.fspath(output)
    result: dict[str, Any] = counts(out)
    samples = outfs.join(out, SAMPLES)
    files = part_files(samples)
    paths, fs = outfs.arrow_paths(files)
    if files and "duplicate_of" in pads.dataset(paths, format="parquet", filesystem=fs).schema.names:
        t = read_manifest(samples, ["status", "duplicate_of", "reject_reasons"]).to_pandas()
        dup = t["duplicate_of"].notna()
        rejected = int(sum(1 for rr in t.loc[dup, "reject_reasons"] if rr is not None and "duplicate_of" in list(rr)))
        result["duplicates"] = {"rows": int(dup.sum()), "rejected_as_duplicate": rejected,
                                "kept": int((dup & (t["status"] == "kept")).sum())}
    else:
        result["duplicates"] = None  # clustering did not run: near-duplicates were never looked for
    stages: dict[str, Any] = {}
    for folder in outfs.list_dirs(outfs.join(out, STAGES)):
        name = outfs.name(folder)
        t = read_manifest(folder, ["media_type", "duration_s"], only_existing=True)
        df = t.to_pandas() if t.num_columns else None
        if df is None or not len(df):
            stages[name] = {"rows": 0, "videos": 0, "images": 0, "video_hours": 0.0}
            continue
        video = df["media_type"] == "video"
        stages[name] = {"rows": int(len(df)), "videos": int(video.sum()), "images": int((~video).sum()),
                               "video_hours": round(float(df.loc[video, "duration_s"].sum()) / 3600.0, 4)}
    result["stages"] = stages
    return result
