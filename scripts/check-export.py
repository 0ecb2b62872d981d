#!/usr/bin/env python3
"""Loads models written by `evopress convert` in the tools that deploy them and checks that
they compute what evopress computes (see docs/export-formats.md).

Usage (each prints its numbers and exits non-zero on a mismatch; needs the packages named):

  check-export.py gptq DIR --data FILE --expect PPL [--reference HF_DIR] [--loader gptqmodel|transformers]
      GPTQ checkpoint (torch, transformers, gptqmodel; optimum for --loader transformers).
      --reference: a dense f32 `--to hf` export of the same candidate; every quantized layer's
      weights, as the GPTQ kernel dequantizes them (f16), must equal the reference's rounded to
      f16 bit for bit. Perplexity must match --expect within --rtol (the kernel runs in f16).
  check-export.py sparse DIR --data FILE --expect PPL
      compressed-tensors sparse-bitmask directory, decompressed with compressed-tensors'
      ModelCompressor (a version that still has the sparse compressors, e.g. 0.14) into a
      transformers model (float32).
  check-export.py hf DIR --data FILE --expect PPL
      plain HF directory in transformers (float32).
  check-export.py tokenizer DIR --gguf FILE [--generate]
      tokenizer files: `tokenizers` reads tokenizer.json; the special tokens of
      tokenizer_config.json resolve to ids inside the embedding; with --generate, transformers
      generates from a chat-templated prompt without error (run it under old and new
      transformers/tokenizers).
  check-export.py gguf FILE --expect-tokens IDS --expect-top1 IDS --prompt TEXT
      GGUF in llama.cpp (xllamacpp): prompt tokens and greedy next tokens must be the ones
      evopress computes (`evopress generate` prints both).

Perplexity follows evopress eval: the file is tokenized whole without special tokens, cut into
--windows windows of --seq-len tokens from the start, and every token but the first of each
window is scored.
"""

import argparse
import json
import math
import sys
from pathlib import Path


def perplexity(forward, ids, seq_len, windows):
    import torch

    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * seq_len:(w + 1) * seq_len]])
            if x.shape[1] < seq_len:
                raise SystemExit(f"the data has fewer than {windows} windows of {seq_len} tokens")
            logits = forward(x).float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
            n += seq_len - 1
    return math.exp(nll / n)


def token_ids(model_dir, data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok(Path(data).read_text(), add_special_tokens=False)["input_ids"]


def compare(name, got, expect, rtol):
    err = abs(got - expect) / expect
    ok = err <= rtol
    print(f"{'ok  ' if ok else 'FAIL'} {name}: perplexity {got:.4f} vs evopress {expect:.4f} "
          f"(relative difference {err:.2e}, limit {rtol:.0e})")
    return ok


def check_gptq(a):
    import torch
    from safetensors import safe_open

    if a.loader == "gptqmodel":
        from gptqmodel import BACKEND, GPTQModel

        # f16 explicitly: on a CPU GPTQModel otherwise picks bf16 and rounds the f16 scales.
        model = GPTQModel.load(a.dir, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16).model
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(a.dir, device_map="cpu", dtype=torch.float16)
    ok = True
    if a.reference:
        ref = safe_open(str(Path(a.reference) / "model.safetensors"), "pt")
        checked = 0
        for name, module in model.named_modules():
            if not hasattr(module, "qweight"):
                continue
            got = module.dequantize_weight().T.to(torch.float16)
            want = ref.get_tensor(f"{name}.weight").to(torch.float16)
            if not torch.equal(got, want):
                bad = (got != want).sum().item()
                print(f"FAIL {name}: {bad} of {want.numel()} weights differ from the reference")
                ok = False
            checked += 1
        print(f"{'ok  ' if ok else 'FAIL'} {checked} quantized layers dequantize to the "
              f"reference's weights (f16) bit for bit")
    ids = token_ids(a.dir, a.data)
    ppl = perplexity(lambda x: model(x).logits, ids, a.seq_len, a.windows)
    return compare(f"GPTQ via {a.loader}", ppl, a.expect, a.rtol) and ok


def check_sparse(a):
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(a.dir)
    compressor = ModelCompressor.from_pretrained(a.dir)
    if compressor is None:
        raise SystemExit(f"{a.dir}: config.json has no compressed-tensors config")
    qc = config.quantization_config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    compressor.decompress(a.dir, model)
    # Decompression registers new parameters, which unties a tied LM head from the embedding.
    model.tie_weights()
    model.eval()
    sparsity = qc["sparsity_config"]
    zeros = sum((p == 0).sum().item() for n, p in model.named_parameters()
                if n.endswith("proj.weight"))
    print(f"decompressed {sparsity['format']} ({sparsity['global_sparsity']:.4f} stated); "
          f"{zeros} zero linear weights after decompression")
    ids = token_ids(a.dir, a.data)
    ppl = perplexity(lambda x: model(x).logits, ids, a.seq_len, a.windows)
    return compare("compressed-tensors sparse-bitmask", ppl, a.expect, a.rtol)


def check_hf(a):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32)
    n = model.config.num_hidden_layers
    ids = token_ids(a.dir, a.data)
    ppl = perplexity(lambda x: model(x).logits, ids, a.seq_len, a.windows)
    return compare(f"HF ({n} layers)", ppl, a.expect, a.rtol)


