// A block's loops over a row in global memory: 16-byte packs between a scalar head and tail,
// several loads in flight a thread, for one input (for_each_pack_batch, for_each_loaded) or two
// (for_each_pack_pair), and the output's (for_each_stored); the alignment tests that choose the
// pack paths. The row families (block_rows.cu, two_pass_rows.cu) run on them.
#pragma once

#include "common.cuh"

namespace cs {

// Packs a thread of a two-pass kernel loads before it uses the first (see for_each_loaded).
constexpr int kBatch = 4;

// Calls f(k, words) for packs k = 0 .. packs - 1 of 16-byte aligned `src`, thread t taking
// t, t + Block, ... kBatch packs a thread loads before it uses any: 64 bytes in flight a thread,
// enough to cover DRAM latency at one or two blocks an SM (src/tools/occupancy.rs). One loop with
// predicated loads: no remainder loop with a single load in flight. The batch is held as raw
// words (16 registers whatever the dtype), widened by f.
template <typename T, int Block, typename F>
__device__ __forceinline__ void for_each_pack_batch(const T* src, long long packs, L2Policy policy, F&& f) {
  constexpr int V = Vec16<T>::n;
  for (long long k0 = threadIdx.x; k0 < packs; k0 += kBatch * Block) {
    uint32_t w[kBatch][4];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const long long k = k0 + static_cast<long long>(u) * Block;
      if (k < packs) load16(src + k * V, w[u], policy);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const long long k = k0 + static_cast<long long>(u) * Block;
      if (k < packs) f(k, w[u]);
    }
  }
}

// Calls f(first_col, values) for every element of `row`, in chunks of one or Vec elements:
// a scalar head up to the first 16-byte boundary, 16-byte packs, a scalar tail. Thread t of the
// block takes elements/packs t, t + Block, ...
template <typename T, int Block, typename F>
__device__ __forceinline__ void for_each_loaded(const T* row, long long cols, L2Policy policy, F&& f) {
  constexpr int V = Vec16<T>::n;
  const long long head = head_elements(row, cols);
  const long long packs = (cols - head) / V;
  const long long tail_start = head + packs * V;
  for (long long c = threadIdx.x; c < head; c += Block) {
    float v[1] = {load_one(row + c)};
    f(c, v);
  }
  for_each_pack_batch<T, Block>(row + head, packs, policy, [&](long long k, uint32_t(&w)[4]) {
    float v[V];
    unpack16<T>(w, v);
    f(head + k * V, v);
  });
  for (long long c = tail_start + threadIdx.x; c < cols; c += Block) {
    float v[1] = {load_one(row + c)};
    f(c, v);
  }
}

// Stores g(first_col, values) for every element of `row`, chunked by the alignment of `row`
// (which may differ from the input's) the same way as for_each_loaded.
template <typename T, int Block, typename G>
__device__ __forceinline__ void for_each_stored(T* row, long long cols, G&& g) {
  constexpr int V = Vec16<T>::n;
  const long long head = head_elements(row, cols);
  const long long packs = (cols - head) / V;
  const long long tail_start = head + packs * V;
  for (long long c = threadIdx.x; c < head; c += Block) {
    float v[1];
    g(c, v);
    store_pack<T, 1>(row + c, v);
  }
  // Two packs per iteration: deeper unrolling made ptxas for sm_100 spill in the block kernel.
#pragma unroll 2
  for (long long k = threadIdx.x; k < packs; k += Block) {
    float v[V];
    g(head + k * V, v);
    store_pack<T, V>(row + head + k * V, v);
  }
  for (long long c = tail_start + threadIdx.x; c < cols; c += Block) {
    float v[1];
    g(c, v);
    store_pack<T, 1>(row + c, v);
  }
}

