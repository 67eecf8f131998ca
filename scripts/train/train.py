#!/usr/bin/env python3
"""Trains the embedded default model: a small Llama-architecture decoder (RMSNorm, rotate_half
RoPE, grouped-query attention, SwiGLU) on the multi-document QA corpus of make-data.mjs, and
exports it as a Hugging Face checkpoint (config.json for LlamaForCausalLM, model.safetensors,
tokenizer files) that kvfocus and transformers load.

Written from scratch on PyTorch alone (Debian's python3-torch 1.13 on the CPU; any later
version, CPU or CUDA, works too). Parameter names are transformers' LlamaForCausalLM names.

  train:   python3 scripts/train/train.py --data TRAIN.jsonl --valid VALID.jsonl \
               --tokenizer TOKDIR --work WORKDIR --export OUTDIR [model/optimiser flags]
           Resumes from WORKDIR/ckpt.pt when present (same flags). Logs JSON lines to
           WORKDIR/log.jsonl and stdout; exports OUTDIR at every checkpoint and at the end.
  export:  python3 scripts/train/train.py --work WORKDIR --tokenizer TOKDIR --export OUTDIR --export-only
  logits:  python3 scripts/train/train.py --dump-logits MODELDIR --ids IDS.json --out-logits OUT.bin
           Float64 forward pass of an exported checkpoint over the ids (a JSON list); writes
           rows x vocab little-endian float64 (every position).

Loss: cross-entropy on every next token, weighted --answer-weight on completion tokens (the
answer and its </s>) and --text-weight elsewhere (pads 0), normalised by the total weight.
"""
import argparse
import json
import math
import os
import random
import shutil
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Model


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x if x.dtype == torch.float64 else x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(positions, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, h, kv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
        self.h, self.kv, self.hd = h, kv, hd
        self.q_proj = nn.Linear(d, h * hd, bias=False)
        self.k_proj = nn.Linear(d, kv * hd, bias=False)
        self.v_proj = nn.Linear(d, kv * hd, bias=False)
        self.o_proj = nn.Linear(h * hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.kv  # query head i reads key/value head i // rep (transformers' repeat_kv)
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
        scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if getattr(self, "keep_probs", False):  # --dump-attention reads them back
            self.probs = probs
        out = probs @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.h * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, f = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])

    def forward(self, x, cos, sin, mask):
        if getattr(self, "ablated", False):  # --dump-attention --valid: the model without this layer
            return x
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

    def init_weights(self, seed):
        g = torch.Generator().manual_seed(seed)
        std = self.cfg["initializer_range"]
        depth_scale = 1.0 / math.sqrt(2 * self.cfg["num_hidden_layers"])
        for name, p in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(p)
            else:
                s = std * depth_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * s)

    def forward(self, ids):
        b, t = ids.shape
        x = self.model.embed_tokens(ids)
        cos, sin = rope_cos_sin(torch.arange(t, device=ids.device), self.cfg["head_dim"], self.cfg["rope_theta"], x.dtype)
        cos, sin = cos.to(ids.device), sin.to(ids.device)
        mask = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


def model_config(args, vocab_size):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": args.d_model,
        "intermediate_size": args.ffn,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.d_model // args.heads,
        "max_position_embeddings": args.context,
        "rms_norm_eps": 1e-5,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "use_cache": True,
    }


# ----------------------------------------------------------------------------------------------
# safetensors, written and read by hand (the format: u64 header length, JSON header, raw data)


def save_safetensors(path, tensors, metadata=None):
    header = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name].detach().cpu().to(torch.float32).numpy()).astype("<f4")
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    types = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        arr = np.frombuffer(data[s:e], dtype=types[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32))
    return out


