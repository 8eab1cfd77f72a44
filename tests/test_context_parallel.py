"""Context parallelism (Ulysses × Ring) is exact: outputs and EVERY parameter gradient of a tiny Wan DiT in fp32 on
real gloo process groups equal one process (allclose rtol 1e-4, atol 1e-5), as do a few AdamW steps; the number of
collectives per attention call is the designed one. Workers: tests/cp_workers.py."""

from __future__ import annotations

import pytest
import torch

from cp_workers import run_spawned
from trainer.distributed.context_parallel import apply_context_parallel
from trainer.distributed.mesh import ParallelConfig, build_mesh, mesh_sizes
from trainer.distributed.ring import CpuFlashKernel, MathKernel, merge, valid_keys
from trainer.distributed.ulysses import check_heads
from trainer.models.dit.model import SDPAttention, WanDiT

ALL_SHAPES = ["even", "uneven", "two_sizes"]


def test_two_processes_ulysses2_and_ring2_are_exact(tmp_path):
    """World 2: attention (dq/dk/dv) and the whole model (output, every grad, AdamW steps) for U2 and R2."""
    run_spawned(2, tmp_path, "suite", cases=[
        ("attention", dict(ring=1, ulysses=2, kernel="math", length=8, k_lens=[5, 8])),
        ("attention", dict(ring=2, ulysses=1, kernel="math", length=8, k_lens=[3, 8])),
        ("attention", dict(ring=2, ulysses=1, kernel="cpu_flash", length=8, k_lens=[5, 8])),
        ("attention", dict(ring=2, ulysses=1, kernel="math", length=6, k_lens=None)),
        ("model", dict(ring=1, ulysses=2, shape_names=ALL_SHAPES)),
        ("model", dict(ring=2, ulysses=1, shape_names=ALL_SHAPES)),
        ("sample", dict(ring=2, ulysses=1)),
    ])


def test_four_processes_ring4_and_ulysses2_x_ring2_are_exact(tmp_path):
    """World 4: R4 (a key block with no valid key) and U2×R2, attention and whole model; FSDP2 over dp_shard 2 ×
    ring 2 with the loss scaled by the CP degree gives one process's gradients of the mean over both samples."""
    run_spawned(4, tmp_path, "suite", cases=[
        ("attention", dict(ring=4, ulysses=1, kernel="math", length=12, k_lens=[5, 12])),
        ("attention", dict(ring=2, ulysses=2, kernel="math", length=8, k_lens=[3, 8])),
        ("model", dict(ring=4, ulysses=1, shape_names=ALL_SHAPES)),
        ("model", dict(ring=2, ulysses=2, shape_names=ALL_SHAPES)),
        ("fsdp", dict(dp_shard=2, ring=2, ulysses=1)),
    ])


def test_ulysses_degree_must_divide_heads():
    """The 1.3B model's 12 heads: Ulysses 8 fails at start-up naming heads and degree; 4 and 6 are fine."""
    with pytest.raises(ValueError, match=r"Ulysses degree 8 .* 12 attention heads"):
        check_heads(12, 8)
    check_heads(12, 4)
    check_heads(12, 6)

    class Dim:  # the two things apply_context_parallel asks a mesh before it builds any group
        def size(self):
            return 8

    class Mesh:
        mesh_dim_names = ("dp_replicate", "dp_shard", "ring", "ulysses")

        def __getitem__(self, name):
            return Dim()

    model = WanDiT(dim=96, ffn_dim=64, freq_dim=32, text_dim=32, num_heads=12, num_layers=1, text_len=8)
    with pytest.raises(ValueError, match=r"Ulysses degree 8 does not divide the model's 12 attention heads"):
        apply_context_parallel(model, Mesh())


def test_parallel_config_sizes_and_single_process_mesh():
    """dp_shard=-1 takes what is left; sizes that do not fit the world are one clear message; 1 process: no mesh."""
    want = {"dp_replicate": 1, "dp_shard": 2, "ring": 2, "ulysses": 2}
    assert mesh_sizes(ParallelConfig(ring=2, ulysses=2), 8) == want
    with pytest.raises(ValueError, match="world size 6 is not divisible"):
        mesh_sizes(ParallelConfig(ring=2, ulysses=2), 6)
    with pytest.raises(ValueError, match="multiply to 6, but 8 processes run"):
        mesh_sizes(ParallelConfig(dp_shard=3, ulysses=2), 8)
    with pytest.raises(ValueError, match="parallel.ring"):
        ParallelConfig(ring=0)
    assert build_mesh(ParallelConfig(), 1, "cpu") is None


def _blocks(q, k, v, parts, kernel, lens=None):
    """Attention assembled from key blocks with merge(), as the ring does (single process)."""
    lb = k.shape[2] // parts
    out = lse = None
    scale = q.shape[-1] ** -0.5
    for j in range(parts):
        from trainer.distributed.ring import _block_forward

        valid = valid_keys(lens, q.shape[0], lb, j)
        o, l_, _ = _block_forward(kernel, q, k[:, :, j * lb:(j + 1) * lb], v[:, :, j * lb:(j + 1) * lb], scale,
                                  valid)
        out, lse = (o, l_) if out is None else merge(out, lse, o, l_)
    return out


