#!/usr/bin/python3
"""Time one CPU training step of the tiny GPT-2-style config in PyTorch, with the fair settings of
DESIGN §6 (OMP_NUM_THREADS=<threads>, OMP_WAIT_POLICY=PASSIVE, torch.set_num_threads), then run
our bench_train_step at the same thread count and print both with the ratio (ours / torch).

Config (issue 3 §9): L=4, C=256, 4 heads, T=128, B=8, vocab 4096, MLP 4·C, learned positions,
tied embeddings, biases, GELU (tanh), f32. Step: zero_grad(set_to_none), forward, cross-entropy,
backward, AdamW (lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices, 0 on biases
and norm weights) — the same as bench/bench_train_step.cpp. The model is nanoGPT's, with the
explicit causal attention (torch 1.13 has no fused scaled_dot_product_attention).

Run with Debian's python3-torch:
    /usr/bin/python3 bench/reference/train_step.py [--threads N] [--build build] [--min-time 3] [--rounds 3]
"""
import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

B, T, L, C, H, V = 8, 128, 4, 256, 4, 4096


def build_model(torch):
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C)
            self.c_fc = nn.Linear(C, 4 * C)
            self.mlp_proj = nn.Linear(4 * C, C)
            self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).tril())

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q = q.view(b, t, H, c // H).transpose(1, 2)  # (B, H, T, D)
            k = k.view(b, t, H, c // H).transpose(1, 2)
            v = v.view(b, t, H, c // H).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // H))
            att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
            x = x + self.c_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(T, C)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C)
            for p in self.parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, 0.0, 0.02)

        def forward(self, ids, targets):
            x = self.wte(ids) + self.wpe(torch.arange(ids.size(1)))
            for blk in self.blocks:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.t()  # tied head
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    return GPT()


def make_torch_step(foreach):
    import torch

    torch.manual_seed(1337)
    model = build_model(torch)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=foreach)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        model(ids, targets).backward()
        opt.step()

    for _ in range(3):
        step()
    return step, sum(p.numel() for p in model.parameters())  # wpe included, wte once (tied)


def time_torch(step, min_time):
    """Median seconds per step over at least min_time seconds."""
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_ours(binary, min_time, bench_filter):
    out = subprocess.run([binary, "--benchmark_format=json", f"--benchmark_min_time={min_time}",
                          f"--benchmark_filter={bench_filter}"], capture_output=True, text=True, check=True)
    return {b["name"].split("/")[0]: b for b in json.loads(out.stdout)["benchmarks"]}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default="build")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each side keeps its best")
    args = ap.parse_args()

    # The env must be set before torch initialises its thread pools: re-exec once if needed.
    want = {"OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
            "OMP_WAIT_POLICY": "PASSIVE"}
    if any(os.environ.get(k) != v for k, v in want.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, **want))

    import torch

    torch.set_num_threads(args.threads)
    binary = os.path.join(args.build, "bench", "bench_train_step")
    if not os.access(binary, os.X_OK):
        sys.exit(f"train_step.py: no benchmark binary at {binary}: build it first (cmake --preset release && "
                 f"cmake --build build), or point --build at your build folder (e.g. --build build-cpu)")
    # The machine may be shared: interleave the contenders in rounds and keep each one's best
    # round, so a burst of outside load does not land on one side only.
    steps = {"torch AdamW(foreach=False)": make_torch_step(False), "torch AdamW(foreach=True)": make_torch_step(True)}
    best = {"somnus": math.inf, **{k: math.inf for k in steps}}
    n_params = None
    for _ in range(args.rounds):
        ours = time_ours(binary, args.min_time, "BM_train_step/")
        best["somnus"] = min(best["somnus"], ours["BM_train_step"]["real_time"])  # ms
        n_params = ours["BM_train_step"]["params"]
        for name, (step, _) in steps.items():
            best[name] = min(best[name], time_torch(step, args.min_time) * 1e3)
    torch_params = steps["torch AdamW(foreach=False)"][1]
    if torch_params != n_params:
        print(f"warning: parameter counts differ: ours {n_params:.0f}, torch {torch_params}")
    flops = B * T * (6.0 * n_params + 6.0 * L * T * C)  # llm.c's model FLOPs per step (DESIGN §6)
    ours_ms = best["somnus"]
    best_torch = min(v for k, v in best.items() if k != "somnus")
    parts = time_ours(binary, args.min_time, "BM_train_(forward|forward_backward|adamw)/")

    print(f"# CPU training step, tiny GPT-2 (L={L}, C={C}, H={H}, T={T}, B={B}, V={V}, "
          f"{n_params / 1e6:.2f} M params), f32, {args.threads} threads")
    print(f"# {cpu_model()}, torch {torch.__version__}, {datetime.date.today().isoformat()}, "
          f"OMP_WAIT_POLICY=PASSIVE, best of {args.rounds} interleaved rounds")
    print("| implementation | ms/step | tokens/s | model GFLOP/s | ours / this |")
    print("|---|---|---|---|---|")
    rows = list(best.items())
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {B * T / ms * 1e3:.0f} | {flops / ms / 1e6:.1f} | {ours_ms / ms:.2f} |")
    print()
    print("somnus breakdown (ms): " + ", ".join(
        f"{k[len('BM_train_'):]} {v['real_time']:.1f}" for k, v in parts.items()))
    print(f"ratio ours / best torch: {ours_ms / best_torch:.2f}  (target <= 1.0, goal 0.7)")


if __name__ == "__main__":
    main()
