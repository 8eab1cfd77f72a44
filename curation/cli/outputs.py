"""`curation summary|report|caption|decide OUTPUT`: read an output written earlier, or re-run one of its passes
through `curation.run` (captioning, deciding, the report)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from curation.cli.run import DEFAULT_CONFIG


def _cmd_summary(args: argparse.Namespace) -> int:
    from curation.manifest import output_summary, require_output

    print(json.dumps(output_summary(require_output(args.output, "summary")), indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from curation.manifest import require_output
    from curation.run import report_pass

    print(report_pass(require_output(args.output, "report"), max_examples=args.examples))
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from curation.config import load_config
    from curation.manifest import require_output, sample_parts
    from curation.models import REGISTRY
    from curation.run import caption_output, check_models
    from curation.rayinit import init_ray

    cfg = load_config(args.config)
    require_output(args.output, "caption")
    if not sample_parts(args.output):
        print(f"error: {args.output}/samples/ has no part files: nothing to caption", file=sys.stderr)
        return 2
    if cfg.captioning.model in REGISTRY:
        check_models([cfg.captioning.model])  # missing weights: one message with how to get them, before Ray starts
    init_ray(args.address, quiet_logs=True)
    print(json.dumps(caption_output(args.output, cfg), indent=2))
    return 0


def _decide(output: str, config: str, address: str | None = None) -> int:
    """`curation decide`: validate, refuse a mismatched output before Ray starts, re-decide, print the counts."""
    from curation.config import load_config
    from curation.manifest import require_output, sample_parts
    from curation.resume import ResumeError, check_resume
    from curation.run import decide_output

    cfg = load_config(config)  # ConfigError: the CLI prints it
    require_output(output, "decide")  # OutputError (not a pipeline output): the CLI prints it
    if not sample_parts(output):
        print(f"error: {output}/samples/ has no part files: not a pipeline output, or nothing written yet",
              file=sys.stderr)
        return 2
    try:
        check_resume(output, cfg)
    except ResumeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.clustering.enabled:  # the duplicate marks are re-derived by clustering's Ray pass
        from curation.rayinit import init_ray

        init_ray(address)
    run = decide_output(output, cfg, config_path=str(Path(config).resolve()))
    d = run["decide_pass"]
    print(f"re-decided {d['rows_redecided']} rows in {d['parts_redecided']} part files from their stored scores "
          f"({d['rows_changed']} decisions changed)")
    for name, st in (run.get("stages") or {}).items():
        print(f"stage {name}: {st['rows']} rows")
    print(json.dumps({"counts": run["counts"]}, sort_keys=True))
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    return _decide(args.output, args.config, args.address)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `summary`, `report`, `caption` and `decide` to the `curation` command."""
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

    d = sub.add_parser("decide", help="re-decide every row of OUTPUT from its stored scores with the config's decide: "
                       "thresholds (no decoding), then redo duplicate marking, stage mixes, run.json and the report")
    d.add_argument("output")
    d.add_argument("--config", required=True, help="pipeline YAML whose decide:, clustering: and stages: apply (its "
                   "scoring part must match the one the output was scored with)")
    d.add_argument("--address", default=None, help="Ray cluster address for the clustering pass (default: "
                   "$RAY_ADDRESS or local)")
    d.set_defaults(func=_cmd_decide)
