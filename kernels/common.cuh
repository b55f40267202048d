// Shared building blocks for every softmax kernel: dtype traits, global-memory accessors,
// warp/block reductions and the online-normalizer state.
//
// This header compiles two ways: with nvcc for the GPU image, and with the host C++ compiler
// (CS_EMULATOR defined) against emu/emu.h for the CPU SIMT emulator. All global-memory access
// goes through load_pack/store_pack so that the emulator can check and count it, and all shared
// memory through CS_SHARED_ARRAY / dynamic_smem (bounds, uninitialised reads and races are
// checked on the emulator); on the GPU the checks compile to nothing.
#pragma once

#ifdef CS_EMULATOR
#include "emu/emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#ifdef __CUDACC_RTC__
// NVRTC (the default image's compiler, and the run-time fallback) has no C library headers:
// the fixed-width types the kernels use, for the LP64 targets CUDA supports.
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef unsigned long uintptr_t;
static_assert(sizeof(uintptr_t) == sizeof(void*), "uintptr_t must hold a pointer");
#else
#include <stdint.h>
#endif

namespace cs {

// ---- The few type traits the kernels need, here rather than from <type_traits>: NVRTC has no
// C++ standard library headers.
template <bool B>
struct BoolConstant {
  static constexpr bool value = B;
};
using TrueType = BoolConstant<true>;
using FalseType = BoolConstant<false>;
template <typename A, typename B>
struct IsSame : FalseType {};
template <typename A>
struct IsSame<A, A> : TrueType {};
template <bool C, typename IfTrue, typename IfFalse>
struct Conditional {
  using type = IfTrue;
};
template <typename IfTrue, typename IfFalse>
struct Conditional<false, IfTrue, IfFalse> {
  using type = IfFalse;
};
template <typename T>
struct MakeUnsigned;
template <>
struct MakeUnsigned<int> {
  using type = unsigned;
};
template <>
struct MakeUnsigned<long long> {
  using type = unsigned long long;
};
template <>
struct MakeUnsigned<unsigned> {
  using type = unsigned;
};
template <>
struct MakeUnsigned<unsigned long long> {
  using type = unsigned long long;
};

// ---- Kernel parameters: one struct for every softmax entry point (mirrored in src/runtime/launch.rs).
struct SoftmaxParams {
  const void* x;  // rows x cols, contiguous rows; any element alignment. Backward: the forward
                  // output y
  void* y;        // same shape; may equal x (in place), must not partly overlap it. Backward: dx;
                  // logsumexp: one f32 a row
  const void* dy;  // backward only: the upstream gradient (x's shape); else null
  long long rows;
  long long cols;
  float* workspace;      // split-row kernels only: (max, sum) per (row, chunk); else null
  long long chunk_cols;  // split-row kernels only: columns per chunk (the last may be shorter)
  long long inner;       // strided kernels only: the distance between a row's elements (>= 2);
                         // rows = outer * inner rows of cols elements. Unused by others.
  float scale;           // the op is taken of scale * x; > 0 and finite (checked on the host)
  unsigned pad;          // keeps the struct free of implicit padding (mirrored in Rust)
};

// ---- Entry points: one extern "C" symbol per (family, dtype, tile configuration), written by
// build.rs from the kernel registry into OUT_DIR/kernel_entries.cu (build/kernel_entries.rs),
// with the launch bounds of KernelConfig::min_blocks_per_sm. The emulator build also registers
// each one by name so that both backends launch the same names.
// (On the emulator the entry is an internal function found by name, and its launch bounds are
// recorded so that a launch a GPU would refuse is refused there too.)
#ifdef CS_EMULATOR
#define CS_ENTRY_WITH(Params, name, max_threads, min_blocks, call)                               \
  static void name(Params p) { call; }                                                          \
  static ::emu::KernelRegistrar cs_register_##name(                                             \
      #name, [](const void* raw) { name(*static_cast<const Params*>(raw)); }, sizeof(Params),   \
      max_threads);
