#!/usr/bin/env python3
"""Makes the GGML codec fixtures in evopress-kernels/tests/fixtures/ggml/.

Inputs are two real 1536-wide rows from the demo model (assets/smollm2-135m-instruct.gguf,
dequantized with gguf-py):
  row 0: blk.3.ffn_down.weight row 0, with its first 16 values zeroed and value 100 scaled by 8
         (so the all-zero sub-block and outlier branches of the quantizers run),
  row 1: token_embd.weight rows 2000.. flattened, its first 1536 values (a finer, Q8_0 grid).
The importance vector is a real calibration statistic: the sum over 512 tokens of a State of
the Union address of the squared inputs of blk.3's ffn_down (llama.cpp's imatrix), computed
with HF transformers loading the same GGUF in float32.

Outputs (little-endian):
  x.f32                  the 2 x 1536 input rows
  importance.f32         the 1536 importance values
  TYPE.ref               llama.cpp's bytes without importance (ggml_quantize_chunk, imatrix NULL;
                         Q8_K: quantize_row_q8_K_ref)
  TYPE.imatrix           llama.cpp's bytes with the importance (types that use it)
  TYPE.decoded.f32       the first 512 values of each row of TYPE.ref decoded by gguf-py's
                         gguf.quants.dequantize (Q8_K, which gguf-py lacks: llama.cpp's
                         dequantize_row_q8_K)

llama.cpp is reached through the libggml that the `xllamacpp` wheel bundles (ctypes).
Needs: pip install gguf numpy torch transformers xllamacpp.
Run from the repository root: scripts/make-ggml-fixtures.py
"""

import ctypes
import importlib.util
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "assets", "smollm2-135m-instruct.gguf")
TEXT = os.path.join(ROOT, "assets", "sotu", "2001_george_w_bush_r.txt")
OUT = os.path.join(ROOT, "evopress-kernels", "tests", "fixtures", "ggml")
COLS = 1536
DECODED_COLS = 512
LAYER = 3

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
# Types whose llama.cpp quantizer reads the importance.
WEIGHTED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def libggml():
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None:
        sys.exit("pip install xllamacpp (its wheel bundles libggml)")
    lib = ctypes.CDLL(os.path.join(list(spec.submodule_search_locations)[0], "xllamacpp.abi3.so"))
    f = ctypes.POINTER(ctypes.c_float)
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, f, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, f,
    ]
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.quantize_row_q8_K_ref.argtypes = [f, ctypes.c_void_p, ctypes.c_int64]
    lib.dequantize_row_q8_K.argtypes = [ctypes.c_void_p, f, ctypes.c_int64]
    return lib


def fptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def quantize(lib, name, x, imatrix):
    ty = int(T[name])
    rows, cols = x.shape
    out = np.zeros(rows * lib.ggml_row_size(ty, cols), dtype=np.uint8)
    if name == "Q8_K":
        lib.quantize_row_q8_K_ref(fptr(x), out.ctypes.data, x.size)
    else:
        imp = fptr(imatrix) if imatrix is not None else None
        n = lib.ggml_quantize_chunk(ty, fptr(x), out.ctypes.data, 0, rows, cols, imp)
        assert n == out.size, (name, n, out.size)
    return out


def decode(lib, name, data, rows):
    if name == "Q8_K":
        y = np.zeros(data.size // 292 * 256, dtype=np.float32)
        lib.dequantize_row_q8_K(data.ctypes.data, fptr(y), y.size)
        return y.reshape(rows, -1)
    return gguf.quants.dequantize(data.reshape(rows, -1), T[name]).reshape(rows, -1)


def tensor(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)


def input_rows():
    r = gguf.GGUFReader(MODEL)
    down = tensor(r, f"blk.{LAYER}.ffn_down.weight")
    assert down.shape[1] == COLS, down.shape
    row0 = down[0].copy()
    row0[:16] = 0.0
    row0[100] *= 8.0
    emb = tensor(r, "token_embd.weight")
    row1 = emb[2000:2003].reshape(-1)[:COLS]
    return np.stack([row0, row1]).astype(np.float32)


def importance():
    """Sum of squared ffn_down inputs of block LAYER over 512 tokens (llama.cpp's imatrix)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(MODEL), os.path.basename(MODEL)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    ids = tok(open(TEXT).read(), add_special_tokens=False, return_tensors="pt").input_ids[:, :512]
    acc = torch.zeros(COLS, dtype=torch.float64)

    def hook(_module, args):
        acc.add_(args[0].double().pow(2).sum(dim=(0, 1)))

    model.model.layers[LAYER].mlp.down_proj.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(ids)
    return acc.float().numpy()


def main():
    lib = libggml()
    os.makedirs(OUT, exist_ok=True)
    x = input_rows()
    imp = importance()
    x.tofile(os.path.join(OUT, "x.f32"))
    imp.tofile(os.path.join(OUT, "importance.f32"))
    for name in TYPES:
        ref = quantize(lib, name, x, None)
        ref.tofile(os.path.join(OUT, f"{name}.ref"))
        dec = decode(lib, name, ref, x.shape[0])[:, :DECODED_COLS]
        np.ascontiguousarray(dec, dtype=np.float32).tofile(os.path.join(OUT, f"{name}.decoded.f32"))
        line = f"{name}: {ref.size} bytes"
        if name in WEIGHTED:
            w = quantize(lib, name, x, imp)
            w.tofile(os.path.join(OUT, f"{name}.imatrix"))
            line += f", with importance {int((w != ref).sum())} bytes differ"
        # gguf-py's own quantizers, where it has them, as a second opinion.
        try:
            py = gguf.quants.quantize(x, T[name]).reshape(-1)
            line += f"; gguf-py quantize {'agrees' if np.array_equal(py, ref) else 'DIFFERS'}"
        except (NotImplementedError, gguf.quants.QuantError):
            pass
        print(line)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{OUT}: {len(os.listdir(OUT))} files, {total} bytes")


if __name__ == "__main__":
    main()
