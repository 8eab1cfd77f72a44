"""`curation label OUT`: serve the annotation set of a run on a local web page and print its URL."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from curation.label.server import LOOPBACK, LabelApp, LabelServer, new_token


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`curation label OUT [--annotations P] [--host H] [--port N] [--token T]`."""
    p = subparsers.add_parser("label", help="label an annotation set 1-5 on a local web page (prints its URL)")
    p.add_argument("output", type=Path, help="the run's output folder")
    p.add_argument("--annotations", type=Path, default=None,
                   help="annotation set (default: OUTPUT/annotation/annotations.parquet, from `curation scorer "
                        "sample`)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs a token, generated if not given)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token", default=None, help="token the page and API require (default: none on loopback, a "
                   "random one otherwise)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; labels are on disk as they are made, so stopping loses nothing."""
    from curation.manifest import require_output

    if args.annotations is None:
        require_output(args.output, "label")  # a mistyped OUT: one clear message
    annotations = args.annotations or args.output / "annotation" / "annotations.parquet"
    token = args.token
    if args.host not in LOOPBACK and not token:
        token = new_token()
    app = LabelApp(annotations, token=token, loopback_only=args.host in LOOPBACK)
    server = LabelServer(app, args.host, args.port).start()
    print(f"labelling {len(app.cards)} rows of {annotations}")
    print(f"labels: {app.store.events_path} (event log) -> {app.store.labels_path}")
    print(f"then:   curation scorer train --annotations {app.store.labels_path}")
    print(f"open:   {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.stop()
    return 0
