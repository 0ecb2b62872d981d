#!/usr/bin/env python3
"""HF transformers' float32 forward speed on an HF directory: the reference that
`scripts/bench-forward` compares `evopress bench forward` against. Needs torch + transformers
(pip install torch transformers); not part of CI.

usage: bench-hf.py MODEL_DIR SEQ_LEN THREADS [ITERS]   -> one JSON line
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

model_dir, seq_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
iters = int(sys.argv[4]) if len(sys.argv) > 4 else 5
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(seq_len)]])  # same ids as evopress
times = []
with torch.no_grad():
    model(ids)  # warm-up
    for _ in range(iters):
        t0 = time.perf_counter()
        model(ids)
        times.append(time.perf_counter() - t0)
median = statistics.median(times)
print(json.dumps({
    "impl": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}",
    "seq_len": seq_len, "threads": threads, "median_seconds": median,
    "tokens_per_second": seq_len / median,
}))
