# Sourced by the scripts that run somnus binaries (demo.sh, test.sh, sanitize.sh):
# exports OPENBLAS_CORETYPE when OpenBLAS does not recognise this CPU and falls back to kernels
# without AVX2 ("Prescott": SSE3 only; seen on a virtualised AVX-512 Xeon, 4-5x slower CPU
# training) although the CPU has AVX2 + FMA or AVX-512. OpenBLAS reads the variable as it is
# loaded, so it must be in the environment of the process: the somnus CLI re-runs itself with
# it (tools/somnus.cpp); test and benchmark binaries rely on this file. A value already set is
# left as it is. Needs python3 (ctypes) and libopenblas.so.0; without them it does nothing.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  __somnus_core="$(python3 -c '
import ctypes
lib = ctypes.CDLL("libopenblas.so.0")
lib.openblas_get_corename.restype = ctypes.c_char_p
print(lib.openblas_get_corename().decode())' 2>/dev/null || true)"
  __somnus_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true) "
  __somnus_has() {
    for f in "$@"; do case "$__somnus_flags" in *" $f "*) ;; *) return 1 ;; esac; done
  }
  __somnus_want=""
  case "$__somnus_core" in
    Prescott|Core2|Penryn|Dunnington|Nehalem|Atom|Katmai|Coppermine|Northwood|Banias|Sandybridge|Opteron|Opteron_SSE3|Barcelona|Bobcat|Bulldozer|Piledriver)
      if __somnus_has avx512f avx512bw avx512vl avx512dq avx512cd; then
        __somnus_want=SkylakeX
      elif __somnus_has avx2 fma; then
        __somnus_want=Haswell
      fi ;;
  esac
  if [ -n "$__somnus_want" ]; then
    export OPENBLAS_CORETYPE="$__somnus_want"
    echo "blas_env: OpenBLAS did not recognise this CPU (kernels '$__somnus_core', no AVX2): OPENBLAS_CORETYPE=$__somnus_want" >&2
  fi
  unset -f __somnus_has
  unset __somnus_core __somnus_flags __somnus_want
fi
