#!/usr/bin/python3
"""PyTorch reference for the whole-model parity test (tests/nn/test_parity.cpp), as llm.c does it.

The C++ test writes into --dir:
  config.json         {"model": <TransformerConfig JSON>, "train": {lr, beta1, beta2, eps, steps,
                       "groups": [{"period", "weight_decay", "params": [names]}]}}
  weights.safetensors the model's state_dict under our names (blocks.0.attn.wqkv.weight, ...)
  batch.safetensors   "ids" and "targets", int64 (B, T); targets == -1 are ignored

This script builds the same model in plain PyTorch (Debian's python3-torch, f32, CPU) from those
weights, written top to bottom with torch's own ops (F.layer_norm, F.gelu(tanh), F.silu,
F.cross_entropy, torch.optim.AdamW), and writes into --dir:
  reference.safetensors  "logits" (B, T, V), "grad.<name>" for every parameter (of the first
                         step), "final.<name>" every parameter after the last optimiser step
  reference.json         {"loss": first loss, "losses": [loss before each of the `steps` steps and
                          after the last], "torch": version}

The optimiser side follows nn/optim.h exactly: one torch.optim.AdamW per parameter group, and the
multi-frequency rule of PARADIGM §1: every group accumulates .grad every step and, at step k
(counted from 1), a group with period C applies when k % C == 0, from the accumulated gradient
divided by C (AccumulationReduction::mean), then clears its grads.

Reads safetensors with a small hand-written reader (8-byte little-endian header length, JSON
header, raw little-endian data), so nothing beyond torch is needed.

    /usr/bin/python3 tests/reference/parity.py --dir /tmp/somnus-parity-XXXX
"""
import argparse
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I64": torch.int64}
NAMES = {v: k for k, v in DTYPES.items()}


# ---------------------------------------------------------------- safetensors

def load_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        dtype = DTYPES[e["dtype"]]
        if end == begin:
            t = torch.empty(e["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(e["shape"])
        out[name] = t.clone()
    return out


def save_safetensors(path, tensors):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        raw = t.numpy().tobytes()  # native order is little endian on every platform we run on
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


# ---------------------------------------------------------------- the model


class Reference:
    """The somnus Transformer (nn/transformer.h) with one dense MLP per CMS level, in PyTorch.
    Parameters live in a dict under somnus's names, so no name mapping can drift."""

    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.p = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
        self.C = cfg["n_embd"]
        self.Hq = cfg["n_head"]
        self.Hkv = cfg["n_kv_head"] or cfg["n_head"]
        self.D = self.C // self.Hq
        self.eps = cfg["norm_eps"]
        for lv in cfg["levels"]:
            if lv["kind"] != "dense" or lv["n_slots"] != 0:
                raise SystemExit("parity.py: only dense levels without slots are supported")

    def linear(self, x, name):
        return F.linear(x, self.p[name + ".weight"], self.p.get(name + ".bias"))

    def norm(self, x, name):
        w = self.p[name + ".weight"]
        if self.cfg["norm"] == "layernorm":
            return F.layer_norm(x, (self.C,), w, self.p.get(name + ".bias"), self.eps)
        # RMSNorm as HF Llama: x * rsqrt(mean(x²) + eps) * w
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x, T):
        # HF Llama "rotate half": dim i pairs with i + D/2; angle = pos * theta^(-2i/D). Tables
        # in f64 then rounded, as nn/layers.cpp does.
        D, half = self.D, self.D // 2
        inv_freq = self.cfg["rope_theta"] ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
        cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)  # (T, D)
        sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
        x1, x2 = x[..., :half], x[..., half:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def attention(self, x, name):
        B, T, C = x.shape
        Hq, Hkv, D = self.Hq, self.Hkv, self.D
        q, k, v = self.linear(x, name + ".wqkv").split([Hq * D, Hkv * D, Hkv * D], -1)
        q = q.view(B, T, Hq, D).transpose(1, 2)  # (B, Hq, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        if self.cfg["pos"] == "rope":
            q, k = self.rope(q, T), self.rope(k, T)
        # GQA: query head h reads kv head h // (Hq / Hkv)
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, Hq, T, T)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, Hq * D)
        return self.linear(y, name + ".wo")

    def mlp(self, x, name):
        if self.cfg["mlp"] == "gelu":
            return self.linear(F.gelu(self.linear(x, name + ".fc"), approximate="tanh"), name + ".proj")
        return self.linear(F.silu(self.linear(x, name + ".gate")) * self.linear(x, name + ".up"), name + ".down")

    def forward(self, ids):
        B, T = ids.shape
        x = F.embedding(ids, self.p["wte.weight"])  # (B, T, C)
        if self.cfg["pos"] == "learned":
            x = x + self.p["wpe.weight"][:T]
        for i in range(self.cfg["n_layer"]):
            b = f"blocks.{i}"
            x = x + self.attention(self.norm(x, b + ".attn_norm"), b + ".attn")
            for l in range(len(self.cfg["levels"])):
                c = f"{b}.cms.{l}"
                x = x + self.mlp(self.norm(x, c + ".norm"), c + ".mlp")
        x = self.norm(x, "ln_f")
        head = self.p["lm_head.weight"] if "lm_head.weight" in self.p else self.p["wte.weight"]
        return x @ head.t()  # (B, T, V)

    def loss(self, ids, targets):
        logits = self.forward(ids)
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions; the sizes are tiny

    with open(os.path.join(args.dir, "config.json")) as f:
        config = json.load(f)
    cfg, train = config["model"], config["train"]
    weights = load_safetensors(os.path.join(args.dir, "weights.safetensors"))
    batch = load_safetensors(os.path.join(args.dir, "batch.safetensors"))
    ids, targets = batch["ids"].long(), batch["targets"].long()

    model = Reference(cfg, weights)
    grouped = [n for g in train["groups"] for n in g["params"]]
    if sorted(grouped) != sorted(model.p):
        raise SystemExit(f"parity.py: optimiser groups {sorted(grouped)} do not cover the weights {sorted(model.p)}")
    groups = []
    for g in train["groups"]:
        opt = torch.optim.AdamW([model.p[n] for n in g["params"]], lr=train["lr"],
                                betas=(train["beta1"], train["beta2"]), eps=train["eps"],
                                weight_decay=g["weight_decay"], foreach=False)
        groups.append((g["period"], [model.p[n] for n in g["params"]], opt))

    out, losses = {}, []
    for k in range(1, train["steps"] + 1):
        logits, loss = model.loss(ids, targets)
        loss.backward()
        losses.append(loss.item())
        if k == 1:
            out["logits"] = logits.detach()
            for n, t in model.p.items():
                out["grad." + n] = t.grad.detach().clone()
        for period, params, opt in groups:
            if k % period != 0:
                continue  # this group keeps accumulating
            if period != 1:
                for t in params:
                    if t.grad is not None:
                        t.grad.div_(period)
            opt.step()
            opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        losses.append(model.loss(ids, targets)[1].item())
    for n, t in model.p.items():
        out["final." + n] = t.detach()

    save_safetensors(os.path.join(args.dir, "reference.safetensors"), out)
    with open(os.path.join(args.dir, "reference.json"), "w") as f:
        json.dump({"loss": losses[0], "losses": losses, "torch": torch.__version__}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
