# Pulls the kernels that a driver tests/kernels/cuda_emu/<bundle>.cpp runs out of their
# kernels/cuda/*.cu file, minus what cuda_emu.h replaces (inline-PTX wrappers, the extern
# __shared__ declaration). A bundle is a list of pieces: whole functions (by the start of their
# signature) or sections (between two markers) of the source or of common.cuh.
# Usage: extract.py <kernels/cuda dir> <out.inc> <bundle>, bundle one of the keys of `bundles`
# below (= a driver's name). Fails loudly when a name it looks for is gone.
import os
import re
import sys

cuda_dir = sys.argv[1]
bundle = sys.argv[3]
source_of = {"attention_fwd": "attention.cu", "attention_bwd": "attention.cu", "attention_decode": "attention.cu"}
# Drivers of other files name theirs here: bundle -> file in kernels/cuda.
source_of.update({"norm": "norm.cu", "rope": "rope.cu", "reduce": "reduce.cu", "losses": "losses.cu",
                  "sampling": "sampling.cu", "softmax": "softmax.cu", "activation": "activation.cu",
                  "adamw": "adamw.cu", "elementwise": "elementwise.cu", "index": "index.cu",
                  "tensor": "../../tensor/cuda/copy.cu", "matmul": "matmul.cu"})
if bundle not in source_of:
    raise SystemExit("extract.py: unknown bundle " + bundle)
src = open(os.path.join(cuda_dir, source_of[bundle])).read()
common = open(os.path.join(cuda_dir, "common.cuh")).read()
# tensor/cuda/check.h: grid_for, the grid size of the grid-stride kernels' launches.
check_h = open(os.path.join(cuda_dir, "..", "..", "tensor", "cuda", "check.h")).read()


def function(signature, src=src):
    """The whole definition (with its template line) of the template whose signature starts so."""
    i = src.index(signature + "(")
    start = src.rfind("\ntemplate", 0, i) + 1
    depth = 0
    for k in range(src.index("{", i), len(src)):
        if src[k] == "{":
            depth += 1
        elif src[k] == "}":
            depth -= 1
            if depth == 0:
                return src[start:k + 1]
    raise SystemExit("unbalanced braces after " + signature)


def section(first, end_marker, src=src):
    return src[src.index(first):src.index(end_marker)]


# common.cuh's device helpers (element access, 16-byte vectors, math overloads, warp reductions)
# for the kernels outside attention.cu, which use them freely.
common_helpers = [
    section("// Load a stored element in its compute type", "inline bool aligned_to", common),
    section("// ---------------------------------------------------------------- math in the compute type",
            "// ---------------------------------------------------------------- dispatch and device", common),
]


def host_launches(text):
    """`kernel<<<grid, block>>>(args);` -> emu_note_launch("kernel"); launch(grid, 1, block, 0, [&] {
    kernel(args); }); (cuda_emu.h's launch runs the grid's blocks one after another; the driver
    defines emu_note_launch, to see which kernel the host code chose), and CUDA_CHECK_LAUNCH();
    dropped: so that the host code that picks a kernel and its grid runs too. One-dimensional
    grids without dynamic shared memory or a stream only; anything else fails here. Unlike a
    launch, the arguments are evaluated by every emulated thread: they must be pure."""
    out, pos = [], 0
    while True:
        i = text.find("<<<", pos)
        if i < 0:
            break
        start = text.rfind("\n", 0, i) + 1
        while text[start] == " ":
            start += 1
        j = text.index(">>>(", i)
        config = [c.strip() for c in re.split(r",(?![^(]*\))", text[i + 3:j])]
        if len(config) != 2:
            raise SystemExit("extract.py: a launch with shared memory or a stream: " + text[start:j + 3])
        depth, k = 0, j + 3
        while True:
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            k += 1
            if depth == 0:
                break
        if text[k] != ";":
            raise SystemExit("extract.py: a launch that is not a statement: " + text[start:k])
        out.append(text[pos:start])
        out.append("emu_note_launch(\"" + text[start:i] + "\"); launch(" + config[0] + ", 1, " + config[1] +
                   ", 0, [&] { " + text[start:i] + text[j + 3:k] + "; });")
        pos = k + 1
    out.append(text[pos:])
    return re.sub(r"\n\s*CUDA_CHECK_LAUNCH\(\);", "", "".join(out))


# common.cuh's layouts (Collapsed, collapse) and SOMNUS_GRID_STRIDE, with grid_for, for the
# grid-stride kernels and their host launchers.
grid_stride = [re.search(r"inline unsigned grid_for\(.*?\n\}", check_h, flags=re.S).group(0),
               section("// ---------------------------------------------------------------- layouts",
                       "}  // namespace somnus::kernels::cuda", common)]


def attention_tiles():
    return [
    re.search(r"struct AttnDims \{.*?\n\};", src, flags=re.S).group(0),
    re.search(r"constexpr float kLog2e = [^;]*;", src).group(0),
    section("// P's A fragment for k-step kk", "// ---------------------------------------------------------------- device limits"),
    function("__device__ __forceinline__ void load_tile_bf16"),
    function("__device__ __forceinline__ void issue_tile_bf16"),
    function("__device__ __forceinline__ void issue_tile_sw128"),
    ]