#else
// min_blocks (blocks per SM the register allocation must allow) sets ptxas's register budget:
// 65536 / (max_threads * min_blocks) registers a thread. Left to itself, ptxas for sm_100/sm_120
// picked budgets that spilled (a 4-byte spill at 32 registers, 16 bytes at 128).
#define CS_ENTRY_WITH(Params, name, max_threads, min_blocks, call)                                 \
  extern "C" __global__ void __launch_bounds__(max_threads, min_blocks) name(Params p) { call; }
#endif
// The softmax family's entry points take SoftmaxParams. (Cross-entropy's take a longer block
// that starts with it: kernels/cross_entropy.cu. The host passes each kernel the block it
// declares: KernelParams in src/runtime/launch.rs. A larger SoftmaxParams changed the softmax
// kernels' SASS: keep it as it is.)
#define CS_ENTRY(name, max_threads, min_blocks, call) CS_ENTRY_WITH(cs::SoftmaxParams, name, max_threads, min_blocks, call)


#ifdef CS_EMULATOR
#define CS_CHECK_GLOBAL(ptr, bytes, is_write) ::emu::global_access((ptr), (bytes), (is_write))
#else
#define CS_CHECK_GLOBAL(ptr, bytes, is_write) ((void)0)
#endif

// ---- Dtype traits: storage type <-> f32 (all arithmetic is f32).
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Elements per 16-byte access.
template <typename T>
struct Vec16 {
  static constexpr int n = 16 / sizeof(T);
};

// ---- Global-memory accessors. A Pack<T, N> is N elements moved as one access of
// N * sizeof(T) bytes (16 bytes for the vector path, one element for the scalar path).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_pack(const T* src, float (&out)[N]) {
  CS_CHECK_GLOBAL(src, sizeof(Pack<T, N>), false);
  Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(src);
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = to_f32(p.v[i]);
}

// The storage bits of one element, zero-extended to 32 bits.
#ifdef CS_EMULATOR
inline uint32_t storage_bits(float v) { return ::emu::f32_bits(v); }
inline uint32_t storage_bits(__half v) { return v.bits; }
inline uint32_t storage_bits(__nv_bfloat16 v) { return v.bits; }
#else
__device__ __forceinline__ uint32_t storage_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t storage_bits(__half v) { return __half_as_ushort(v); }
// (bf16 through the raw struct: CUDA 12.0's headers, which NVRTC 12.0 uses, declare
// __bfloat16_as_ushort only for sm_80 and up.)
__device__ __forceinline__ uint32_t storage_bits(__nv_bfloat16 v) { return static_cast<__nv_bfloat16_raw>(v).x; }
#endif

// One 16-byte global store of four 32-bit words. NVVM splits a 16-byte struct store into
// narrower ones in some kernels (the block and two-pass families got 4 STG.E per pack), so on
// the GPU it is written as one st.global.v4.b32; the emulator copies the bytes.
__device__ __forceinline__ void store16(void* dst, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  CS_CHECK_GLOBAL(dst, 16, true);
#ifdef CS_EMULATOR
  const uint32_t words[4] = {a, b, c, d};
  std::memcpy(dst, words, 16);
#else
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(a), "r"(b), "r"(c), "r"(d)
               : "memory");
#endif
}

// An element from its storage bits (the low 16 bits for f16/bf16).
template <typename T>
__device__ __forceinline__ T from_storage_bits(uint32_t b);
#ifdef CS_EMULATOR
template <>
inline float from_storage_bits<float>(uint32_t b) { return ::emu::f32_from_bits(b); }
template <>
inline __half from_storage_bits<__half>(uint32_t b) { return __half{static_cast<uint16_t>(b)}; }
template <>
inline __nv_bfloat16 from_storage_bits<__nv_bfloat16>(uint32_t b) {
  return __nv_bfloat16{static_cast<uint16_t>(b)};
}
#else
template <>
__device__ __forceinline__ float from_storage_bits<float>(uint32_t b) { return __uint_as_float(b); }
template <>
__device__ __forceinline__ __half from_storage_bits<__half>(uint32_t b) {
  return __ushort_as_half(static_cast<unsigned short>(b));
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_storage_bits<__nv_bfloat16>(uint32_t b) {
  __nv_bfloat16_raw raw;
  raw.x = static_cast<unsigned short>(b);
  return raw;
}
#endif

// 16 bytes of storage as four 32-bit words <-> Vec16<T>::n floats. Word k holds elements
// k * E .. k * E + E - 1 (E = 4 / sizeof(T)), little-endian.
template <typename T>
__device__ __forceinline__ void unpack16(const uint32_t (&w)[4], float (&out)[16 / sizeof(T)]) {
  constexpr int E = 4 / sizeof(T);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
#pragma unroll
    for (int e = 0; e < E; ++e) out[k * E + e] = to_f32(from_storage_bits<T>(w[k] >> (16 * e)));
  }
}
template <typename T>
__device__ __forceinline__ void pack16(const float (&in)[16 / sizeof(T)], uint32_t (&w)[4]) {
  constexpr int E = 4 / sizeof(T);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    w[k] = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) w[k] |= storage_bits(from_f32<T>(in[k * E + e])) << (16 * e);
  }
}

