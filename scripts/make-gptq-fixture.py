#!/usr/bin/env python3
"""Writes evopress-export/tests/fixtures/gptq-pack.json: GPTQModel's own packing of known codes
and zero points at every width, which the Rust tests compare evopress's GPTQ packer against
without Python.

Usage: make-gptq-fixture.py   (needs torch and gptqmodel; the fixture records the version)

A 64-input, 32-output layer with groups of 32 is built whose weights are exactly
scale·(code − zero) with scale 1, so GPTQModel's packer (which rounds W/scale + zero) recovers
the codes exactly; its qweight and qzeros (GPTQ v2 zero points, stored as is) are recorded.
"""

import json
from pathlib import Path

import gptqmodel
import torch
from gptqmodel.nn_modules.qlinear.torch import TorchLinear

IN, OUT, GROUP = 64, 32, 32
OUT_PATH = Path(__file__).parent.parent / "evopress-export" / "tests" / "fixtures" / "gptq-pack.json"


def layer(bits, seed):
    g = torch.Generator().manual_seed(seed)
    maxq = (1 << bits) - 1
    codes = torch.randint(0, maxq + 1, (OUT, IN), generator=g)
    zeros = torch.randint(0, maxq + 1, (OUT, IN // GROUP), generator=g)
    g_idx = torch.arange(IN, dtype=torch.int32) // GROUP
    w = (codes - zeros[:, g_idx.long()]).to(torch.float16)
    linear = torch.nn.Linear(IN, OUT, bias=False)
    linear.weight.data = w.float()
    q = TorchLinear(bits=bits, group_size=GROUP, sym=False, desc_act=False,
                    in_features=IN, out_features=OUT, bias=False)
    q.pack_block(linear, torch.ones(OUT, IN // GROUP), zeros.float(), g_idx)
    return {
        "bits": bits,
        "codes": codes.tolist(),
        "zeros": zeros.tolist(),
        "qweight": q.qweight.tolist(),
        "qzeros": q.qzeros.tolist(),
    }


def main():
    layers = [layer(bits, 100 + bits) for bits in (2, 3, 4, 5, 6, 7, 8)]
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    OUT_PATH.write_text(json.dumps({
        "made_by": f"scripts/make-gptq-fixture.py with gptqmodel {gptqmodel.__version__}",
        "in_features": IN, "out_features": OUT, "group_size": GROUP, "layers": layers,
    }) + "\n")
    print(f"wrote {OUT_PATH}")


if __name__ == "__main__":
    main()