def export(model, cfg, tokenizer_dir, out_dir, extra_meta=None):
    tmp = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    with open(os.path.join(tmp, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, f, indent=2)
        f.write("\n")
    save_safetensors(os.path.join(tmp, "model.safetensors"), model.state_dict(), {"format": "pt", **(extra_meta or {})})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    os.replace(tmp, out_dir)


def load_exported(model_dir, dtype=torch.float32):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    model = LlamaForCausalLM(cfg)
    state = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    model.load_state_dict(state)
    return model.to(dtype).eval(), cfg


# ----------------------------------------------------------------------------------------------
# Data


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            rows.append((r["ids"], r["ans"]))
    return rows


def make_batch(rows, pad_id, answer_weight, text_weight):
    t = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    weights = torch.zeros((len(rows), t), dtype=torch.float32)
    is_answer = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, (seq, ans) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        weights[i, 1 : len(seq)] = text_weight
        for s, e in ans:
            weights[i, s:e] = answer_weight
            is_answer[i, s:e] = True
    # Position j's logits predict token j + 1.
    return ids, weights[:, 1:], is_answer[:, 1:]


def batch_metrics(logits, ids, is_answer, rows):
    """Teacher-forced answer exact match: every completion token is the argmax."""
    pred = logits[:, :-1].argmax(-1)
    correct = pred == ids[:, 1:]
    hits = total = 0
    for i, (_, ans) in enumerate(rows):
        for s, e in ans:
            total += 1
            hits += int(correct[i, s - 1 : e - 1].all())
    return hits, total


# ----------------------------------------------------------------------------------------------


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def evaluate(model, rows, args, device):
    model.eval()
    hits = total = 0
    loss_sum = weight_sum = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), args.batch):
            chunk = rows[i : i + args.batch]
            ids, w, is_answer = make_batch(chunk, 0, 1.0, 0.0)
            ids = ids.to(device)
            logits = model(ids).float()
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").view(w.shape)
            loss_sum += float((ce.cpu() * w).sum())
            weight_sum += float(w.sum())
            h, t = batch_metrics(logits.cpu(), ids.cpu(), is_answer, chunk)
            hits += h
            total += t
    model.train()
    return {"valid_answer_loss": loss_sum / max(weight_sum, 1e-9), "valid_answer_em_tf": hits / max(total, 1)}


def grow_from(model, src_dir, layer_map):
    """Depth growth: start a deeper model from a trained shallower one of the same width. Layer
    i is a copy of source layer layer_map[i]; every copy after the first of a source layer gets
    zero o_proj and down_proj, so it adds nothing to the residual stream at the start and the
    grown model computes exactly what the source does. Training then gives the new layers work
    (their input projections are trained weights, so their gradients are useful from step one)."""
    src, src_cfg = load_exported(src_dir)
    cfg = model.cfg
    for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        if src_cfg[k] != cfg[k]:
            raise SystemExit(f"--grow-from: {k} is {src_cfg[k]} in {src_dir}, {cfg[k]} here")
    if len(layer_map) != cfg["num_hidden_layers"] or max(layer_map) >= src_cfg["num_hidden_layers"] or min(layer_map) < -1:
        raise SystemExit(f"--grow-map needs {cfg['num_hidden_layers']} indices below {src_cfg['num_hidden_layers']}")
    with torch.no_grad():
        model.model.embed_tokens.load_state_dict(src.model.embed_tokens.state_dict())
        model.model.norm.load_state_dict(src.model.norm.state_dict())
        model.lm_head.load_state_dict(src.lm_head.state_dict())
        seen = set()
        for i, j in enumerate(layer_map):
            if j < 0:
                continue  # a fresh layer: keeps its random initialisation (small output projections)
            model.model.layers[i].load_state_dict(src.model.layers[j].state_dict())
            if j in seen:
                model.model.layers[i].self_attn.o_proj.weight.zero_()
                model.model.layers[i].mlp.down_proj.weight.zero_()
            seen.add(j)
    print(json.dumps({"grown_from": src_dir, "layer_map": layer_map}), flush=True)


def save_checkpoint(path, model, opt, step, args, rng_state):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "args": vars(args), "rng": rng_state}, tmp)
    os.replace(tmp, path)