// 16 bytes of global memory as words (one LDG.128), without converting them.
__device__ __forceinline__ void load16(const void* src, uint32_t (&w)[4]) {
  CS_CHECK_GLOBAL(src, 16, false);
#ifdef CS_EMULATOR
  std::memcpy(w, src, 16);
#else
  const uint4 v = *static_cast<const uint4*>(src);
  w[0] = v.x;
  w[1] = v.y;
  w[2] = v.z;
  w[3] = v.w;
#endif
}

// L2 eviction priority for the reads of two-pass kernels, which read x twice: the first read
// asks L2 to keep the lines (evict_last) so that the second can hit; the second asks to drop them
// first (evict_first), as nothing reads them again. A policy is made once (createpolicy) and
// passed to every load. sm_80 and later; older GPUs (and the emulator) read plainly.
struct L2Policy {
  uint64_t bits;
};
template <bool KeepInL2>
__device__ __forceinline__ L2Policy l2_policy() {
  L2Policy p{0};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (KeepInL2) {
    asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(p.bits));
  } else {
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(p.bits));
  }
#endif
  return p;
}
__device__ __forceinline__ L2Policy l2_evict_last() { return l2_policy<true>(); }
__device__ __forceinline__ L2Policy l2_evict_first() { return l2_policy<false>(); }

// load16 with an L2 eviction policy.
__device__ __forceinline__ void load16(const void* src, uint32_t (&w)[4], L2Policy policy) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  CS_CHECK_GLOBAL(src, 16, false);
  asm volatile("ld.global.L2::cache_hint.v4.b32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
               : "l"(src), "l"(policy.bits)
               : "memory");  // it reads memory: never move it across a store
#else
  (void)policy;
  load16(src, w);
#endif
}

// A 16-byte store that will not be read again soon (st.global.cs: evict first): the output of a
// two-pass kernel, so that it does not push x's lines out of L2 before their second read.
__device__ __forceinline__ void store16_streaming(void* dst, const uint32_t (&w)[4]) {
#ifdef CS_EMULATOR
  store16(dst, w[0], w[1], w[2], w[3]);
#else
  CS_CHECK_GLOBAL(dst, 16, true);
  asm volatile("st.global.cs.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w[0]), "r"(w[1]), "r"(w[2]),
               "r"(w[3])
               : "memory");
#endif
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* dst, const float (&in)[N]) {
  if constexpr (sizeof(T) * N == 16) {
    uint32_t w[4];
    pack16<T>(in, w);
    store16(dst, w[0], w[1], w[2], w[3]);  // checked there
  } else if constexpr (sizeof(T) * N > 16) {
    // A pack of a wider output than the input it came from (f16/bf16 in, f32 out: 8 values,
    // 32 bytes): one 16-byte store per 16 bytes.
    static_assert(sizeof(T) * N % 16 == 0, "whole 16-byte stores");
    constexpr int V = Vec16<T>::n;
#pragma unroll
    for (int h = 0; h < N / V; ++h) store_pack<T, V>(dst + h * V, *reinterpret_cast<const float(*)[V]>(in + h * V));
  } else {
    CS_CHECK_GLOBAL(dst, sizeof(Pack<T, N>), true);
    Pack<T, N> p;
#pragma unroll
    for (int i = 0; i < N; ++i) p.v[i] = from_f32<T>(in[i]);
    *reinterpret_cast<Pack<T, N>*>(dst) = p;
  }
}

