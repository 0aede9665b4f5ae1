#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for somnus, then configure and build.
# Idempotent: installs only missing packages (one `apt-get update` at most), configures only
# when the build directory has no cache, and the build itself is incremental.
#
#   tools/setup.sh                 # packages + configure + build (build/, CUDA when nvcc is found)
#   tools/setup.sh --torch         # also python3-torch, for bench/reference/*.py parity and timing
#   SOMNUS_BUILD_DIR=build-cpu SOMNUS_CUDA=OFF tools/setup.sh
#   SOMNUS_TARGETS=somnus tools/setup.sh    # build only these targets (the demo)
set -euo pipefail
cd "$(dirname "$0")/.."

want_torch=0
for arg in "$@"; do
  case "$arg" in
    --torch) want_torch=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake g++ libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libopenblas-openmp-dev
          nlohmann-json3-dev libcli11-dev libfmt-dev ccache gnuplot-nox python3
          clang libclang-rt-14-dev libomp-14-dev)   # clang + libFuzzer + OpenMP: tools/fuzz.sh
[ "$want_torch" = 1 ] && packages+=(python3-torch python3-numpy)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all Debian packages present"
fi

build_dir="${SOMNUS_BUILD_DIR:-build}"
cuda="${SOMNUS_CUDA:-AUTO}"
jobs="${SOMNUS_JOBS:-$(nproc)}"
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DSOMNUS_CUDA="$cuda"
fi
targets=()
for t in ${SOMNUS_TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$build_dir" -j "$jobs" "${targets[@]}"
echo "setup: built into $build_dir"