def norm_bundle():
    # the forwards (v1 norm_forward_kernel, v2 norm_forward_reg_kernel) and the register
    # backward, with their block reductions
    # plus the host-side choice of vector width and register shape, which the driver calls
    return common_helpers + [section("constexpr int kThreads", "// 16-byte vectors when every row start is aligned"),
                             function("void with_vec"), function("bool with_reg_shape"),
                             function("bool with_racc_shape")]


bundles = {
    # the default forward (attn_fwd_mma), v3 (attn_fwd_v3) and the Hopper ones (attn_fwd_wg, attn_fwd_ws)
    "attention_fwd": lambda: attention_tiles() + [
        section("// The forwards' epilogue", "// ---------------------------------------------------------------- bf16 forward v3"),
        section("constexpr int kV3Warps", "// Whether two v3 blocks can be resident"),
        section("constexpr int kWgWarps", "// Whether the device code was built with wgmma"),
        # the host's TMA maps of attn_fwd_ws (cuTensorMapEncodeTiled is cuda_emu.h's)
        section("CUtensorMap bf16_panel_map(", "// The bf16 forward version attention_fwd runs"),
    ],
    # split-K decode: the GQA block kernel, the SIMT row kernel, the combine
    "attention_decode": lambda: attention_tiles() + [
        re.search(r"struct KvStrides \{.*?\n\};", src, flags=re.S).group(0),
        section("// V elements of T in one aligned load/store", "template <int V, class T>\n__device__ __forceinline__ void store_vec", common),
        function("__device__ __forceinline__ C warp_allreduce_sum", common),
        function("__device__ __forceinline__ float to_f"),
        function("__device__ __forceinline__ float mma_round"),
        section("constexpr int kRowWarps", "template <class F>\ninline void visit_head_dim"),
        section("constexpr int kDecWarps", "// f(tag, smem) with the attn_decode_gqa instance"),
        function("__global__ void attn_combine"),
    ],
    # the tensor-core backward: attn_bwd_dkdv_mma, attn_bwd_dq_mma, the Hopper attn_bwd_dkdv_wg and
    # attn_bwd_ws (+ dq_from_bws_acc) and their helpers
    "attention_bwd": lambda: attention_tiles() + [
        # the TMA map of attn_bwd_ws (cuTensorMapEncodeTiled is cuda_emu.h's)
        section("CUtensorMap bf16_panel_map(", "// attn_fwd_ws's three maps"),
        section("__device__ __forceinline__ void atomic_add2", "// The tensor-core backward version for SOMNUS_ATTN_BWD"),
        # the entry point's two small kernels: Δ = rowsum(dO ∘ O) and the atomic mode's dQ cast
        function("__device__ __forceinline__ C warp_allreduce_sum", common), function("__device__ __forceinline__ float to_f"),
        function("__device__ __forceinline__ float mma_round"),
        re.search(r"#define SOMNUS_GRID_STRIDE(?:.*\\\n)*.*\n", common).group(0),
        function("__global__ void attn_bwd_delta"), function("__global__ void cast_from_f32"),
        # the SIMT backward (f32, and bf16 under SOMNUS_ATTN_BWD=simt): attn_bwd_dkdv, attn_bwd_dq
        re.search(r"constexpr int kRowWarps = \d+;\nconstexpr int kSimtBc = \d+;", src).group(0),
        section("constexpr int kKeyWarps = 8;", "template <class T>\n__global__ void cast_from_f32"),
    ],
}
bundles["norm"] = norm_bundle
bundles["rope"] = lambda: common_helpers + [section("constexpr int kThreads", "// ------------------------------------------------"
                                                            "---------------- end rope kernels")]  # v1 and v2
bundles["reduce"] = lambda: common_helpers + [  # the reducers, v1's kernels, all of v2 and its plans
    section("// init() is the identity", "-- kernels (v1)"),  # (each ends in a bare "// ---" comment)
    section("constexpr int kWarpRowsPerBlock", "template <class T, class R>\n__global__ void reduce_rows_warp_kernel"),
    function("__global__ void reduce_rows_warp_kernel"), function("__global__ void reduce_rows_block_kernel"),
    function("__global__ void reduce_partials_kernel"),
    function("__global__ void reduce_cols_kernel"), section("constexpr int kRowThreads", "-- host side")]
# the row kernels of both paths (the f32 path's ce/jsd_rows_kernel, ppo_grad_kernel; the default
# path's *_lp_kernel), PPO's stats and token kernels, add_inplace_kernel, and the block
# reductions they share (cub::BlockReduce is cuda_emu.h's)
bundles["losses"] = lambda: [
    section("constexpr int kThreads = 256;", "// ---------------------------------------------------------------- chunk driver"),
    section("// One more element x into a thread's online", "// ---------------------------------------------------------------- default path: drivers")]
