#!/usr/bin/env python3
"""Checks the SASS of Hopper wgmma kernels for register accesses while an HGMMA is in flight.

The PTX ISA makes it undefined to access the accumulator registers (or an RS instruction's A
registers) of a wgmma before the wgmma.wait_group that retires it; ptxas normally serializes
rather than break that, but only the SASS shows what was emitted. This walks each function's
SASS in address order: an HGMMA marks its accumulators (64 x N / 128 threads = N / 2 registers
from its first operand) and, in the RS form, its four A registers as in flight; `gsb0` closes a
group; `WARPGROUP.DEPBAR.LE gsb0, k` retires all but the newest k groups; any other instruction
that names an in-flight register is reported.

A linear scan: it does not follow branches or loop back-edges, so a loop-carried group or a
path the scan does not see is not checked (the kernels here wait for every group before a
back-edge). Written 2026-11-27 (from a reviewer's check of the asynchronous attention kernels).

  cuobjdump -sass attention.cubin | tools/wgmma_sass_check.py [-]      (or a file of SASS)
  (build the cubin: nvcc -std=c++20 -O3 -gencode arch=compute_90a,code=sm_90a -cubin
   --expt-relaxed-constexpr --extended-lambda -I. kernels/cuda/attention.cu)

Exit status 1 if any function has a violation.
"""
import re
import sys


def check(name, lines):
    groups, open_group, violations, hgmma = [], set(), 0, 0
    for line in lines:
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;", line)
        if not m:
            continue
        addr, ins = int(m.group(1), 16), m.group(2)
        if "HGMMA" in ins:
            hgmma += 1
            n = int(re.search(r"HGMMA\.64x(\d+)x16", ins).group(1))
            ops = [int(r) for r in re.findall(r"\bR(\d+)", ins.split(" ", 1)[1])]
            regs = set(range(ops[0], ops[0] + n // 2))
            if re.search(r"HGMMA\S* R\d+, R\d+, gdesc", ins):  # RS: A from registers
                regs |= set(range(ops[1], ops[1] + 4))
            open_group |= regs
            if "gsb0" in ins:
                groups.append(open_group)
                open_group = set()
            continue
        dep = re.search(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x([0-9a-f]+)", ins)
        if dep:
            del groups[: max(0, len(groups) - int(dep.group(1), 16))]
            continue
        used = set()
        for r in re.finditer(r"\bR(\d+)(\.64)?", ins):
            used.add(int(r.group(1)))
            if r.group(2):
                used.add(int(r.group(1)) + 1)
        bad = used & set().union(open_group, *groups)
        if bad:
            violations += 1
            if violations <= 5:
                print(f"  {hex(addr)}: {ins}  (in flight: R{', R'.join(map(str, sorted(bad)[:6]))})")
    if hgmma:
        print(f"{name}: {hgmma} HGMMA, {violations} in-flight register accesses, {len(groups)} groups not retired at the end")
    return violations


def main():
    src = sys.stdin if len(sys.argv) < 2 or sys.argv[1] == "-" else open(sys.argv[1])
    text = src.read()
    total = 0
    for part in re.split(r"(?:^|\n)\s*Function : ", text)[1:]:
        name = part.split("\n", 1)[0].strip()
        total += check(name, part.split("\n")[1:])
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