// store_pack's 16-byte stores as streaming stores (store16_streaming): the output of a two-pass
// kernel. N values of T make whole 16-byte stores (two for 8 f32 outputs of a 16-bit pack).
template <typename T, int N>
__device__ __forceinline__ void store_pack_streaming(T* dst, const float (&in)[N]) {
  static_assert(sizeof(T) * N % 16 == 0, "whole 16-byte stores");
  constexpr int V = Vec16<T>::n;
#pragma unroll
  for (int h = 0; h < N / V; ++h) {
    uint32_t w[4];
    pack16<T>(*reinterpret_cast<const float(*)[V]>(in + h * V), w);
    store16_streaming(dst + h * V, w);
  }
}

template <typename T>
__device__ __forceinline__ float load_one(const T* src) {
  float v[1];
  load_pack<T, 1>(src, v);
  return v[0];
}

// One element (or a word of packed elements) in its storage type, unconverted: to keep a copy
// on chip, or moved as is.
template <typename T>
__device__ __forceinline__ T load_element(const T* src) {
  CS_CHECK_GLOBAL(src, sizeof(T), false);
  return *src;
}
template <typename T>
__device__ __forceinline__ void store_element(T* dst, T v) {
  CS_CHECK_GLOBAL(dst, sizeof(T), true);
  *dst = v;
}

template <typename T>
__device__ __forceinline__ void store_one(T* dst, float v) {
  float in[1] = {v};
  store_pack<T, 1>(dst, in);
}

// Elements before the first 16-byte boundary at or after `p` (at most `n`): the scalar head
// of a row whose start is not 16-byte aligned.
template <typename T>
__device__ __forceinline__ long long head_elements(const T* p, long long n) {
  long long mis = static_cast<long long>(reinterpret_cast<uintptr_t>(p) & 15u);
  long long head = mis == 0 ? 0 : (16 - mis) / static_cast<long long>(sizeof(T));
  return head < n ? head : n;
}

// ---- Numerics (docs/architecture.md): exp as exp2 of a scaled difference. The difference x - m is
// formed first (not fma(x, log2e, -m*log2e)) so that large-magnitude logits keep their
// precision and x*log2e cannot overflow near the f32 maximum.
constexpr float kLog2e = 1.4426950408889634f;
#ifdef __CUDACC_RTC__
// NVRTC has no __builtin_huge_valf/__builtin_nanf; it folds IEEE division by zero to the same
// constants (checked in the PTX: 0f7F800000 and a quiet NaN).
constexpr float kPosInf = 1.0f / 0.0f;
constexpr float kNaN = -(0.0f / 0.0f);
#else
constexpr float kPosInf = __builtin_huge_valf();
constexpr float kNaN = __builtin_nanf("");
#endif
constexpr float kNegInf = -kPosInf;