def train(args):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with open(os.path.join(args.tokenizer, "tokenizer.json")) as f:
        tok = json.load(f)
    vocab_size = max(max(tok["model"]["vocab"].values()), max(t["id"] for t in tok["added_tokens"])) + 1
    cfg = model_config(args, vocab_size)
    model = LlamaForCausalLM(cfg)
    model.init_weights(args.seed)
    if args.grow_from and not os.path.exists(os.path.join(args.work, "ckpt.pt")):
        grow_from(model, args.grow_from, [int(x) for x in args.grow_map.split(",")])
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed_tokens" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    os.makedirs(args.work, exist_ok=True)
    ckpt_path = os.path.join(args.work, "ckpt.pt")
    step = 0
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = ck["step"]
        print(json.dumps({"resumed": ckpt_path, "step": step}), flush=True)
    if args.export_only:
        export(model, cfg, args.tokenizer, args.export, {"step": str(step)})
        print(json.dumps({"exported": args.export, "step": step}))
        return

    rows = read_jsonl(args.data)
    valid = read_jsonl(args.valid)[: args.valid_count] if args.valid else []
    print(json.dumps({"params": n_params, "train_examples": len(rows), "valid_examples": len(valid), "config": cfg}), flush=True)
    log = open(os.path.join(args.work, "log.jsonl"), "a")

    # The order of examples is a function of (seed, epoch) alone, so a resumed run sees the
    # same batches as an uninterrupted one.
    def batch_rows(s):
        per_epoch = len(rows) // args.batch
        epoch, k = divmod(s, per_epoch)
        perm = np.random.default_rng(args.seed * 1000003 + epoch).permutation(len(rows))
        return [rows[j] for j in perm[k * args.batch : (k + 1) * args.batch]]

    model.train()
    t_last = time.time()
    acc_loss = acc_hits = acc_total = 0.0
    acc_n = 0
    until = min(args.steps, args.until) if args.until else args.steps
    while step < until:
        lr = lr_at(step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        chunk = batch_rows(step)
        ids, w, is_answer = make_batch(chunk, 0, args.answer_weight, args.text_weight)
        ids, w = ids.to(device), w.to(device)
        logits = model(ids)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none").view(w.shape)
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        h, t = batch_metrics(logits.detach().cpu(), ids.cpu(), is_answer, chunk)
        acc_loss += float(loss)
        acc_hits += h
        acc_total += t
        acc_n += 1
        if step % args.log_every == 0 or step == until:
            now = time.time()
            rec = {
                "step": step,
                "lr": round(lr, 6),
                "loss": round(acc_loss / acc_n, 4),
                "train_answer_em_tf": round(acc_hits / max(acc_total, 1), 4),
                "step_s": round((now - t_last) / acc_n, 3),
                "tokens_per_step": int(ids.numel()),
            }
            t_last = now
            acc_loss = acc_hits = acc_total = 0.0
            acc_n = 0
            if valid and (step % args.eval_every == 0 or step == until):
                rec.update({k: round(v, 4) for k, v in evaluate(model, valid, args, device).items()})
                t_last = time.time()
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % args.ckpt_every == 0 or step == until:
            save_checkpoint(ckpt_path, model, opt, step, args, None)
            if args.export:
                export(model.cpu() if device.type != "cpu" else model, cfg, args.tokenizer, args.export, {"step": str(step)})
                model.to(device)
            t_last = time.time()
    print(json.dumps({"done": step, "export": args.export}), flush=True)


def dump_logits(args):
    torch.set_num_threads(args.threads or 2)
    model, cfg = load_exported(args.dump_logits, torch.float64)
    with open(args.ids) as f:
        ids = json.load(f)
    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.long))[0]
    logits.numpy().astype("<f8").tofile(args.out_logits)
    print(json.dumps({"rows": len(ids), "vocab": cfg["vocab_size"], "out": args.out_logits}))


