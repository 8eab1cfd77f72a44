"""Safety: no unsafe deserialisation or shell in the project's code, weights saved as safetensors, output paths
that no input name can steer, a decoder channel that unpickles nothing, and a cluster config that exposes no
Ray port to the internet."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import ROOT
from curation.typed import load_yaml_file

SOURCE_DIRS = ("curation", "operators", "trainer", "captioner", "pipelines")

# Every exception to the rules below, with the reason it is safe. A new hit fails the test until it is either fixed
# or listed here with a reason.
ALLOWED = {
    # Optimizer state through torch.distributed.checkpoint: DCP unpickles its `.metadata` file. Only checkpoints the
    # user's own training run wrote are loaded (trainer resume); model weights themselves are safetensors.
    ("trainer/components/checkpoint.py", "dcp.load"),
}


def _source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str):
    for k in node.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(v) -> bool:
    return isinstance(v, ast.Constant) and v.value is True


def unsafe_calls(path: Path) -> list[tuple[str, int, str]]:
    """(name, line, why) for every call in `path` that can run code from data or a shell."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"):
                    hits.append((f"import {m}", node.lineno, "a pickle-family module"))
            continue
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        last = name.rsplit(".", 1)[-1]
        if re.fullmatch(r"(pickle|cPickle|dill|cloudpickle|joblib|marshal)\.loads?", name) or name.endswith(
                ("read_pickle", "unsafe_load")):
            hits.append((name, node.lineno, "unpickles"))
        elif name.endswith("torch.load"):
            if not _is_true(_kw(node, "weights_only")):
                hits.append((name, node.lineno, "torch.load without weights_only=True"))
        elif name in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
            hits.append((name, node.lineno, "np.load(allow_pickle=True)"))
        elif name == "yaml.load":
            loader = _kw(node, "Loader")
            if loader is None or "Safe" not in ast.unparse(loader):
                hits.append((name, node.lineno, "yaml.load without SafeLoader"))
        elif name.endswith("hub.load"):
            hits.append((name, node.lineno, "torch.hub.load runs repository code"))
        elif name in ("dcp.load", "torch.distributed.checkpoint.load"):
            hits.append((name, node.lineno, "DCP unpickles its metadata"))
        elif name in ("eval", "exec", "os.system", "os.popen"):
            hits.append((name, node.lineno, "runs strings as code"))
        if _is_true(_kw(node, "trust_remote_code")):
            hits.append((name, node.lineno, "trust_remote_code=True runs code from a model repository"))
        if _is_true(_kw(node, "shell")):
            hits.append((name, node.lineno, "shell=True"))
        if last == "save" and name.startswith("torch"):
            hits.append((name, node.lineno, "torch.save writes a pickle (use safetensors)"))
    return hits


def test_no_unsafe_deserialisation_or_shell_in_project_code():
    found = []
    for path in _source_files():
        rel = path.relative_to(ROOT).as_posix()
        for name, line, why in unsafe_calls(path):
            if (rel, name) not in ALLOWED:
                found.append(f"{rel}:{line}: {name} ({why})")
    assert not found, "unsafe calls:\n" + "\n".join(found)


def test_the_checker_catches_what_it_claims(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle, torch, numpy as np, yaml, subprocess\n"
        "pickle.loads(b'')\n"
        "torch.load('x.pt')\n"
        "torch.load('x.pt', weights_only=False)\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "yaml.load(open('c.yaml'))\n"
        "subprocess.run('ls', shell=True)\n"
        "torch.save({}, 'x.pt')\n"
        "AutoModel.from_pretrained('r', trust_remote_code=True)\n"
    )
    good = tmp_path / "good.py"
    good.write_text(
        "import torch, numpy as np, yaml\n"
        "torch.load('x.pt', map_location='cpu', weights_only=True)\n"
        "np.load('x.npy', allow_pickle=False)\n"
        "yaml.safe_load('a: 1')\n"
        "yaml.load('a: 1', Loader=yaml.SafeLoader)\n"
    )
    assert len(unsafe_calls(bad)) == 9
    assert unsafe_calls(good) == []


def test_allowlist_is_not_stale():
    present = {(p.relative_to(ROOT).as_posix(), n) for p in _source_files() for n, _, _ in unsafe_calls(p)}
    assert ALLOWED <= present, f"allowed but no longer present (remove from ALLOWED): {ALLOWED - present}"


