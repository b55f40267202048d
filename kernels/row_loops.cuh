// A block's loops over a row in global memory (16-byte packs between a scalar head and tail,
// several loads in flight a thread) and the row's online (max, sum) state: the pieces the
// forward block families, logsumexp and split-row share.
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

// The online (max, sum) state of n elements, reduced over the block.
template <typename T, int Block>
__device__ __forceinline__ MaxSum block_row_state(const T* xr, long long n, float k) {
  MaxSum s = maxsum_identity();
  // The first of x's two reads: keep its lines in L2 for the second.
  for_each_loaded<T, Block>(xr, n, l2_evict_last(), [&](long long, auto& v) { s = maxsum_add(s, v, k); });
  return block_maxsum<Block>(s, k);
}

// Split-row pass 1: block (chunk, row) stores its chunk's (max, sum) at workspace[row][chunk].
template <typename T, int Block>
__device__ __forceinline__ void softmax_split_stats(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
  const long long first = chunk * p.chunk_cols;
  const long long n = p.cols - first < p.chunk_cols ? p.cols - first : p.chunk_cols;
  const MaxSum s = block_row_state<T, Block>(static_cast<const T*>(p.x) + row * p.cols + first, n,
                                             exp2_factor(p.scale));
  if (threadIdx.x == 0) {
    const float state[2] = {s.m, s.d};
    store_pack<float, 2>(p.workspace + 2 * (row * chunks + chunk), state);
  }
}

}  // namespace cs
