#!/usr/bin/env python3
"""Perplexity of a GGUF model under HF transformers (float32), with `evopress eval`'s protocol:
the text file is tokenized whole without BOS, cut into non-overlapping windows of SEQ_LEN
tokens from the start, and every token but the first of each window is scored. Prints one
JSON line to compare with `evopress eval --model FILE.gguf --data TEXT --seq-len SEQ_LEN
--windows WINDOWS --json`. Needs torch, transformers, gguf; not part of CI.

usage: check-gguf-perplexity.py FILE.gguf TEXT SEQ_LEN WINDOWS [THREADS]
"""
import json
import math
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path, text, seq_len, windows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if len(sys.argv) > 5:
    torch.set_num_threads(int(sys.argv[5]))
d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
t0 = time.perf_counter()
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
model.eval()
load_seconds = time.perf_counter() - t0
with open(text, encoding="utf-8") as fh:
    ids = tok(fh.read(), add_special_tokens=False, return_tensors="pt").input_ids[0]
n = min(windows, len(ids) // seq_len)
nll, count = 0.0, 0
t0 = time.perf_counter()
with torch.no_grad():
    for w in range(n):
        x = ids[w * seq_len:(w + 1) * seq_len].unsqueeze(0)
        logits = model(x).logits[0, :-1].double()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        count += seq_len - 1
print(json.dumps({
    "impl": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}",
    "model": path, "data": text, "seq_len": seq_len, "windows": n, "tokens_scored": count,
    "nll": nll / count, "perplexity": math.exp(nll / count),
    "seconds": time.perf_counter() - t0, "load_seconds": load_seconds,
}))