def test_heads_and_checkpoints_are_safetensors(tmp_path):
    """What the project writes for weights loads without unpickling: safetensors files (8-byte header length +
    JSON header + raw tensors)."""
    import torch
    from safetensors import safe_open

    from operators.models.heads import LinearHead, load_linear_head, save_linear_head
    from trainer.components.checkpoint import latest_checkpoint, save_checkpoint

    head = save_linear_head(tmp_path / "head.safetensors", LinearHead(weight=np.ones(4, np.float32), bias=0.5))
    ckpt = save_checkpoint(str(tmp_path / "ckpt"), 3, {"model": torch.nn.Linear(4, 2)}, {}, {"note": "x"})
    assert latest_checkpoint(str(tmp_path / "ckpt")) == ckpt
    weights = [head, *sorted(Path(ckpt).glob("*.safetensors"))]
    assert len(weights) == 2
    for f in weights:
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = raw[8:8 + n].decode("utf-8")
        assert header.lstrip().startswith("{")  # JSON, not a pickle stream (which starts with b"\x80")
        with safe_open(str(f), framework="numpy") as sf:
            assert list(sf.keys())
    assert load_linear_head(head).bias == 0.5
    assert not list(Path(ckpt).glob("*.pt")) and not list(Path(ckpt).glob("*.pth"))


HOSTILE_URIS = ["/data/../../etc/passwd.mp4", "../../../../tmp/evil.mp4", "/x/new\nline.mp4", "/x/quo'te\".mp4",
                "/x/$(touch pwned).mp4", "s3://bucket/..%2f..%2fetc%2fpasswd.mp4", "/x/" + "a" * 300 + ".mp4"]


def test_part_files_are_named_by_the_writer_not_by_inputs(tmp_path):
    from curation.manifest import SampleWriter
    from curation.schema import base_schema, failed_row

    out = tmp_path / "out"
    w = SampleWriter(out, base_schema(), rows_per_file=2)
    rows = [failed_row(u, "x") for u in HOSTILE_URIS]
    w.add_table(pa.Table.from_pylist(rows, schema=base_schema()))
    assert w.close() == {}
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written and all(re.fullmatch(r"out/samples/part-\d{8}T\d{6}-[0-9a-f]{6}-\d{5}\.parquet", p)
                           for p in written), written
    import pandas as pd

    assert sorted(pd.read_parquet(out / "samples")["source_uri"]) == sorted(HOSTILE_URIS)


def test_remote_download_stays_in_the_temp_dir():
    """A remote object is copied to a temp file named by mkstemp; its name only lends a short suffix."""
    import fsspec

    from curation.ingest.sources import open_local

    fs = fsspec.filesystem("memory")
    for i, name in enumerate(["..%2f..%2fetc%2fpasswd.mp4", "x.mp4/../../../../tmp/evil", "a\nb.mp4", "..", "q'.mp4"]):
        uri = f"memory://bucket{i}/{name}"
        with fs.open(uri, "wb") as f:
            f.write(b"data")
        with open_local(uri) as path:
            import tempfile

            assert Path(path).parent == Path(tempfile.gettempdir())
            assert Path(path).name.startswith("curation-") and "/" not in Path(path).name[9:]
            assert Path(path).read_bytes() == b"data"
        assert not Path(path).exists()


def test_decoder_replies_are_not_unpickled():
    """The worker reads the decoder helper's replies as JSON + raw arrays of whitelisted dtypes only."""
    import json
    import struct

    from curation.ingest.decoder import DecoderError, _pack, _unpack

    ok = _pack({"ok": True}, {"a": np.arange(6, dtype=np.int64).reshape(2, 3)})
    nh, nb = struct.unpack(">II", ok[:8])
    header, arrays = _unpack(ok[8:8 + nh], ok[8 + nh:8 + nh + nb])
    assert arrays["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    head = json.dumps({"ok": True, "arrays": [{"name": "x", "dtype": "object", "shape": [1]}]}).encode()
    with pytest.raises(DecoderError):
        _unpack(head, b"\x80\x04N.")  # a pickle of None, offered as an object array
    short = json.dumps({"ok": True, "arrays": [{"name": "x", "dtype": "uint8", "shape": [100]}]}).encode()
    with pytest.raises(DecoderError):
        _unpack(short, b"\x00" * 10)
    src = (ROOT / "curation" / "ingest" / "decoder.py").read_text()
    assert "import pickle" not in src and "pickle.load" not in src


def test_cluster_config_exposes_no_ray_port():
    cfg = load_yaml_file(ROOT / "ray_cluster.yaml")
    perms = cfg["provider"]["security_group"]["IpPermissions"]
    assert perms, "the security group must be explicit"
    for p in perms:
        assert (p["FromPort"], p["ToPort"]) == (22, 22), f"only SSH may be open, found {p}"
        for r in p.get("IpRanges", []):
            assert r["CidrIp"] != "0.0.0.0/0", "SSH must not be open to the whole internet either"
        for r in p.get("Ipv6Ranges", []):
            assert r["CidrIpv6"] != "::/0"
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds  # dashboard + job API bound to loopback on the head
    assert "0.0.0.0" not in head_cmds + " ".join(cfg["worker_start_ray_commands"])
    assert "ray-client-server-port" not in head_cmds
    assert "RAY_AUTH_MODE=token" in head_cmds and "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    readme = (ROOT / "README.md").read_text()
    # Users reach the job API through an SSH tunnel, and the README says so.
    assert "ray dashboard ray_cluster.yaml" in readme and "SSH" in readme
    assert "RAY_ADDRESS=http://127.0.0.1:8265" in readme
