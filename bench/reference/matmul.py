#!/usr/bin/python3
"""Time PyTorch CPU matmul at the sizes bench_kernels_cpu uses, with the fair settings of
DESIGN §6 (OMP_NUM_THREADS=<threads>, OMP_WAIT_POLICY=PASSIVE, torch.set_num_threads), then
run our benchmark at the same thread count and print both with the ratio.

Run with Debian's python3-torch:  /usr/bin/python3 bench/reference/matmul.py [--threads N] [--build build]
"""
import argparse
import json
import os
import subprocess
import sys
import time


def torch_gflops(n, threads, min_time=1.0):
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    for _ in range(2):
        torch.matmul(a, b)
    iters, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and iters >= 3:
            break
    return 2.0 * n ** 3 * iters / elapsed / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default="build")
    ap.add_argument("--sizes", default="512,1024,2048")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    # The env must be set before torch initialises its thread pool: re-exec once if needed.
    want = {"OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads),
            "OMP_WAIT_POLICY": "PASSIVE"}
    if any(os.environ.get(k) != v for k, v in want.items()):
        env = dict(os.environ, **want)
        os.execve(sys.executable, [sys.executable] + sys.argv, env)

    import torch
    ours = {}
    binary = os.path.join(args.build, "bench", "bench_kernels_cpu")
    if not os.access(binary, os.X_OK):
        sys.exit(f"matmul.py: no benchmark binary at {binary}: build it first (cmake --preset release && "
                 f"cmake --build build), or point --build at your build folder (e.g. --build build-cpu)")
    out = subprocess.run([binary, "--benchmark_filter=BM_matmul_(somnus|cblas)/", "--benchmark_format=json",
                          "--benchmark_min_time=1"], capture_output=True, text=True, check=True)
    for b in json.loads(out.stdout)["benchmarks"]:
        name, n = b["name"].split("/")[0], int(b["name"].split("/")[1])
        ours[(name, n)] = b["FLOP/s"] / 1e9

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# CPU matmul f32, {args.threads} threads, {cpu}, torch {torch.__version__}")
    print("| n | somnus GFLOP/s | raw cblas GFLOP/s | torch GFLOP/s | somnus / torch |")
    print("|---|---|---|---|---|")
    for n in sizes:
        t = torch_gflops(n, args.threads)
        s = ours.get(("BM_matmul_somnus", n), float("nan"))
        c = ours.get(("BM_matmul_cblas", n), float("nan"))
        print(f"| {n} | {s:.1f} | {c:.1f} | {t:.1f} | {s / t:.2f} |")


if __name__ == "__main__":
    main()