// Whether y's elements at x's 16-byte pack boundaries (from x + head on, head = x's scalar head)
// sit on 16-byte boundaries too, so that each pack of x gives whole 16-byte stores of y. Same
// dtype: x and y share their alignment. (f32 output of 16-bit input: a pack of 8 x elements is
// 32 bytes of y, so y + head aligned is enough.)
template <typename T, typename TO>
__device__ __forceinline__ bool packs_line_up(const T* xr, const TO* yr, long long head) {
  if constexpr (IsSame<T, TO>::value) {
    return ((reinterpret_cast<uintptr_t>(xr) ^ reinterpret_cast<uintptr_t>(yr)) & 15u) == 0;
  } else {
    static_assert(sizeof(TO) * Vec16<T>::n % 16 == 0, "an x pack is whole 16-byte stores of y");
    return (reinterpret_cast<uintptr_t>(yr + head) & 15u) == 0;
  }
}

// True when the three rows start at the same offset from a 16-byte boundary (the usual case):
// then they move in 16-byte packs together.
template <typename T>
__device__ __forceinline__ bool same_alignment(const T* a, const T* b, const T* c) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a);
  return (((x ^ reinterpret_cast<uintptr_t>(b)) | (x ^ reinterpret_cast<uintptr_t>(c))) & 15u) == 0;
}

// Packs of each input a thread loads before it uses the first, for two inputs: 2 x 2 x 16 bytes
// in flight a thread (for_each_pack_batch holds 4 x 16 of one input). 4 was tried when the loop
// derived its three addresses from a 64-bit pack index (f32 online 0.91 -> 0.99 warp
// instructions an element); with the advanced addresses of for_each_pack_pair it costs about
// the same as 2 (log-softmax f32 online 0.50 -> 0.47 on sm_90).
constexpr int kPairBatch = 2;

// Calls f(dxp, y_words, dy_words) for packs k = 0 .. packs - 1 of 16-byte aligned y and dy, with
// dxp = dx + k * V (D is T or const T; f may ignore it), thread t taking t, t + Block, ...,
// kPairBatch packs of each loaded before any is used. The three streams are addresses advanced
// by a constant step and the trip count a count of packs left: no 64-bit multiply-adds from a
// pack index in the loop (that index work made this loop cost 0.91 warp instructions an f32
// element). Addresses are integers so that those past the row end, formed and never used, are
// well defined.
template <typename T, int Block, typename D, typename F>
__device__ __forceinline__ void for_each_pack_pair(const T* y, const T* dy, D* dx, long long packs, L2Policy policy,
                                                   F&& f) {
  constexpr uintptr_t kStep = kPairBatch * Block * 16;  // bytes a thread's batch advances
  const uintptr_t first = static_cast<uintptr_t>(threadIdx.x) * 16;
  uintptr_t ya = reinterpret_cast<uintptr_t>(y) + first;
  uintptr_t dya = reinterpret_cast<uintptr_t>(dy) + first;
  uintptr_t dxa = reinterpret_cast<uintptr_t>(dx) + first;
  // Not unrolled: left to itself the compiler unrolled the f32 split_stats loop 4 times with a
  // remainder loop (0.21 -> 0.41 warp instructions an element), and unrolled twice the 16-bit
  // online kernels spilled on sm_100 at 64 registers (0.50 -> 0.52 on sm_90 for not unrolling).
#pragma unroll 1
  for (long long left = packs - threadIdx.x; left > 0; left -= kPairBatch * Block) {
    uint32_t wy[kPairBatch][4], wd[kPairBatch][4];
#pragma unroll
    for (int u = 0; u < kPairBatch; ++u) {
      if (left > u * Block) {
        load16(reinterpret_cast<const T*>(ya + u * Block * 16), wy[u], policy);
        load16(reinterpret_cast<const T*>(dya + u * Block * 16), wd[u], policy);
      }
    }
#pragma unroll
    for (int u = 0; u < kPairBatch; ++u) {
      if (left > u * Block) f(reinterpret_cast<D*>(dxa + u * Block * 16), wy[u], wd[u]);
    }
    ya += kStep;
    dya += kStep;
    dxa += kStep;
  }
}

}  // namespace cs