// 2^x on the special-function unit: ex2.approx.ftz.f32, one MUFU.EX2 (exp2f adds a denormal
// rescaling sequence around it). Relative error about 2^-22; subnormal inputs count as 0 and
// subnormal results flush to +0 (probabilities below 2^-126, far under every tolerance's atol).
// ex2(-inf) = +0, ex2(NaN) = NaN. The emulator twin flushes the same way.
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef CS_EMULATOR
  return ::emu::flush_subnormal(std::exp2(::emu::flush_subnormal(x)));
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// log2(x) on the special-function unit: lg2.approx.ftz.f32, one MUFU.LG2 (logf is a ~20
// instruction sequence, which a warp kernel with 8 elements a lane would pay per row). Absolute
// error about 2^-22 for x in [0.5, 2], relative 2^-22 elsewhere; used on row sums (>= 1 except
// for empty rows, which callers test first). The emulator twin flushes like the GPU.
__device__ __forceinline__ float fast_log2(float x) {
#ifdef CS_EMULATOR
  return std::log2(::emu::flush_subnormal(x));
#else
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

constexpr float kLn2 = 0.6931471805599453f;

// 1/d on the special-function unit: rcp.approx.ftz.f32 (one MUFU.RCP, within 1 ulp; the exact
// division is a subroutine call). Only used on row sums, which are >= 1, 0 or NaN.
__device__ __forceinline__ float fast_reciprocal(float d) {
#ifdef CS_EMULATOR
  return 1.0f / d;
#else
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return r;
#endif
}

// The shift of a row (or chunk) whose maximum is m: m itself, except that -inf (every element
// masked) becomes 0. Then x - shift is -inf, never (-inf) - (-inf), for every -inf element, and
// exp gives exactly 0 with no per-element test. A NaN or +inf m passes through (the row is NaN).
__device__ __forceinline__ float row_shift(float m) { return m == kNegInf ? 0.0f : m; }

// exp(scale * (x - m)) for x <= m, given shift = row_shift(m) and k = scale * log2(e): three
// instructions (FADD, FMUL, MUFU), the scale folded into the exp2 factor (no extra pass or
// instruction). scale > 0, so the max of scale * x is scale * max(x).
__device__ __forceinline__ float exp_shifted(float x, float shift, float k) { return fast_exp2((x - shift) * k); }

// The exp2 factor of a launch: log2(e) * scale, rounded once.
__device__ __forceinline__ float exp2_factor(float scale) { return kLog2e * scale; }

// 1/d, except that an all -inf row (d == 0) gives probabilities of 0 rather than NaN.
__device__ __forceinline__ float safe_reciprocal(float d) { return d == 0.0f ? 0.0f : fast_reciprocal(d); }

// Online normalizer state (Milakov & Gimelshein 2018): running max m and
// d = sum exp(scale * (x - m)). Every function on it takes the launch's exp2 factor k.
struct MaxSum {
  float m;
  float d;
};

__device__ __forceinline__ MaxSum maxsum_identity() { return MaxSum{kNegInf, 0.0f}; }

// Merging two partial states is associative and commutative; -inf maxima scale by 0, not NaN.
__device__ __forceinline__ MaxSum maxsum_merge(MaxSum a, MaxSum b, float k) {
  const float m = fmaxf(a.m, b.m);
  const float shift = row_shift(m);
  return MaxSum{m, a.d * exp_shifted(a.m, shift, k) + b.d * exp_shifted(b.m, shift, k)};
}

// Folds N more values into a state with one rescale (not one per element).
template <int N>
__device__ __forceinline__ MaxSum maxsum_add(MaxSum s, const float (&x)[N], float k) {
  float m = s.m;
#pragma unroll
  for (int i = 0; i < N; ++i) m = fmaxf(m, x[i]);
  const float shift = row_shift(m);
  float d = s.d * exp_shifted(s.m, shift, k);
#pragma unroll
  for (int i = 0; i < N; ++i) d += exp_shifted(x[i], shift, k);
  return MaxSum{m, d};
}

// ---- Warp reductions over `Width` consecutive lanes (Width a power of two, <= 32). Every lane
// of the warp must call them (full mask): callers keep loops warp-uniform.
template <int Width>
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o, Width));
  return v;
}

template <int Width>
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = Width / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o, Width);
  return v;
}

__device__ __forceinline__ MaxSum warp_maxsum(MaxSum s, float k) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    MaxSum other{__shfl_xor_sync(0xffffffffu, s.m, o), __shfl_xor_sync(0xffffffffu, s.d, o)};
    s = maxsum_merge(s, other, k);
  }
  return s;
}

// ---- Shared memory. Static arrays are declared with CS_SHARED_ARRAY (a plain __shared__ does
// not compile on the emulator) and the dynamic segment is reached through dynamic_smem<T>(), a
// SmemPtr<T>: a raw pointer on the GPU, a checked pointer on the emulator.
#ifdef CS_EMULATOR
#define CS_SHARED_ARRAY(T, name, n) static thread_local ::emu::StaticShared<T, (n)> name
template <typename T>
using SmemPtr = ::emu::SharedPtr<T>;
#else
#define CS_SHARED_ARRAY(T, name, n) __shared__ T name[(n)]
template <typename T>
using SmemPtr = T*;
#endif

