#!/usr/bin/env python3
"""Reads a GGUF written by `evopress convert --to gguf --gguf-config CONFIG` with gguf-py (the
llama.cpp project's Python reader) and checks it against the search's result file
(docs/gguf-search.md):

  check-gguf-types.py FILE --config gguf_config.toml

- every tensor the config names (HF names: model.layers.N.self_attn.q_proj, model.embed_tokens,
  lm_head) is in the file under its llama.cpp name with the config's ggml type;
- every tensor dequantizes (gguf.quants.dequantize) to finite values of its shape;
- prints the file size, the tensor-data bytes of the config's tensors, and bits per weight over
  all tensors as llama.cpp reports them (tensor bytes x 8 / elements).

Exits non-zero on a mismatch. Needs the `gguf` and `numpy` packages.
"""

import argparse
import os
import sys
import tomllib

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens":
        return "token_embd.weight"
    if hf == "lm_head":
        return "output.weight"
    _, _, layer, module = hf.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF[module]}.weight"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--config", required=True)
    a = p.parse_args()
    with open(a.config, "rb") as f:
        types = tomllib.load(f)["types"]
    r = GGUFReader(a.file)
    tensors = {t.name: t for t in r.tensors}
    ok = True
    searched = 0
    for hf, ty in types.items():
        t = tensors.get(gguf_name(hf))
        if t is None:
            print(f"FAIL {hf}: no tensor {gguf_name(hf)} in the file")
            ok = False
            continue
        searched += int(t.n_bytes)
        if t.tensor_type.name != ty:
            print(f"FAIL {gguf_name(hf)} is {t.tensor_type.name}, the config says {ty}")
            ok = False
    total_bytes, total_numel, bad = 0, 0, []
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type)
        if w.size != int(t.n_elements) or not np.isfinite(w).all():
            bad.append(t.name)
        total_bytes += int(t.n_bytes)
        total_numel += int(t.n_elements)
    if bad:
        print(f"FAIL tensors that do not dequantize to finite values: {bad[:5]}")
        ok = False
    mix = {}
    for ty in types.values():
        mix[ty] = mix.get(ty, 0) + 1
    print(f"{a.file}: {os.path.getsize(a.file)} bytes, {len(r.tensors)} tensors, "
          f"{total_bytes * 8 / total_numel:.4f} bits per weight over all tensors")
    print(f"searched tensors: {len(types)} ({', '.join(f'{v} {k}' for k, v in sorted(mix.items()))}), "
          f"{searched} bytes of tensor data")
    print(f"{'ok  ' if ok else 'FAIL'} types as configured; every tensor dequantizes with gguf-py")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
