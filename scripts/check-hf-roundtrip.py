#!/usr/bin/env python3
"""Checks that directories written by evopress's `write_hf_dir` load in HF transformers and
give the fixtures' reference logits.

Usage (not part of CI; needs torch and transformers):
    python scripts/check-hf-roundtrip.py WRITTEN_ROOT

WRITTEN_ROOT holds directories written by `write_hf_dir` from the fixtures, each named like
its fixture, optionally with a suffix after a dot (tiny-llama, tiny-qwen2.bf16, ...). The
tests in evopress-core/tests/hf.rs write them when EVOPRESS_ROUNDTRIP_OUT is set:
    EVOPRESS_ROUNDTRIP_OUT=/tmp/rt cargo test -p evopress-core --release --test hf written_
    python scripts/check-hf-roundtrip.py /tmp/rt
A directory whose config.json says bfloat16 or float16 is compared with a tolerance that
allows for the rounding of its weights.
"""

import json
import sys
from pathlib import Path

import torch
import transformers

FIXTURES = Path(__file__).parent.parent / "tests" / "fixtures"
# Relative to the largest reference logit; 16-bit weights move tiny-model logits by ~1e-2.
TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2, "float16": 1e-2}


def check(written: Path) -> bool:
    reference = json.loads((FIXTURES / written.name.split(".")[0] / "reference.json").read_text())
    dtype = json.loads((written / "config.json").read_text()).get("torch_dtype", "float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        written, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(reference["input_ids"])).logits
    expected = torch.tensor(reference["logits"])
    err = (logits - expected).abs().max().item()
    limit = TOLERANCE[dtype] * expected.abs().max().item() + reference["atol"]
    ok = err <= limit
    print(f"{'ok  ' if ok else 'FAIL'} {written.name} ({dtype}): max |logit diff| {err:.2e} (limit {limit:.1e})")
    return ok


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    dirs = sorted(d for d in Path(sys.argv[1]).iterdir() if (d / "config.json").is_file())
    if not dirs:
        raise SystemExit(f"no model directories under {sys.argv[1]}")
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    results = [check(d) for d in dirs]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
