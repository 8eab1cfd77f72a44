"""The `curation` command: run the graph, make sample data, inspect manifests, manage models and heads."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from curation.config import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "pipelines" / "configs" / "demo.yaml"


def _cmd_run(args: argparse.Namespace) -> int:
    from curation.runner import main_run

    return main_run(args.input, args.output, args.config, args.limit, args.address,
                    progress_interval_s=args.progress_interval, recompute=args.recompute)


def _cmd_samples_make(args: argparse.Namespace) -> int:
    from curation.samples import make_samples

    labels = make_samples(args.dir, seed=args.seed)
    print(f"wrote {len(labels)} labeled files to {args.dir} (labels.parquet)")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from curation.manifest import output_summary, require_output

    print(json.dumps(output_summary(require_output(args.output, "summary")), indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from curation.manifest import require_output
    from curation.report import build_report

    print(build_report(require_output(args.output, "report"), max_examples=args.examples))
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from captioner.manifest import caption_existing_run
    from curation.config import load_config
    from curation.graph import _check_models
    from curation.manifest import require_output
    from curation.models import REGISTRY
    from curation.runner import init_ray

    cfg = load_config(args.config)
    require_output(args.output, "caption")
    from curation import outfs
    from curation.manifest import part_files

    if not part_files(outfs.join(args.output, "samples")):
        print(f"error: {args.output}/samples/ has no part files: nothing to caption", file=sys.stderr)
        return 2
    if cfg.captioning.model in REGISTRY:
        _check_models([cfg.captioning.model])  # missing weights: one message with how to get them, before Ray starts
    init_ray(args.address, quiet_logs=True)
    print(json.dumps(caption_existing_run(args.output, cfg), indent=2))
    return 0


def _add_decide_parser(sub: argparse._SubParsersAction) -> None:
    """`curation decide OUT --config C`: re-apply the config's `decide:` to the stored scores (curation/resume.py)."""
    d = sub.add_parser("decide", help="re-decide every row of OUTPUT from its stored scores with the config's decide: "
                       "thresholds (no decoding), then redo duplicate marking, stage mixes, run.json and the report")
    d.add_argument("output")
    d.add_argument("--config", required=True, help="pipeline YAML whose decide:, clustering: and stages: apply (its "
                   "scoring part must match the one the output was scored with)")
    d.add_argument("--address", default=None, help="Ray cluster address for the clustering pass (default: "
                   "$RAY_ADDRESS or local)")

    def run(args: argparse.Namespace) -> int:
        from curation.resume import main_decide

        return main_decide(args.output, args.config, args.address)

    d.set_defaults(func=run)


def _add_optional(sub: argparse._SubParsersAction, module: str) -> None:
    """Let a feature module add its own sub-commands (models, heads, scorer) when it is installed."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    if hasattr(mod, "add_parser"):
        mod.add_parser(sub)


class _VersionAction(argparse.Action):
    """`--version`: computed only when asked (it may run git), then exit."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {version_string()}")
        parser.exit()


def version_string() -> str:
    """The installed project's version, plus the git commit when the code runs from a checkout."""
    import subprocess
    from importlib import metadata

    try:
        version = metadata.version("wan-curation")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    commit = ""
    if (root / "pyproject.toml").is_file():  # a checkout (editable install), not a wheel in site-packages
        try:
            commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                    text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return f"{version} (git {commit})" if commit else version


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `curation` command."""
    p = argparse.ArgumentParser(prog="curation", description=__doc__)
    p.add_argument("--version", action=_VersionAction, help="print the version (and git commit) and exit")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the curation graph (local Ray unless RAY_ADDRESS/--address is set)")
    r.add_argument("--input", action="append", required=True, help="directory, file or URI (repeatable)")
    r.add_argument("--output", required=True, help="output directory for manifests")
    r.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline YAML (default: demo.yaml)")
    r.add_argument("--limit", type=int, default=None, help="process at most N sources")
    r.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    r.add_argument("--progress-interval", type=float, default=30.0, metavar="S",
                   help="log sources done/total, rows/s and ETA every S seconds (default 30; 0: off)")
    r.add_argument("--recompute", action="store_true", help="re-score rows the output holds from another scoring "
                   "config (split, frames, limits, operators) instead of refusing to mix them")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("samples", help="labeled sample data")
    ssub = s.add_subparsers(dest="samples_command", required=True)
    sm = ssub.add_parser("make", help="generate the labeled sample set into DIR")
    sm.add_argument("dir")
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(func=_cmd_samples_make)

    c = sub.add_parser("summary", help="counts per status and reason of an output directory")
    c.add_argument("output")
    c.set_defaults(func=_cmd_summary)

    rp = sub.add_parser("report", help="(re)write OUTPUT/report.html: counts, score plots, thumbnails")
    rp.add_argument("output")
    rp.add_argument("--examples", type=int, default=6, help="thumbnails per reject reason / section")
    rp.set_defaults(func=_cmd_report)

    cp = sub.add_parser("caption", help="caption the kept rows of an OUTPUT written earlier (the config's "
                        "captioning: section), then rewrite its stage mixes and report")
    cp.add_argument("output")
    cp.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline YAML whose captioning:, stages: and "
                    "limits: apply (default: demo.yaml)")
    cp.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    cp.set_defaults(func=_cmd_caption)

    _add_decide_parser(sub)
    _add_optional(sub, "curation.heads_cli")
    _add_optional(sub, "captioner.cli")  # visual-text make, rewrite
    _add_optional(sub, "curation.label.cli")  # label OUT: the labelling page
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `curation` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from curation.heads_cli import AnnotationError
    from curation.manifest import OutputError
    from curation.models import ModelNotFoundError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except (OutputError, AnnotationError) as exc:  # expected errors: one message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModelNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
