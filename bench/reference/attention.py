#!/usr/bin/python3
"""Time PyTorch scaled_dot_product_attention (flash backend) at the shapes of the attention
benchmarks in bench/bench_kernels_cuda.cpp, so that tools/gpu_check.sh prints both side by side.

Shapes: bf16, MHA, B·T = 16k tokens, H·D = 2048, T in {512, 1k, 2k, 4k, 8k}, D in {64, 128},
causal and full; passes fwd, bwd (from a saved forward) and fwd+bwd. FLOPs (DESIGN §6): fwd
4·B·H·T²·D, halved when causal; bwd 2.5× fwd; fwd+bwd 3.5× fwd. Timing: CUDA events, median of
`--reps` calls after 3 warm-up calls, by bench_kernels_cuda's device timing (bench/gpu_timer.h):
before each call, a read of twice the L2 size (cold L2) and torch.cuda._sleep for 2× the
previous call's host time + 10 µs (the call's launches queued while the GPU is busy), so the
events bracket the device's work. `--call-timing` times as before 2026-11-27 late (events around
the call only).

  /usr/bin/python3 bench/reference/attention.py [--json out.json] [--reps 10]

--json writes Google Benchmark's JSON layout (name, real_time, time_unit, FLOP/s), which
gpu_check.sh's summary table reads. Exits 0 with a message when torch has no CUDA device.
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--call-timing", action="store_true")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("attention.py: no CUDA device for torch; PyTorch SDPA reference skipped")
        return 0
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        flash = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    except ImportError:  # older torch
        flash = lambda: torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False)

    import time
    device_timing = not args.call_timing and hasattr(torch.cuda, "_sleep")
    if not args.call_timing and not device_timing:
        print("attention.py: torch.cuda._sleep missing: timing events around the call only")
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    flush_buf = torch.zeros(2 * l2 // 4, dtype=torch.float32, device="cuda") if device_timing else None
    host_us = [200.0]  # the previous call's host time

    def median_ms(fn):
        ts = []
        for i in range(3 + args.reps):
            if device_timing:
                flush_buf.sum()  # reads 2× L2, writes one scalar: the evicted lines are clean
                # _sleep counts clock cycles: 2000 per µs covers the delay at clocks up to 2 GHz.
                torch.cuda._sleep(int(2000 * min(2000.0, 2.0 * host_us[0] + 10.0)))
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            t0 = time.perf_counter()
            fn()
            host_us[0] = (time.perf_counter() - t0) * 1e6
            b.record()
            torch.cuda.synchronize()
            if i >= 3:  # after 3 warm-up calls
                ts.append(a.elapsed_time(b))
        ts.sort()
        return ts[len(ts) // 2]

    rows = []
    for pass_name in ("fwd", "bwd", "fwd_bwd"):
        for causal in (True, False):
            for D in (64, 128):
                for T in (512, 1024, 2048, 4096, 8192):
                    B, H = max(1, 16384 // T), 2048 // D
                    g = torch.Generator(device="cuda").manual_seed(3)
                    mk = lambda: torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
                    q, k, v, do = mk().requires_grad_(), mk().requires_grad_(), mk().requires_grad_(), mk()
                    with flash():
                        if pass_name == "fwd":
                            with torch.no_grad():
                                fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                                ms = median_ms(fn)
                        elif pass_name == "bwd":
                            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                            fn = lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
                            ms = median_ms(fn)
                        else:
                            fn = lambda: torch.autograd.grad(
                                F.scaled_dot_product_attention(q, k, v, is_causal=causal), (q, k, v), do)
                            ms = median_ms(fn)
                    f = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0)
                    f *= {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[pass_name]
                    name = f"torch_sdpa_{pass_name}/{'causal' if causal else 'full'}/bf16/T:{T}/D:{D}"
                    rows.append({"name": name, "real_time": ms, "time_unit": "ms", "FLOP/s": f / (ms * 1e-3)})
                    print(f"{name:50s} {ms:9.3f} ms {f / (ms * 1e-3) / 1e12:8.1f} TFLOP/s", flush=True)
                    del q, k, v, do
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"context": {"cuda_device": torch.cuda.get_device_name(0)}, "benchmarks": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
