"""`curation heads train`: UnivFD-style linear heads on CLIP embeddings of two image folders."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
HEAD_FILES = {"synthetic": "synthetic-head", "watermark_head": "watermark-head", "nsfw_head": "nsfw-head"}


# -- curation heads train ----------------------------------------------------------------------------------------


def add_heads_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`curation heads train {synthetic,watermark_head,nsfw_head} --real DIR --fake DIR`."""
    p = subparsers.add_parser("heads", help="train linear heads on CLIP embeddings")
    sub = p.add_subparsers(dest="heads_cmd", required=True)
    t = sub.add_parser("train", help="train a linear probe (UnivFD-style) and report held-out average precision")
    t.add_argument("head", choices=sorted(HEAD_FILES))
    t.add_argument("--real", required=True, type=Path, help="folder of negative images (real / clean / safe)")
    t.add_argument("--fake", required=True, type=Path,
                   help="folder of positive images (synthetic / watermarked / nsfw)")
    t.add_argument("--out", type=Path, default=None, help="output .safetensors (default: the registry path)")
    t.add_argument("--model-dir", default=None, help="model cache (default $CURATION_MODEL_DIR)")
    t.add_argument("--arch", default="ViT-L-14")
    t.add_argument("--weights", default="clip-vit-l-14", help="registry key or file; 'none' = random (tests only)")
    t.add_argument("--allow-random-weights", action="store_true", help=argparse.SUPPRESS)
    t.add_argument("--device", default="auto")
    t.add_argument("--batch-images", type=int, default=64)
    t.add_argument("--test-size", type=float, default=0.25)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_heads)
    return p


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted (recursive)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def embed_images(paths: list[Path], arch: str, weights: str | None, device: str = "auto", batch_images: int = 64,
                 model_dir: str | None = None) -> np.ndarray:
    """Raw (unnormalised) CLIP image embeddings (N, 768) of image files, through the operator's backbone path."""
    from PIL import Image

    from curation import models
    from operators.models.clip import ClipBackbone

    weights_path = weights
    if weights and "/" not in weights:
        weights_path = str(models.require([weights], model_dir)[weights])
    bb = ClipBackbone(arch=arch, weights_path=weights_path, device=device, batch_images=batch_images)
    bb.load()
    out = []
    for s in range(0, len(paths), batch_images):
        frames = []
        for p in paths[s:s + batch_images]:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB"))[None])
        out.extend(e[0] for e in bb.embed(frames))
    return np.stack(out).astype(np.float32)


def train_probe(x: np.ndarray, y: np.ndarray, test_size: float = 0.25, seed: int = 0):
    """Logistic-regression probe on unnormalised embeddings; held-out average precision, then refit on all."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.model_selection import train_test_split

    from operators.models.heads import LinearHead

    tr, te = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(x[tr], y[tr])
    ap = float(average_precision_score(y[te], clf.predict_proba(x[te])[:, 1]))
    prevalence = float(np.mean(y[te]))  # the AP of a random scorer
    final = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    head = LinearHead(weight=final.coef_[0].astype(np.float32), bias=float(final.intercept_[0]), normalize=False)
    metrics = {"heldout_average_precision": ap, "heldout_positive_rate": prevalence, "n_train": int(len(tr)),
               "n_heldout": int(len(te)), "refit_on": "all images"}
    return head, metrics


def run_heads(args: argparse.Namespace) -> int:
    """Embed the two folders, train the probe, report held-out AP, save safetensors."""
    from curation import models
    from operators.models.heads import save_linear_head

    real, fake = list_images(args.real), list_images(args.fake)
    if len(real) < 4 or len(fake) < 4:
        print(f"need ≥ 4 images in each folder, got {len(real)} real / {len(fake)} fake", file=sys.stderr)
        return 2
    weights = None if str(args.weights).lower() == "none" else args.weights
    if weights is None and not args.allow_random_weights:
        print("--weights none trains on random features; refusing (tests use --allow-random-weights)",
              file=sys.stderr)
        return 2
    x = embed_images(real + fake, args.arch, weights, args.device, args.batch_images, args.model_dir)
    y = np.array([0] * len(real) + [1] * len(fake))
    head, metrics = train_probe(x, y, args.test_size, args.seed)
    key = HEAD_FILES[args.head]
    out = args.out or models.model_dir(args.model_dir) / key / models.spec(key).files[0]
    head.meta = {"head": args.head, "backbone": f"{args.arch}:{weights}", "input": "unnormalised image embedding",
                 "n_negative": len(real), "n_positive": len(fake), **metrics}
    save_linear_head(out, head)
    print(json.dumps({"saved": str(out), **metrics}, indent=1))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `heads` to the `curation` command."""
    add_heads_parser(subparsers)
