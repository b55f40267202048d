// logsumexp over the last dimension: one f32 a row, lse = scale * m + log(sum(exp(scale * (x - m)))),
// from the same online (m, sum) state as the forward ops, reading x once. An all -inf row gives
// -inf; a NaN or +inf in the row gives NaN.
//
// Families (src/planning/, Op::LogSumExp): the warp family for rows up to 2048 columns, a block
// per row (block_row_state, row_loops.cuh) for longer rows, and split-row for few long rows (the
// forward ops' stats pass, then a merge that writes each row's value once).
#include "common.cuh"
#include "row_loops.cuh"

namespace cs {

// The row's value from its (m, d) state.
__device__ __forceinline__ float lse_value(MaxSum s, float scale) {
  // sum == 0 only for an all -inf row (m = -inf): log(0) = -inf is the answer, shift * scale
  // would be 0 there. NaN states stay NaN.
  return s.d == 0.0f ? kNegInf : row_shift(s.m) * scale + fast_log2(s.d) * kLn2;
}

template <typename T, int Width, int Cols, int Vec>
__device__ __forceinline__ void lse_warp(const SoftmaxParams& p) {
  static_assert(Cols % Vec == 0, "a lane's columns are whole packs");
  constexpr int kPacks = Cols / Vec;
  constexpr int kMinRowPacks = (warp_min_cols(Width, Cols) + Vec - 1) / Vec;
  constexpr int kSurePacks = Width == 1 ? 0 : kMinRowPacks / Width < kPacks ? kMinRowPacks / Width : kPacks;
  constexpr int kRowsPerWarp = 32 / Width;
  const T* x = static_cast<const T*>(p.x);
  float* out = static_cast<float*>(p.y);
  const long long warps_per_block = blockDim.x / 32;
  const long long warp = static_cast<long long>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const long long row_step = static_cast<long long>(gridDim.x) * warps_per_block * kRowsPerWarp;
  const int lane = threadIdx.x % Width;
  const int group = (threadIdx.x % 32) / Width;
  const int row_packs = static_cast<int>(p.cols / Vec);
  const int lane_packs = row_packs > lane ? (row_packs - lane + Width - 1) / Width : 0;
  const float k = exp2_factor(p.scale);
  // The group's row start, carried from row to row (a pointer bump an iteration). Computed
  // in the loop as x + (active ? row * cols : 0) + col, NVVM rebuilt that address (the 64-bit
  // multiply, the select, the shifts) and ptxas reloaded cols and x in every pack's guarded
  // block: about 70 integer instructions a row at 1-16 lanes. A loop-carried pointer is a leaf
  // of the address, so each load is that register plus an immediate. (It runs past the last
  // row, where nothing is loaded.)
  const T* xr = x + (warp * kRowsPerWarp + group) * p.cols + lane * Vec;
  const long long xr_step = row_step * p.cols;
  for (long long base = warp * kRowsPerWarp; base < p.rows; base += row_step, xr += xr_step) {
    const long long row = base + group;
    const bool active = row < p.rows;
    int packs = active ? lane_packs : 0;
#ifndef CS_EMULATOR
    // One lane a row (no shuffle in the loop, so nothing convergent): left visible, the
    // packs > 0 test splits into the invariant cols > 0, and LLVM unswitches the row loop on it,
    // adding a second loop (for zero columns, never launched) to the kernel's census. Opaque,
    // packs is only known per row.
    if constexpr (Width == 1 && Vec == 1) asm volatile("" : "+r"(packs));
#endif
    float v[Cols];
    float m = kNegInf;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      if (i < kSurePacks ? active : i < packs) {
        load_pack<T, Vec>(xr + i * Width * Vec, sub_array<Vec>(v + i * Vec));
      } else {
#pragma unroll
        for (int j = 0; j < Vec; ++j) v[i * Vec + j] = kNegInf;
      }
#pragma unroll
      for (int j = 0; j < Vec; ++j) m = fmaxf(m, v[i * Vec + j]);
    }
    m = warp_max<Width>(m);
    const float shift = row_shift(m);
    float d = 0.0f;
#pragma unroll
    for (int j = 0; j < Cols; ++j) d += exp_shifted(v[j], shift, k);
    d = warp_sum<Width>(d);
    if (active && lane == 0) store_one(out + row, lse_value(MaxSum{m, d}, p.scale));
  }
}

template <typename T, int Block>
__device__ __forceinline__ void lse_online(const SoftmaxParams& p) {
  const T* x = static_cast<const T*>(p.x);
  float* out = static_cast<float*>(p.y);
  const float k = exp2_factor(p.scale);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const MaxSum s = block_row_state<T, Block>(x + row * p.cols, p.cols, k);
    if (threadIdx.x == 0) store_one(out + row, lse_value(s, p.scale));
  }
}

// Split-row pass 2: chunk 0's block of each row merges the row's chunk states and writes the
// value; the other chunks' blocks have nothing to do (the grid is shared with pass 1).
template <int Block>
__device__ __forceinline__ void lse_split_write(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunks = gridDim.x;
  if (blockIdx.x != 0) return;
  const float k = exp2_factor(p.scale);
  MaxSum s = maxsum_identity();
  for (long long c = threadIdx.x; c < chunks; c += Block) {
    const float* state = p.workspace + 2 * (row * chunks + c);
    s = maxsum_merge(s, MaxSum{load_one(state), load_one(state + 1)}, k);
  }
  s = block_maxsum<Block>(s, k);
  if (threadIdx.x == 0) store_one(static_cast<float*>(p.y) + row, lse_value(s, p.scale));
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
