"""The captioner's `curation` sub-commands: `visual-text make` (synthetic text images) and `rewrite` (prompt
rewriting); registered by curation/cli/__init__.py through `add_parser`."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_visual_text_make(args: argparse.Namespace) -> int:
    from captioner.visual_text.make import load_config, make_visual_text
    from curation.manifest import check_new_output
    from curation.rayinit import init_ray

    from curation.errors import ConfigError

    if args.n < 1:  # before Ray starts (make_visual_text checks it too, for callers of the function)
        raise ConfigError(f"--n: expected at least 1 sample, got {args.n}")
    cfg = load_config(args.config)
    check_new_output(args.out)  # an OUT that is a file: one message before Ray starts
    init_ray(args.address, quiet_logs=True)
    summary = make_visual_text(args.out, args.n, seed=args.seed, cfg=cfg)
    brief = {k: summary[k] for k in ("n", "rendered", "kept", "dropped_ocr", "failed", "mean_char_accuracy_kept",
                                     "renders_per_s")}
    print(json.dumps(brief, indent=2, ensure_ascii=False))
    print(f"manifest: {args.out}/samples; stage: {summary['stage']['dir']}; per-font and per-size kept shares: "
          f"{args.out}/run.json")
    return 0


def _cmd_rewrite(args: argparse.Namespace) -> int:
    from captioner.rewrite import RewriteConfig, read_prompts, rewrite_file

    cfg = RewriteConfig(model=args.model, language=args.language, batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens, retries=args.retries, device=args.device,
                        dtype=args.dtype)
    try:
        prompts = read_prompts(args.prompts)
    except (OSError, ValueError) as exc:  # no such file, not JSONL, no prompts: one line, before a model loads
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = rewrite_file(prompts, args.out, cfg)
    bad = [r for r in results if not r.ok]
    print(f"wrote {len(results)} rewrites to {args.out} ({len(bad)} rejected)")
    for r in bad[:5]:
        print(f"rejected: {r.prompt!r}: {r.error}", file=sys.stderr)
    return 1 if bad and args.strict else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `visual-text` and `rewrite` to the `curation` command."""
    vt = sub.add_parser("visual-text", help="synthetic visual-text data (rendered Chinese/English text images)")
    vsub = vt.add_subparsers(dest="visual_text_command", required=True)
    mk = vsub.add_parser("make", help="render N text images into OUT (manifest, images, stage folder, run.json)")
    mk.add_argument("out")
    mk.add_argument("--n", type=int, required=True, help="renders to attempt (the OCR gate drops some)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--config", default=None, help="YAML with a visual_text: section (default: built-in defaults)")
    mk.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local)")
    mk.set_defaults(func=_cmd_visual_text_make)

    rw = sub.add_parser("rewrite", help="rewrite short prompts into training-caption style with an instruct LLM")
    rw.add_argument("--prompts", required=True, help="a text file (one prompt a line) or JSONL with a `prompt` key")
    rw.add_argument("--out", required=True, help="output JSONL: prompt, rewrite, language, ok, attempts, error")
    rw.add_argument("--model", default="qwen2.5-7b-instruct", help="registry key or a local model folder")
    rw.add_argument("--language", default="auto", help="auto (the prompt's language), en or zh")
    rw.add_argument("--batch-size", type=int, default=16)
    rw.add_argument("--max-new-tokens", type=int, default=256)
    rw.add_argument("--retries", type=int, default=1, help="retries of a rewrite that fails a check")
    rw.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    rw.add_argument("--dtype", default="bfloat16")
    rw.add_argument("--strict", action="store_true", help="exit 1 when any prompt was rejected")
    rw.set_defaults(func=_cmd_rewrite)
