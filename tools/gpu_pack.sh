#!/usr/bin/env bash
# Build the CUDA tests and benchmarks on this machine and pack them, with the shared libraries
# they need that a bare GPU machine may lack (OpenBLAS, fmt, libgomp, ...), into one folder that
# travels to a lent GPU machine (and DIR.tar.xz, the same compressed). There,
# `tools/gpu_check.sh --prebuilt DIR[.tar.xz]` runs them without
# configuring or compiling anything (the GPU image has nvcc and the CUDA libraries, but not our
# Debian build dependencies, and its device time is scarce).
#
#   tools/gpu_pack.sh [build-dir] [pack-dir]     (defaults build-gpu, .gpu)
#
# Host code is built without -march=native (the GPU machine's CPU differs from this one); CUDA
# code for SOMNUS_CUDA_ARCH (default 90a: H100/H200, with wgmma). The CUDA libraries themselves (cudart is
# static; cuBLAS/cuBLASLt) are left out: they come from the GPU machine's toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir="${1:-build-gpu}"
pack="${2:-.gpu}"
arch="${SOMNUS_CUDA_ARCH:-90a}"

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSOMNUS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DSOMNUS_NATIVE=OFF -DSOMNUS_BUILD_BENCH=ON > /tmp/somnus_gpu_pack.configure.log 2>&1 ||
  { tail -30 /tmp/somnus_gpu_pack.configure.log; exit 1; }
targets=$(cmake --build "$build_dir" --target help | { grep -oE '\S+_test_cuda_\S+|bench_\S*cuda\S*' || true; } | sort -u)
[ -n "$targets" ] || { echo "gpu_pack: no CUDA targets (is SOMNUS_CUDA on?)"; exit 1; }
# shellcheck disable=SC2086
cmake --build "$build_dir" -j "$(nproc)" --target $targets

rm -rf "$pack"
mkdir -p "$pack/bin" "$pack/lib"
for t in $targets; do
  f=$(find "$build_dir" -type f -name "$t" -perm -u+x | head -1)
  [ -n "$f" ] || { echo "gpu_pack: built target $t not found"; exit 1; }
  cp "$f" "$pack/bin/"
  strip --strip-debug "$pack/bin/$t"
done
# Where the binaries came from, for the results (gpu_check.sh prints it): the commit, "-dirty"
# when the working tree had uncommitted changes, and when the pack was built.
echo "$(git describe --always --dirty 2>/dev/null || echo unknown) $(git log -1 --format=%cI 2>/dev/null) packed $(date -u +%FT%TZ)" > "$pack/SOURCE"
# Shared libraries outside glibc and the CUDA toolkit.
ldd "$pack"/bin/* | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*|libcublas*|libcudart*|libnvidia*) ;;
    *) cp -L "$lib" "$pack/lib/" ;;
  esac
done
# One solid archive: the binaries share most of their bytes (the static somnus libraries and
# their CUDA fatbins), so xz takes ~190 MB to ~13 MB, under the 64 MiB a device call carries.
tar cf - -C "$(dirname "$pack")" "$(basename "$pack")" | xz -9 -T1 > "$pack.tar.xz"
echo "gpu_pack: $(ls "$pack/bin" | wc -l) binaries, $(ls "$pack/lib" | wc -l) libraries, $(du -sh "$pack" | cut -f1) in $pack, $(du -sh "$pack.tar.xz" | cut -f1) in $pack.tar.xz, from $(cat "$pack/SOURCE")"
