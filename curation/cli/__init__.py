"""The `curation` command: run the graph, make sample data, inspect and re-pass outputs, manage models and heads.

One module per command family: `run` (the graph and the passes after it), `outputs` (summary, report, caption,
decide on an output written earlier), `samples`, `scorer`, `heads`, `models`; the captioner adds its own
(`captioner.cli`: visual-text, rewrite). Each has `add_parser(subparsers)`, which sets `func` on the parsed args.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from curation.errors import ConfigError

# Command modules in the order `curation --help` lists them.
COMMAND_MODULES = ("curation.cli.run", "curation.cli.samples", "curation.cli.outputs", "curation.cli.heads",
                   "curation.cli.scorer", "curation.cli.models", "captioner.cli", "curation.label.cli")


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
    root = Path(__file__).resolve().parents[2]
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
    p = argparse.ArgumentParser(prog="curation", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action=_VersionAction, help="print the version (and git commit) and exit")
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `curation` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from curation.cli.scorer import AnnotationError
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
