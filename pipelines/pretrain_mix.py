"""Entry script for `ray job submit -- python pipelines/pretrain_mix.py --input ... --output ...`.

Without a cluster (no RAY_ADDRESS, no --address) it starts a local Ray; under `ray job submit` it runs on that cluster.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the working directory is the project root; make it importable even where
# the project is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.cli.run import add_run_arguments  # noqa: E402
from curation.runner import main_run  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "pretrain_mix.yaml"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the curation graph."""
    p = argparse.ArgumentParser(description="Wan-style curation: sources -> clips -> scores -> manifests")
    add_run_arguments(p, DEFAULT_CONFIG)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return main_run(args.input, args.output, args.config, args.limit, args.address,
                    progress_interval_s=args.progress_interval, recompute=args.recompute)


if __name__ == "__main__":
    sys.exit(main())