template <typename T>
__device__ __forceinline__ SmemPtr<T> dynamic_smem() {
#ifdef CS_EMULATOR
  return ::emu::SharedPtr<T>(::emu::dynamic_shared_space(), 0);
#else
  extern __shared__ __align__(16) unsigned char cs_dynamic_smem[];
  return reinterpret_cast<T*>(cs_dynamic_smem);
#endif
}

// 16 bytes of shared memory from element i of `base` on (16-byte aligned): one STS.128 /
// LDS.128 (inline PTX: NVVM may split a 16-byte struct access). A warp's 32 consecutive 16-byte
// accesses take the minimum four wavefronts: no bank conflicts.
template <typename T>
__device__ __forceinline__ void smem_store16(SmemPtr<T> base, long long i, const uint32_t (&w)[4]) {
#ifdef CS_EMULATOR
  base.store16(i, w);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(base + i));
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(w[0]), "r"(w[1]), "r"(w[2]),
               "r"(w[3])
               : "memory");
#endif
}
template <typename T>
__device__ __forceinline__ void smem_load16(SmemPtr<T> base, long long i, uint32_t (&w)[4]) {
#ifdef CS_EMULATOR
  base.load16(i, w);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(base + i));
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
               : "r"(addr)
               : "memory");
#endif
}

// ---- Block reductions (1-D blocks of Block threads, a multiple of 32). The result is returned
// to every thread. The leading barrier protects the scratch from a previous call's readers.
struct MaxOp {
  __device__ __forceinline__ float identity() const { return kNegInf; }
  __device__ __forceinline__ float warp(float v) const { return warp_max<32>(v); }
};
struct SumOp {
  __device__ __forceinline__ float identity() const { return 0.0f; }
  __device__ __forceinline__ float warp(float v) const { return warp_sum<32>(v); }
};
struct MaxSumOp {
  float k;  // the launch's exp2 factor
  __device__ __forceinline__ MaxSum identity() const { return maxsum_identity(); }
  __device__ __forceinline__ MaxSum warp(MaxSum s) const { return warp_maxsum(s, k); }
};

template <int Block, typename Op, typename V>
__device__ __forceinline__ V block_reduce(V v, const Op& op) {
  static_assert(Block % 32 == 0 && Block <= 1024, "whole warps, at most 32 of them");
  CS_SHARED_ARRAY(V, scratch, Block / 32);
  CS_SHARED_ARRAY(V, result, 1);
  v = op.warp(v);
  __syncthreads();
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    V w = threadIdx.x < Block / 32 ? scratch[threadIdx.x] : op.identity();
    w = op.warp(w);
    if (threadIdx.x == 0) result[0] = w;
  }
  __syncthreads();
  return result[0];
}

template <int Block>
__device__ __forceinline__ float block_max(float v) {
  return block_reduce<Block>(v, MaxOp{});
}
template <int Block>
__device__ __forceinline__ float block_sum(float v) {
  return block_reduce<Block>(v, SumOp{});
}
template <int Block>
__device__ __forceinline__ MaxSum block_maxsum(MaxSum s, float k) {
  return block_reduce<Block>(s, MaxSumOp{k});
}

// ---- Warp-family helpers (every op's warp kernels).
// Views a run of N floats inside a register array as an array reference for load/store_pack.
template <int N>
__device__ __forceinline__ float (&sub_array(float* p))[N] {
  return *reinterpret_cast<float(*)[N]>(p);
}

// The shortest row the planner gives the warp kernel of a lane shape: one column more than the
// next smaller shape holds (Width lanes of 8 elements; full warps of 16, 24, ... 64). Keep in
// step with KernelConfig::warp_row_lengths in src/planning/: a planner test checks every row
// length against it, and the test suites run every warp kernel at its shortest row.
__host__ __device__ constexpr int warp_min_cols(int width, int cols_per_lane) {
  return cols_per_lane == 8 ? (width == 1 ? 1 : 4 * width + 1)
         : cols_per_lane == 16 ? 32 * 8 + 1
                               : 32 * (cols_per_lane - 8) + 1;
}

}  // namespace cs
