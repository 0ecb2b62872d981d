#!/usr/bin/env python3
"""Creates the tiny reference models under tests/fixtures/tiny-<name>/.

Each fixture is a seeded random HF model small enough to commit (config.json and safetensors
weights) plus reference.json: a batch of token ids and the float32 logits that HF transformers
computes for them. The Rust forward pass must reproduce those logits to about 1e-4, for every
architecture evopress supports.

The fixtures also cover the loader's file layouts: `tiny-llama-tied` is stored as bf16 and
`tiny-mistral` is sharded into two files with model.safetensors.index.json.

Needs torch and transformers < 5 (not part of CI; the fixtures are committed):
    pip install torch 'transformers<5' safetensors
    python scripts/make-fixtures.py            # writes tests/fixtures/tiny-*/

transformers 4.x is used because it writes config.json the way most published checkpoints
are written (`rope_theta` and `rope_scaling` at top level; 5.x nests them in `rope_parameters`).
"""

import argparse
import json
import math
import platform
import shutil
from pathlib import Path

import safetensors
import torch
import transformers

SEED = 1234
BATCH, SEQ_LEN = 2, 12
ATOL = 1e-4

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
    hidden_act="silu",
)

# Llama-3 scaling with a short original context, so that it changes the frequencies that
# matter at the few positions the reference covers (wavelengths above 8 tokens).
LLAMA3_SCALING = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)

# name -> (config class, config overrides, storage dtype, number of safetensors files)
FIXTURES = {
    "llama": (transformers.LlamaConfig, dict(rope_scaling=LLAMA3_SCALING, rope_theta=10000.0), torch.float32, 1),
    "llama-tied": (transformers.LlamaConfig, dict(tie_word_embeddings=True, rope_theta=50000.0), torch.bfloat16, 1),
    "mistral": (transformers.MistralConfig, dict(rope_theta=10000.0, sliding_window=4096), torch.float32, 2),
    "qwen2": (transformers.Qwen2Config, dict(rope_theta=1000000.0, tie_word_embeddings=False), torch.float32, 1),
    "phi3": (transformers.Phi3Config, dict(rope_scaling=None, rope_theta=10000.0), torch.float32, 1),
}


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Replaces HF's tiny init (std 0.02, unit norms, zero biases) with weights that make
    every term of the forward pass matter: unit-variance activations, non-uniform attention,
    norm weights away from 1 and non-zero biases. Matrices get std 1/sqrt(columns), the
    embedding included, so tied-embedding logits are of the same size as the others."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[1]))


def save(model, out: Path, dtype: torch.dtype, shards: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    model = model.to(dtype)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    # Greedy sharding by tensor: 60% of the total gives two files for these models.
    max_shard = f"{int(total * 0.6) // 1000}KB" if shards > 1 else "1GB"
    model.save_pretrained(out, safe_serialization=True, max_shard_size=max_shard)
    (out / "generation_config.json").unlink(missing_ok=True)
    files = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(files) == shards, f"{out}: expected {shards} safetensors files, got {files}"


def reference_logits(out: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the saved model reloaded in float32, so that storage rounding (bf16) is
    part of the weights rather than an error."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    with torch.no_grad():
        return model(input_ids).logits


def make(name: str, root: Path, seed: int) -> None:
    config_cls, overrides, dtype, shards = FIXTURES[name]
    config = config_cls(**{**COMMON, **overrides})
    gen = torch.Generator().manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, gen)
    out = root / f"tiny-{name}"
    save(model, out, dtype, shards)

    input_ids = torch.randint(0, config.vocab_size, (BATCH, SEQ_LEN), generator=gen)
    logits = reference_logits(out, input_ids)
    reference = {
        "generated_by": "scripts/make-fixtures.py",
        "model_type": config.model_type,
        "seed": seed,
        "storage_dtype": str(dtype).removeprefix("torch."),
        "safetensors_files": shards,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
        "atol": ATOL,
        "input_ids": input_ids.tolist(),
        "logits_shape": list(logits.shape),
        # [batch][position][vocab]; six decimals are far below the tolerance.
        "logits": [[[round(x, 6) for x in pos] for pos in seq] for seq in logits.tolist()],
    }
    (out / "reference.json").write_text(json.dumps(reference, separators=(",", ":")) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size / 1024:.0f} KiB, logits |max| {logits.abs().max():.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "tests" / "fixtures")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("names", nargs="*", default=list(FIXTURES), help="fixtures to make (default: all)")
    args = parser.parse_args()
    if transformers.__version__.split(".")[0] != "4":
        raise SystemExit("use transformers 4.x (see the module docstring)")
    torch.set_num_threads(1)
    for name in args.names:
        make(name, args.out, args.seed + list(FIXTURES).index(name))


if __name__ == "__main__":
    main()
