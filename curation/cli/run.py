"""`curation run`: the graph and the passes after it (`curation.runner.main_run`, as `pipelines/pretrain_mix.py`)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "demo.yaml"


def _cmd_run(args: argparse.Namespace) -> int:
    from curation.runner import main_run

    return main_run(args.input, args.output, args.config, args.limit, args.address,
                    progress_interval_s=args.progress_interval, recompute=args.recompute)


def add_run_arguments(p: argparse.ArgumentParser, default_config: Path) -> None:
    """The flags of a curation run, shared by `curation run` and `pipelines/pretrain_mix.py`."""
    p.add_argument("--input", action="append", required=True, help="directory, file or URI (repeatable)")
    p.add_argument("--output", required=True, help="output directory for manifests")
    p.add_argument("--config", default=str(default_config), help=f"pipeline YAML (default: {default_config.name})")
    p.add_argument("--limit", type=int, default=None, help="process at most N sources")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    p.add_argument("--progress-interval", type=float, default=30.0, metavar="S",
                   help="log sources done/total, rows/s and ETA every S seconds (default 30; 0: off)")
    p.add_argument("--recompute", action="store_true", help="re-score rows the output holds from another scoring "
                   "config (split, frames, limits, operators) instead of refusing to mix them")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `run` to the `curation` command."""
    r = sub.add_parser("run", help="run the curation graph (local Ray unless RAY_ADDRESS/--address is set)")
    add_run_arguments(r, DEFAULT_CONFIG)
    r.set_defaults(func=_cmd_run)
