"""Start or join Ray, run the graph, print the counts: what `curation run` and `pipelines/pretrain_mix.py` share."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from curation.config import ConfigError, load_config
from curation.rayinit import init_ray

log = logging.getLogger(__name__)


def format_counts(summary: dict) -> str:
    """A short human-readable report of a run: counts per status, reason and error kind."""
    c = summary["counts"]
    lines = [
        f"output: {summary['output']}",
        f"sources: {summary['sources_listed']} listed, {summary['sources_processed']} processed, "
        f"{summary['sources_skipped_as_finished']} already finished, {summary['non_media_files_skipped']} non-media skipped",
        f"rows: {c['rows']}  " + "  ".join(f"{k}={v}" for k, v in c["status"].items()),
    ]
    if c["reject_reasons"]:
        lines.append("reject reasons: " + ", ".join(f"{k}: {v}" for k, v in c["reject_reasons"].items()))
    if c["errors"]:
        lines.append("errors: " + ", ".join(f"{k}: {v}" for k, v in c["errors"].items()))
    for name, st in (summary.get("stages") or {}).items():
        lines.append(f"stage {name}: {st['rows']} rows ({st['videos']} videos, {st['images']} images, "
                     f"{st['clusters']} clusters)")
    lines.append(f"time: {summary['timings_s']['total']:.1f} s")
    return "\n".join(lines)


def main_run(inputs: list[str], output: str, config: str, limit: int | None = None,
             address: str | None = None, progress_interval_s: float = 30.0, recompute: bool = False) -> int:
    """Validate the config, start/join Ray, run, write manifests and print the counts."""
    from curation.graph import plan
    from curation.run import run_pipeline
    from curation.manifest import OutputError, check_new_output
    from curation.models import ModelNotFoundError
    from curation.models import require as require_models
    from curation.resume import ResumeError, check_resume

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    missing = [i for i in inputs if "://" not in i and not Path(i).exists()]
    if missing:
        print(f"input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        # Before Ray starts: a wrong --output, a missing model or an output scored with another config costs a
        # second, not a cluster start-up.
        check_new_output(output)
        require_models(plan(cfg).models)
        check_resume(output, cfg, recompute=recompute)
        init_ray(address, quiet_logs=True)
        summary = run_pipeline(inputs, output, cfg, limit=limit, config_path=str(Path(config).resolve()),
                               progress_interval_s=progress_interval_s, recompute=recompute)
    except (OutputError, ModelNotFoundError, ResumeError) as exc:  # expected: one message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, ModelNotFoundError) else 2
    print(format_counts(summary))
    print(json.dumps({"counts": summary["counts"]}, sort_keys=True))
    return 0
