#!/usr/bin/env python3
"""HF transformers as an oracle for kvfocus: small random Llama and Qwen2 models, built from a
config (no download), saved as HF checkpoints, and run through transformers.

For each architecture this writes, under --out:
  <arch>-f32/   config.json, generation_config.json, model.safetensors (float32)
  <arch>-bf16/  the same weights rounded to bfloat16 (as most real checkpoints are stored)
and dumps, as JSON (--json), for a fixed prompt of token ids:
  f32:  greedy tokens (--steps) of the float32 model, and the logits at every position of
        prompt + those tokens;
  bf16: greedy tokens of the bfloat16 model (bf16 compute, as transformers runs a bf16
        checkpoint), the logits along them in bf16 compute, and the logits along the same
        tokens in float32 compute on the bf16 weights: the exact function of the stored
        weights, against which an engine's own bf16 rounding can be measured.
Float32 runs with TF32 off. No end-of-sequence token (every generation runs --steps tokens).
scripts/oracle/hf-compare.mjs runs this, adds tokenizer files, and compares kvfocus.

  python3 scripts/oracle/hf-transformers.py --out /tmp/hf-oracle [--arch llama,qwen2]
      [--steps 32] [--prompt-tokens 16] [--device cuda|cpu] [--json /tmp/hf-oracle/oracle.json]
"""

import argparse
import copy
import json
import math
import os

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 1000  # not a power of two, on purpose: edge tiles of the output head
SIZES = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
             head_dim=64, max_position_embeddings=512, vocab_size=VOCAB)


def make_model(arch, seed):
    common = dict(SIZES, bos_token_id=VOCAB - 2, eos_token_id=None, pad_token_id=None,
                  hidden_act="silu", rms_norm_eps=1e-6 if arch == "qwen2" else 1e-5)
    if arch == "llama":
        config = LlamaConfig(**common, num_key_value_heads=2, rope_theta=10000.0,
                             tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
        cls = LlamaForCausalLM
    elif arch == "qwen2":
        config = Qwen2Config(**common, num_key_value_heads=4, rope_theta=1000000.0,
                             tie_word_embeddings=True, use_sliding_window=False)
        cls = Qwen2ForCausalLM
    else:
        raise SystemExit(f"--arch: unknown architecture {arch!r} (llama, qwen2)")
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    init_weights(model, config)
    model.eval()
    return model


@torch.no_grad()
def init_weights(model, config):
    """Scales that make logits spread over a few units (std ~2), so that greedy decoding is not
    decided by near-ties, and attention neither uniform nor one-hot. transformers' default
    initializer (std 0.02) gives near-uniform logits, where any rounding flips the argmax."""
    hidden = config.hidden_size
    tied = config.tie_word_embeddings
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn_like(p))
        elif name == "model.embed_tokens.weight":
            # Tied: small embeddings (they are the output head too) and a large final norm.
            p.copy_((0.1 if tied else 1.0) * torch.randn_like(p))
        elif name == "lm_head.weight":
            p.copy_(2.4 / math.sqrt(hidden) * torch.randn_like(p))
        else:  # linear layers, [out, in]: unit-variance outputs for unit-RMS inputs
            p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
    if tied:
        model.model.norm.weight.copy_(2.0 / (0.1 * math.sqrt(hidden)) * (1 + 0.1 * torch.randn_like(model.model.norm.weight)))


def save(model, path):
    """save_pretrained as safetensors (the default, and in transformers 5 the only format)."""
    try:
        model.save_pretrained(path, safe_serialization=True)
    except TypeError:  # a version without the argument
        model.save_pretrained(path)
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        raise SystemExit(f"save_pretrained wrote no model.safetensors in {path}")


@torch.no_grad()
def greedy(model, prompt, steps, device):
    """Greedy tokens, one forward per token over the KV cache (argmax ties: the lowest id)."""
    ids = torch.tensor([prompt], device=device)
    out = model(ids, use_cache=True)
    tokens = []
    for step in range(steps):
        token = int(out.logits[0, -1].float().argmax())
        tokens.append(token)
        if step + 1 < steps:
            out = model(torch.tensor([[token]], device=device), past_key_values=out.past_key_values, use_cache=True)
    return tokens


@torch.no_grad()
def all_logits(model, ids, device):
    """Logits at every position of ids, one forward, as a list of float32 rows."""
    out = model(torch.tensor([ids], device=device), use_cache=False)
    return out.logits[0].float().cpu().tolist()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", default="llama,qwen2")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)

    generator = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, VOCAB - 2, (args.prompt_tokens,), generator=generator).tolist()
    report = {
        "oracle": "transformers",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "prompt": prompt,
        "steps": args.steps,
        "models": {},
    }
    for i, arch in enumerate(args.arch.split(",")):
        model = make_model(arch, args.seed + i)
        f32_dir = os.path.join(args.out, f"{arch}-f32")
        bf16_dir = os.path.join(args.out, f"{arch}-bf16")
        save(model, f32_dir)
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        save(bf16, bf16_dir)
        bf16_weights_f32 = copy.deepcopy(bf16).to(torch.float32)  # exact: bf16 widens losslessly

        entry = {
            "architecture": type(model).__name__,
            "vocabSize": model.config.vocab_size,
            "config": json.loads(model.config.to_json_string(use_diff=True)),
            "dirs": {"f32": f32_dir, "bf16": bf16_dir},
        }
        model.to(args.device)
        tokens = greedy(model, prompt, args.steps, args.device)
        entry["f32"] = {"greedy": tokens, "logits": all_logits(model, prompt + tokens, args.device)}
        model.cpu()

        bf16.to(args.device)
        tokens = greedy(bf16, prompt, args.steps, args.device)
        entry["bf16"] = {"greedy": tokens, "logits": all_logits(bf16, prompt + tokens, args.device)}
        bf16.cpu()
        bf16_weights_f32.to(args.device)
        entry["bf16"]["logitsF32Compute"] = all_logits(bf16_weights_f32, prompt + tokens, args.device)
        bf16_weights_f32.cpu()
        report["models"][arch] = entry
        print(f"{arch}: wrote {f32_dir} and {bf16_dir}", flush=True)

    text = json.dumps(report)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