# the sampler's kernels: row stats, the top-k prefilter (topk_select_kernel), the pick, greedy,
# with their block scans and reductions (cub::BlockScan / BlockReduce are cuda_emu.h's)
bundles["sampling"] = lambda: [section("constexpr int kThreads = 512;", "}  // namespace\n\nSampledTokens sample_tokens")]
# softmax / log_softmax forward and backward: the warp-per-row and the block-per-row kernels
bundles["softmax"] = lambda: common_helpers + [
    section("constexpr int kWarpBlock = 128;", "// ---------------------------------------------------------------- host side"),
    function("void with_per_lane")]
# SwiGLU forward and backward (vector and scalar instances) and the host's with_vec
bundles["activation"] = lambda: common_helpers + [section("constexpr int kThreads = 256;", "}  // namespace")]
# the multi-tensor AdamW kernel and its batch (kernels/adamw_math.h is the driver's include)
bundles["adamw"] = lambda: [section("constexpr int kThreads = 256;", "}  // namespace")]
# elementwise.cu: the per-element math, the operand bundles, both kernels and launch_elementwise
# (its choice of the vector, scalar or strided kernel, host_launches'd), not the Tensor entry points
bundles["elementwise"] = lambda: common_helpers + grid_stride + [
    host_launches(section("// ---------------------------------------------------------------- the per-element math",
                          "}  // namespace\n"))]
# index.cu's kernels: embedding forward, the deterministic backward's sort input and runs kernel
# (cub's radix sort between them is the driver's stable sort), the atomic backward and its f32
# accumulator's add, gather and scatter_add, and the host's strides for them (index_along,
# with_dim_stride_zero)
bundles["index"] = lambda: common_helpers + grid_stride + [
    section("constexpr int kRowThreads = 128;", "// out[...] = x[... index ...] over `shape`")]

# matmul.cu's one kernel of its own: the unfused bias (+ GELU) epilogue (the GEMMs are cuBLASLt's)
bundles["matmul"] = lambda: common_helpers + grid_stride + [function("__global__ void bias_gelu_kernel")]


def cpu_fill_bodies():
    """tensor/random.cpp's CPU branches of rand, randn and randint (the `else` block that calls
    fill_cpu), each as a template the driver calls with its own fill_cpu: so that the CUDA fill
    is compared with the CPU's code itself, not a copy of its formula."""
    rnd = open(os.path.join(cuda_dir, "..", "..", "tensor", "random.cpp")).read()
    out = []
    for name, params in (("rand", "double low, double high"), ("randn", "double mean, double std"),
                         ("randint", "int64_t low, int64_t high")):
        i = rnd.index("} else {", rnd.index("Tensor " + name + "("))
        depth, k = 0, i + len("} else ")
        for k in range(k, len(rnd)):
            depth += {"{": 1, "}": -1}.get(rnd[k], 0)
            if depth == 0:
                break
        out.append("template <class Fill, class Dst>\nvoid cpu_" + name + "(Fill&& fill_cpu, const Dst& t, uint64_t seed, "
                   "uint64_t offset, " + params + ") {" + rnd[i + len("} else {"):k] + "}")
    return out


# tensor/cuda/copy.cu (the strided copy with its dtype conversion, fill) and tensor/cuda/random.cu
# (the Philox fill kernel and its three samples), with random.cpp's CPU branches, and grid_for
bundles["tensor"] = lambda: grid_stride[:1] + [
    section("template <class T>\n__host__ __device__ __forceinline__ T from_double", "void strided_copy("),
    section("template <class T, class Sample>\n__global__ void philox_fill_kernel", "template <class Sample>\nstatic void launch_fill",
            open(os.path.join(cuda_dir, "..", "..", "tensor", "cuda", "random.cu")).read())] + cpu_fill_bodies()
parts = bundles[bundle]()
text = "\n".join(parts)
text = re.sub(r"__device__ __forceinline__ float ex2_approx\(float x\) \{.*?\n\}\n", "", text, flags=re.S)
text = re.sub(r"extern __shared__ __align__\(16\) unsigned char (\w+)\[\];", r"unsigned char* \1 = g_smem;", text)
# `__shared__ T a, b;` declares each name on its own line first.
text = re.sub(r"(?m)^(\s*)__shared__ ([\w:]+) (\w+(?:, \w+)+);",
              lambda m: "\n".join(m.group(1) + "__shared__ " + m.group(2) + " " + n + ";" for n in m.group(3).split(", ")),
              text)
# Static shared arrays and scalars become function statics (blocks run one at a time),
# registered so that launch poisons them per block.
text = re.sub(r"(?m)^(\s*)__shared__ (.+?) (\w+)((?:\[[^\]]+\])*);",
              r"\1static \2 \3\4;\n\1emu_shared(&\3, sizeof(\3));", text)
if "__shared__" in re.sub(r"//.*", "", text.replace("extern __shared__", "")):
    raise SystemExit("extract.py: a __shared__ declaration it does not understand")
if "asm" in re.sub(r"//.*", "", text):
    raise SystemExit("extract.py: inline PTX left in the extract; wrap it in a helper cuda_emu.h emulates")
open(sys.argv[2], "w").write("// Generated by tests/kernels/cuda_emu/extract.py from kernels/cuda/" + source_of[bundle] +
                             ".\n" + text)
