"""`curation samples make DIR --seed N`: the labeled sample set (generator in `curation.testing.samples`)."""

from __future__ import annotations

import argparse


def _cmd_samples_make(args: argparse.Namespace) -> int:
    from curation.testing.samples import make_samples  # test-data generator: imported only by this verb

    labels = make_samples(args.dir, seed=args.seed)
    print(f"wrote {len(labels)} labeled files to {args.dir} (labels.parquet)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `samples make` to the `curation` command."""
    s = sub.add_parser("samples", help="labeled sample data")
    ssub = s.add_subparsers(dest="samples_command", required=True)
    sm = ssub.add_parser("make", help="generate the labeled sample set into DIR")
    sm.add_argument("dir")
    sm.add_argument("--seed", type=int, default=0)
    sm.set_defaults(func=_cmd_samples_make)
