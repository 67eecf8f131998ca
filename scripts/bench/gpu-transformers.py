#!/usr/bin/env python3
"""HF transformers on the GPU, for side-by-side numbers with scripts/bench/gpu.mjs.

Loads a Llama checkpoint folder (the one gpu.mjs writes) in float16 with SDPA attention and
measures, with torch.cuda.synchronize() around each timed region:
  - prefill tokens/s: one forward over an N-token prompt from an empty cache (the KV cache is
    built, as an engine's prefill builds it; only the last position's logits are computed when
    this transformers version can be told so);
  - batch-1 decode tokens/s: a greedy loop of one-token forwards over the cache (tokens after
    the first, per second after the first: the same definition as gpu.mjs).
Each is a warm-up run, then the median of --reps runs.

  python3 scripts/bench/gpu-transformers.py --dir bench/tmp/llama2-7b-shape-L32 \
      [--prefill 512,2048,4096] [--decode 128] [--decode-prompt 128] [--reps 3] [--json out.json]
"""

import argparse
import inspect
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def load_model(path):
    """float16 + SDPA on cuda, whatever this transformers version calls the dtype argument."""
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    kwargs = {dtype_arg: torch.float16, "attn_implementation": "sdpa"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, device_map="cuda", **kwargs)
    except (ImportError, ValueError):  # device_map needs accelerate in older versions
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to("cuda")
    model.eval()
    wrong = {p.dtype for p in model.parameters()} - {torch.float16}
    if wrong:
        raise SystemExit(f"expected float16 parameters, found {wrong}")
    return model


def last_logits_kwargs(model):
    """Ask for the last position's logits only (the argument's name changed across versions)."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--prefill", default="512,2048,4096")
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--decode-prompt", type=int, default=128)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu-transformers.py needs a CUDA device; torch sees none")
    if args.decode < 2:
        raise SystemExit("--decode: at least 2 tokens")

    start = time.perf_counter()
    model = load_model(args.dir)
    torch.cuda.synchronize()
    load_seconds = time.perf_counter() - start
    vocab = model.config.vocab_size
    keep = last_logits_kwargs(model)
    generator = torch.Generator().manual_seed(0)

    def prompt(n):
        return torch.randint(3, vocab, (1, n), generator=generator).to("cuda")

    prefill = []
    with torch.inference_mode():
        for n in [int(x) for x in args.prefill.split(",")]:
            ids = prompt(n)
            seconds = [timed(lambda: model(ids, use_cache=True, **keep)) for _ in range(args.reps + 1)][1:]
            prefill.append({"tokens": n, "seconds": seconds, "tokensPerSecond": n / statistics.median(seconds)})
            print(f"transformers prefill {n}: {prefill[-1]['tokensPerSecond']:.0f} tok/s", flush=True)

        def decode_rate():
            out = model(prompt(args.decode_prompt), use_cache=True, **keep)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            first = time.perf_counter()  # the first token is out
            for _ in range(args.decode - 1):
                out = model(token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            return (args.decode - 1) / (time.perf_counter() - first)

        rates = [decode_rate() for _ in range(args.reps + 1)][1:]
        print(f"transformers decode b=1: {statistics.median(rates):.1f} tok/s", flush=True)

    report = {
        "engine": "transformers",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda},
        "device": torch.cuda.get_device_name(0),
        "dtype": "float16",
        "attention": model.config._attn_implementation,
        "lastLogitsOnly": bool(keep),
        "loadSeconds": load_seconds,
        "prefill": prefill,
        "decode": {
            "promptTokens": args.decode_prompt,
            "tokens": args.decode,
            "tokensPerSecondRuns": rates,
            "tokensPerSecond": statistics.median(rates),
        },
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
