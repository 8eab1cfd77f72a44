"""Write tests/data/wan_dit_tiny_golden.safetensors: a tiny Wan DiT's weights, inputs and the REFERENCE's outputs.

    python bench/make_dit_golden.py            # needs bench/_ref/wan/modules/model.py (see bench/wan_reference.py)

The test suite (tests/test_dit_model.py) loads these weights into trainer.models.dit.WanDiT and checks that its
forward equals the reference's stored outputs, so CI checks numerical equality without the reference code. fp32,
CPU, two samples of different sizes (the shorter one padded and masked), unequal text lengths.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from trainer.models.dit.model import PRESETS  # noqa: E402
from wan_reference import load_reference  # noqa: E402

OUT = os.path.join(ROOT, "tests", "data", "wan_dit_tiny_golden.safetensors")


def main() -> None:
    """Build the tiny reference model with non-trivial random weights, run it, save everything."""
    ref = load_reference()
    cfg = dataclasses.asdict(PRESETS["tiny"])
    torch.manual_seed(1234)
    model = ref.WanModel(model_type="t2v", **cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)  # the zero-initialised head would hide everything: randomise all weights
    g = torch.Generator().manual_seed(99)
    x0, x1 = torch.randn(16, 3, 8, 8, generator=g), torch.randn(16, 2, 6, 4, generator=g)
    ctx0, ctx1 = torch.randn(7, 32, generator=g), torch.randn(16, 32, generator=g)
    t = torch.tensor([937.5, 12.0])
    with torch.no_grad():
        y0, y1 = model([x0, x1], t, [ctx0, ctx1], seq_len=48)
    tensors = {f"weight.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors.update({"in.x0": x0, "in.x1": x1, "in.ctx0": ctx0, "in.ctx1": ctx1, "in.t": t,
                    "out.y0": y0.contiguous(), "out.y1": y1.contiguous()})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata={"seq_len": "48", "preset": "tiny", "source": "Wan-Video/Wan2.1 model.py"})
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
