#!/usr/bin/python3
"""Time PyTorch KV-cache generation at the sizes bench_generate uses, with the fair settings of
DESIGN §6 (OMP_NUM_THREADS=<threads>, OMP_WAIT_POLICY=PASSIVE, torch.set_num_threads), then run
our benchmark at the same thread count and print both with the ratio.

The model is the same size as bench_generate's: GPT-2 style (LayerNorm, GELU tanh form, learned
positions, tied embeddings, biases), L=4, C=256, H=4, V=4096, MLP 4C, block 128, f32, nanoGPT
init. Prompts: B random sequences of 32 tokens; 96 new tokens each, sampled at temperature 1
(softmax + torch.multinomial), with the log-prob of each sampled token gathered, as ours
returns it. The KV cache is preallocated per layer, (B, H, 128, D), and written in place (the
same scheme as nn::StaticKVCache), under torch.inference_mode().

Run with Debian's python3-torch:
  /usr/bin/python3 bench/reference/generate.py [--threads N] [--build build] [--batches 1,16] [--no-ours]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

PROMPT, NEW = 32, 96
V, L, C, H, BLOCK = 4096, 4, 256, 4, 128


def build_model(torch):
    nn = torch.nn
    F = torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(C, 3 * C)
            self.proj = nn.Linear(C, C)

        def forward(self, x, cache, layer, start):
            B, T, _ = x.shape
            D = C // H
            q, k, v = self.qkv(x).split(C, dim=2)
            q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = k.view(B, T, H, D).transpose(1, 2)
            v = v.view(B, T, H, D).transpose(1, 2)
            kc, vc = cache[layer]
            kc[:, :, start:start + T] = k  # in place: no concatenation
            vc[:, :, start:start + T] = v
            S = start + T
            k, v = kc[:, :, :S], vc[:, :, :S]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))  # (B, H, T, S)
            if T > 1:
                mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
                att = att.masked_fill(~mask, float("-inf"))
            y = F.softmax(att, dim=-1) @ v  # (B, H, T, D)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(C)
            self.attn = Attention()
            self.ln2 = nn.LayerNorm(C)
            self.fc = nn.Linear(C, 4 * C)
            self.out = nn.Linear(4 * C, C)

        def forward(self, x, cache, layer, start):
            x = x + self.attn(self.ln1(x), cache, layer, start)
            return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(V, C)
            self.wpe = nn.Embedding(BLOCK, C)
            self.blocks = nn.ModuleList([Block() for _ in range(L)])
            self.ln_f = nn.LayerNorm(C)
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif "ln" in name:
                    nn.init.ones_(p)
                else:
                    std = 0.02 / math.sqrt(2 * L) if name.endswith(("proj.weight", "out.weight")) else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward_last(self, ids, cache, start):
            """ids (B, T) at positions start.. -> logits of the last position (B, V)."""
            T = ids.shape[1]
            x = self.wte(ids) + self.wpe(torch.arange(start, start + T))
            for i, b in enumerate(self.blocks):
                x = b(x, cache, i, start)
            return self.ln_f(x[:, -1]) @ self.wte.weight.t()  # tied head, last position only

    return GPT()


def generate(torch, model, prompts, gen):
    B = prompts.shape[0]
    D = C // H
    cache = [(torch.empty(B, H, BLOCK, D), torch.empty(B, H, BLOCK, D)) for _ in range(L)]
    tokens, logprobs = [], []
    logits = model.forward_last(prompts, cache, 0)  # prefill
    for n in range(NEW):
        lp = torch.log_softmax(logits, dim=-1)
        tok = torch.multinomial(lp.exp(), 1, generator=gen)  # (B, 1), temperature 1
        tokens.append(tok)
        logprobs.append(lp.gather(1, tok))
        if n + 1 < NEW:
            logits = model.forward_last(tok, cache, PROMPT + n)
    return torch.cat(tokens, 1), torch.cat(logprobs, 1)


def torch_tokens_per_s(torch, model, B, min_time):
    g = torch.Generator().manual_seed(99)
    prompts = torch.randint(0, V, (B, PROMPT), generator=g)
    gen = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        toks, _ = generate(torch, model, prompts, gen)  # warm-up
        assert toks.shape == (B, NEW)
        iters, start = 0, time.perf_counter()
        while True:
            generate(torch, model, prompts, gen)
            iters += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time and iters >= 2:
                break
    return B * NEW * iters / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default="build")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--no-ours", action="store_true", help="time PyTorch only")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    # The env must be set before torch initialises its thread pool: re-exec once if needed.
    want = {"OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
            "OMP_WAIT_POLICY": "PASSIVE"}
    if any(os.environ.get(k) != v for k, v in want.items()):
        env = dict(os.environ, **want)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    model = build_model(torch).eval()

    ours = {}
    if not args.no_ours:
        binary = os.path.join(args.build, "bench", "bench_generate")
        if not os.access(binary, os.X_OK):
            sys.exit(f"generate.py: no benchmark binary at {binary}: build it first (cmake --preset release && "
                     f"cmake --build build), or point --build at your build folder (e.g. --build build-cpu)")
        out = subprocess.run([binary, "--benchmark_filter=BM_generate_kv_cache/", "--benchmark_format=json",
                              f"--benchmark_min_time={args.min_time}"], capture_output=True, text=True, check=True)
        for b in json.loads(out.stdout)["benchmarks"]:
            batch = int(b["name"].split("/")[1].split(":")[1])
            ours[batch] = b["tokens/s"]

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# generation tokens/s (GPT-2 style L={L} C={C} H={H} V={V}, prompt {PROMPT}, {NEW} new, f32), "
          f"{args.threads} threads, {cpu}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| B | somnus tokens/s | torch tokens/s | somnus / torch |")
    print("|---|---|---|---|")
    for B in batches:
        t = torch_tokens_per_s(torch, model, B, args.min_time)
        s = ours.get(B, float("nan"))
        print(f"| {B} | {s:.0f} | {t:.0f} | {s / t:.2f} |")


if __name__ == "__main__":
    main()
