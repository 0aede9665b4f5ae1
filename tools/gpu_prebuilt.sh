# Sourced by tools/gpu_check.sh and tools/gpu_profile.sh (not run alone): unpacks what
# tools/gpu_pack.sh packed (a folder with bin/ and lib/, or DIR.tar.xz) and makes its binaries
# runnable on this machine.
#   use_prebuilt PACK NAME [NEED]   sets prebuilt (the folder), test_bins, bench_bins,
#                            LD_LIBRARY_PATH in the caller's shell (so not in a pipeline);
#                            returns non-zero, with a message starting "NAME: ", when that cannot
#                            be done. NEED: "tests" (default) or "bench", the binaries that must
#                            be there.
use_prebuilt() {
  local who="${2:-gpu_prebuilt}" need="${3:-tests}"
  prebuilt="${1:-}"
  [ -n "$prebuilt" ] || { echo "$who: --prebuilt needs the folder (or .tar.xz) tools/gpu_pack.sh wrote"; return 1; }
  if [[ "$prebuilt" == *.tar.xz ]]; then
    rm -rf /tmp/somnus_prebuilt && mkdir -p /tmp/somnus_prebuilt && tar xJf "$prebuilt" -C /tmp/somnus_prebuilt || return 1
    prebuilt="/tmp/somnus_prebuilt/$(basename "$prebuilt" .tar.xz)"
  fi
  test_bins=$(ls "$prebuilt"/bin/*_test_cuda_* 2>/dev/null)
  bench_bins=$(ls "$prebuilt"/bin/bench_*cuda* 2>/dev/null)
  if [ "$need" = bench ]; then
    [ -n "$bench_bins" ] || { echo "$who: no CUDA benchmark binaries in $prebuilt/bin"; return 1; }
  else
    [ -n "$test_bins" ] || { echo "$who: no CUDA test binaries in $prebuilt/bin"; return 1; }
  fi
  # The packed libraries first; the CUDA libraries (cuBLASLt) from this machine's toolkit.
  export LD_LIBRARY_PATH="$prebuilt/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  local missing lib found
  missing=$(ldd $test_bins $bench_bins 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
  for lib in $missing; do  # e.g. a pip-installed cuBLAS: look for it where Python keeps it
    found=$(timeout 60 find /usr /opt /lib /root -name "$lib" 2>/dev/null | head -1)
    [ -n "$found" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")" && echo "$who: $lib from $found"
  done
  missing=$(ldd $test_bins $bench_bins 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
  [ -z "$missing" ] || { echo "$who: shared libraries not found: $missing"; return 1; }
}