@pytest.mark.parametrize("kernel", [MathKernel(), CpuFlashKernel()], ids=["math", "cpu_flash"])
def test_block_merge_equals_full_attention(kernel):
    """Blocks merged by log-sum-exp equal full SDPA, with k_lens masking whole blocks (first block empty too)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g) for _ in range(3))
    lens = [2, 6]
    ref = SDPAttention()(*(t.transpose(1, 2) for t in (q, k, v)), torch.tensor(lens)).transpose(1, 2)
    torch.testing.assert_close(_blocks(q, k, v, 3, kernel, lens), ref, rtol=1e-4, atol=1e-5)
    # reversed key order: the first merged block has no valid key for sample 0 (lse -inf must not make NaN)
    rev = [2, 1, 0]
    kr = torch.cat([k[:, :, 2 * j:2 * j + 2] for j in rev], dim=2)
    vr = torch.cat([v[:, :, 2 * j:2 * j + 2] for j in rev], dim=2)
    out = torch.zeros_like(ref)
    lse = torch.full(ref.shape[:-1], float("-inf"))
    for pos, j in enumerate(rev):
        from trainer.distributed.ring import _block_forward

        o, l_, _ = _block_forward(kernel, q, kr[:, :, 2 * pos:2 * pos + 2], vr[:, :, 2 * pos:2 * pos + 2],
                                  8 ** -0.5, valid_keys(lens, 2, 2, j))
        out, lse = merge(out, lse, o, l_)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_valid_keys_by_global_position():
    """A sample of 5 keys in blocks of 2: 2, 2, 1, 0 valid keys; no lengths: every key."""
    assert [valid_keys([5, 8], 2, 2, j) for j in range(4)] == [[2, 2], [2, 2], [1, 2], [0, 2]]
    assert valid_keys(None, 3, 4, 1) == [4, 4, 4]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fused", ["flash", "cudnn"])
def test_fused_block_kernels_match_math_on_gpu(fused):
    """The CUDA block kernels (bf16: flash, cuDNN) give the exact fp32 kernel's output, log-sum-exp and gradients, to
    bf16 precision, including a block cut to each sample's valid keys and the global-out/lse backward."""
    from trainer.distributed.ring import KERNELS, _block_backward, _block_forward

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(2, 4, 256, 64, generator=g, device="cuda") for _ in range(4))
    scale = 64 ** -0.5
    for valid in ([256, 256], [100, 256]):
        outs = {}
        for name, kern in (("math", MathKernel()), (fused, KERNELS[fused]())):
            qb, kb, vb = (t.bfloat16() for t in (q, k, v))
            o, lse, metas = _block_forward(kern, qb, kb, vb, scale, valid)
            grads = _block_backward(kern, dout.bfloat16() if name == fused else dout, qb, kb, vb,
                                    o.bfloat16() if name == fused else o, lse, scale, valid, metas)
            outs[name] = (o.float(), lse, *grads)
        for a, b in zip(outs[fused], outs["math"]):
            torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.slow
def test_sample_cli_with_ulysses2_writes_the_video_of_one_process(tmp_path):
    """`torchrun --nproc_per_node 2 -m trainer.sample --ulysses 2` (gloo, fp32) writes the video one process writes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import av
    from safetensors.torch import save_file

    from trainer.models.dit.weights import save_wan_dit
    from trainer.models.vae.model import WanVAE, vae_config

    root = Path(__file__).resolve().parents[1]
    torch.manual_seed(0)
    dit = WanDiT(dim=32, ffn_dim=64, freq_dim=32, text_dim=384, in_dim=4, out_dim=4, num_heads=4, num_layers=2,
                 text_len=32)
    torch.nn.init.normal_(dit.head.head.weight, std=0.1)  # the released init zeroes it: the video would be blank
    save_wan_dit(dit.state_dict(), dit.config, str(tmp_path / "dit"))
    save_file(WanVAE(vae_config("tiny")).state_dict(), str(tmp_path / "vae.safetensors"))
    args = ["-m", "trainer.sample", "--checkpoint", str(tmp_path / "dit"), "--vae", str(tmp_path / "vae.safetensors"),
            "--vae-preset", "tiny", "--text-encoder", "minilm-l6-v2", "--prompt", "a red fox runs through snow",
            "--negative-prompt", "blurry", "--frames", "5", "--height", "32", "--width", "48", "--steps", "3",
            "--solver", "euler", "--device", "cpu", "--precision", "fp32"]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.mp4")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--ulysses", "2", "--out", str(tmp_path / "two.mp4")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    def frames(path):
        with av.open(str(path)) as c:
            return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)])

    a, b = frames(tmp_path / "one.mp4"), frames(tmp_path / "two.mp4")
    assert a.shape == b.shape and a.shape[0] == 5
    assert (a.int() - b.int()).abs().max() <= 2  # the same latents up to fp32 rounding, then 8-bit video