def check_tokenizer(a):
    import tokenizers

    d = Path(a.dir)
    print(f"tokenizers {tokenizers.__version__}")
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    model_cfg = json.loads((d / "config.json").read_text())
    vocab = model_cfg["vocab_size"]
    ok = True
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        text = cfg.get(key)
        if text is None:
            continue
        i = tok.token_to_id(text)
        good = i is not None and i < vocab
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {key} {text!r} -> id {i} (vocabulary {vocab})")
    if a.gguf:
        import gguf

        r = gguf.GGUFReader(a.gguf)
        f = r.fields["tokenizer.ggml.tokens"]
        tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        text = "Hello world! <|im_start|>user\nThe year 2021 was   hard, wasn't it?<|im_end|>"
        ids = tok.encode(text, add_special_tokens=False).ids
        print(f"encoded {len(ids)} tokens: {ids[:12]}...")
        good = tok.get_vocab_size() == len(tokens) and all(tok.id_to_token(i) == t for i, t in enumerate(tokens))
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} vocabulary equals the GGUF's {len(tokens)} tokens")
    if a.generate:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"transformers {transformers.__version__}")
        t = AutoTokenizer.from_pretrained(d)
        big = [i for i in t.all_special_ids if i >= vocab]
        ok &= not big
        print(f"{'ok  ' if not big else 'FAIL'} special ids {sorted(t.all_special_ids)} all below {vocab}")
        prompt = t.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                       tokenize=False, add_generation_prompt=True)
        x = t(prompt, return_tensors="pt", add_special_tokens=False)
        model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
        out = model.generate(**x, max_new_tokens=12, do_sample=False)
        print(f"ok   generated: {t.decode(out[0, x['input_ids'].shape[1]:])!r}")
    return ok


def check_gguf(a):
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = a.file
    params.n_ctx = 512
    params.n_predict = len(a.expect_top1)
    params.sampling.temp = 0.0
    params.cpuparams.n_threads = 2
    server = xlc.Server(params)
    res = server.handle_completions({
        "prompt": a.prompt, "n_predict": len(a.expect_top1), "temperature": 0.0,
        "return_tokens": True, "n_probs": 1, "add_special": False, "cache_prompt": False,
    })
    if isinstance(res, str):
        res = json.loads(res)
    if res.get("error"):
        raise SystemExit(f"llama.cpp: {res['error']}")
    choice = res["choices"][0]
    tokens = [t["id"] for t in choice["logprobs"]["content"]]
    n_prompt = res["usage"]["prompt_tokens"]
    print(f"llama.cpp: prompt {n_prompt} tokens, generated {tokens} {choice['text']!r}")
    ok = tokens == a.expect_top1
    print(f"{'ok  ' if ok else 'FAIL'} greedy tokens equal evopress's {a.expect_top1}")
    if a.expect_tokens is not None:
        good = n_prompt == len(a.expect_tokens)
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} prompt length {n_prompt} vs evopress {len(a.expect_tokens)}")
    return ok


def ids_arg(s):
    return [int(x) for x in s.replace(",", " ").split()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, rtol in (("gptq", 5e-3), ("sparse", 1e-4), ("hf", 1e-4)):
        s = sub.add_parser(name)
        s.add_argument("dir")
        s.add_argument("--data", required=True)
        s.add_argument("--expect", type=float, required=True)
        s.add_argument("--seq-len", type=int, default=256)
        s.add_argument("--windows", type=int, default=4)
        s.add_argument("--rtol", type=float, default=rtol)
        if name == "gptq":
            s.add_argument("--reference")
            s.add_argument("--loader", choices=["gptqmodel", "transformers"], default="gptqmodel")
    s = sub.add_parser("tokenizer")
    s.add_argument("dir")
    s.add_argument("--gguf")
    s.add_argument("--generate", action="store_true")
    s = sub.add_parser("gguf")
    s.add_argument("file")
    s.add_argument("--prompt", required=True)
    s.add_argument("--expect-tokens", type=ids_arg)
    s.add_argument("--expect-top1", type=ids_arg, required=True)
    a = p.parse_args()
    check = {"gptq": check_gptq, "sparse": check_sparse, "hf": check_hf,
             "tokenizer": check_tokenizer, "gguf": check_gguf}[a.cmd]
    sys.exit(0 if check(a) else 1)


if __name__ == "__main__":
    main()