def dump_attention(args):
    """Per layer and query head, how much of the question's attention lands on the answer
    document (the signal CacheFocus prunes documents by). For each example: the mean over the
    question's tokens of the probability mass on each document; reported as the answer
    document's mass, its share of the mass on all documents, and how often it is the document
    with the most mass (top-1), plus the same with the heads averaged (CacheFocus's default)."""
    torch.set_num_threads(args.threads or 2)
    model, cfg = load_exported(args.dump_attention, torch.float32)
    with open(args.examples) as f:
        examples = json.load(f)
    L, H = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    for layer in model.model.layers:
        layer.self_attn.keep_probs = True
    mass = torch.zeros(L, H + 1)
    share = torch.zeros(L, H + 1)
    top1 = torch.zeros(L, H + 1)
    with torch.no_grad():
        for ex in examples:
            model(torch.tensor([ex["ids"]], dtype=torch.long))
            q0, q1 = ex["query"]
            for l, layer in enumerate(model.model.layers):
                p = layer.self_attn.probs[0, :, q0:q1, :].mean(dim=1)  # [H, T]: mean over question tokens
                p = torch.cat([p, p.mean(dim=0, keepdim=True)])  # + heads averaged
                per_doc = torch.stack([p[:, s:e].sum(dim=1) for s, e in ex["docs"]], dim=1)  # [H+1, docs]
                a = per_doc[:, ex["answerDoc"]]
                mass[l] += a
                share[l] += a / per_doc.sum(dim=1).clamp_min(1e-30)
                top1[l] += (per_doc.argmax(dim=1) == ex["answerDoc"]).float()
    n = len(examples)
    out = {"layers": L, "heads": H, "examples": n,
           "answerMass": (mass / n).tolist(), "answerShare": (share / n).tolist(), "answerTop1": (top1 / n).tolist()}
    if args.valid:
        # What each layer is worth: teacher-forced answer exact match with that layer skipped
        # (its attention and MLP add nothing to the residual stream).
        for layer in model.model.layers:
            layer.self_attn.keep_probs = False
        rows = read_jsonl(args.valid)[: args.valid_count]
        out["validExamples"] = len(rows)
        out["answerEm"] = evaluate(model, rows, args, torch.device("cpu"))["valid_answer_em_tf"]
        out["answerEmWithout"] = []
        for layer in model.model.layers:
            layer.ablated = True
            out["answerEmWithout"].append(evaluate(model, rows, args, torch.device("cpu"))["valid_answer_em_tf"])
            layer.ablated = False
    with open(args.out_attention, "w") as f:
        json.dump(out, f)
    print(json.dumps({"examples": n, "out": args.out_attention}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="training JSONL from make-data.mjs")
    p.add_argument("--valid", help="validation JSONL (make-data.mjs --split valid)")
    p.add_argument("--valid-count", type=int, default=200)
    p.add_argument("--tokenizer", help="folder with tokenizer.json and tokenizer_config.json")
    p.add_argument("--work", help="checkpoints and log.jsonl")
    p.add_argument("--export", help="HF checkpoint folder written at every checkpoint and at the end")
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--context", type=int, default=1024, help="training context length T (max_position_embeddings)")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--ffn", type=int, default=384)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--until", type=int, default=0, help="stop (with a checkpoint) at this step; the schedule still spans --steps. For curricula: run a phase on one --data until a step, resume on another")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--answer-weight", type=float, default=1.0)
    p.add_argument("--text-weight", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--grow-from", metavar="MODELDIR", help="start from this trained HF checkpoint (same width), deepened by --grow-map (depth growth)")
    p.add_argument("--grow-map", help="comma-separated source layer of each layer, -1 for a fresh one, e.g. 0,-1,-1,1,-1,-1; copies after the first start with zero output projections")
    p.add_argument("--dump-logits", metavar="MODELDIR")
    p.add_argument("--dump-attention", metavar="MODELDIR", help="attention of the question on the answer document (needs --examples, --out-attention)")
    p.add_argument("--examples", help="JSON examples for --dump-attention (scripts/train/attention.mjs writes them)")
    p.add_argument("--out-attention", help="output JSON (with --dump-attention)")
    p.add_argument("--ids", help="JSON list of token ids (with --dump-logits)")
    p.add_argument("--out-logits", help="output file (with --dump-logits)")
    args = p.parse_args()
    if args.dump_logits:
        if not args.ids or not args.out_logits:
            p.error("--dump-logits needs --ids and --out-logits")
        return dump_logits(args)
    if args.dump_attention:
        if not args.examples or not args.out_attention:
            p.error("--dump-attention needs --examples and --out-attention")
        return dump_attention(args)
    if not args.work or not args.tokenizer or (not args.export_only and not args.data):
        p.error("training needs --data, --tokenizer and --work (and usually --export)")
    train(args)


if __name__ == "__main__":
    sys.exit(main())
