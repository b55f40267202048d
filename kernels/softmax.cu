// Forward softmax over the last dimension: y[r, :] = exp(x[r, :] - max) / sum(exp(x[r, :] - max)).
//
// Kernel families, chosen by src/planning/ from the row length and row count:
// - softmax_warp:   a row in registers, owned by a group of Width lanes (several rows per warp
//                   when Width < 32). Reads x once, writes y once.
// - softmax_block:  a block per row, the row held in shared memory in its storage type.
//                   Reads x once.
// - softmax_online: a block per row for rows too long for shared memory: one pass computes the
//                   online (max, sum) state, a second pass reads x again and writes y.
// - softmax_split_*: few long rows. Each row is cut into chunks, one block per (chunk, row):
//                   split_stats writes each chunk's (max, sum) to a workspace; split_write merges
//                   the row's states and writes its chunk. Fills the GPU when rows < SMs.
// Every loop over rows is uniform across the warp/block (inactive rows still take part in the
// reductions), because the reductions use full-mask shuffles and block barriers.
#include "common.cuh"
#include "ops.cuh"
#include "row_loops.cuh"

namespace cs {

// T: the input's storage type; TO: the output's (T, or f32 for 16-bit input: forward_f32).
template <typename T, int Width, int Cols, int Vec, typename Op, typename TO = T>
__device__ __forceinline__ void softmax_warp(const SoftmaxParams& p) {
  static_assert(Cols % Vec == 0, "a lane's columns are whole packs");
  static_assert(Width >= 1 && Width <= 32 && (Width & (Width - 1)) == 0, "Width is a power of two");
  constexpr int kPacks = Cols / Vec;
  // Packs that every lane holds in every row this kernel is given (at least warp_min_cols
  // columns): guarded by the row's `active` alone, not by a bounds compare of their own. About
  // half of a lane's packs, which halves the predicates the compiler must keep live in the
  // scalar kernels (0.61 -> 0.58 warp instructions an element at 128 bf16 columns, and up to
  // -0.19 on longer rows). Not for one-lane rows (1-8 columns): the single sure column makes
  // the compiler peel a one-column loop and the gain is nil.
  constexpr int kMinRowPacks = (warp_min_cols(Width, Cols) + Vec - 1) / Vec;
  constexpr int kSurePacks = Width == 1 ? 0 : kMinRowPacks / Width < kPacks ? kMinRowPacks / Width : kPacks;
  constexpr int kRowsPerWarp = 32 / Width;
  const T* x = static_cast<const T*>(p.x);
  TO* y = static_cast<TO*>(p.y);
  const long long warps_per_block = blockDim.x / 32;
  const long long warp = static_cast<long long>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const long long row_step = static_cast<long long>(gridDim.x) * warps_per_block * kRowsPerWarp;
  const int lane = threadIdx.x % Width;
  const int group = (threadIdx.x % 32) / Width;
  // Pack i of a lane sits at pack index i * Width + lane (a group's accesses are contiguous), so
  // it lies inside the row iff i < lane_packs: one 32-bit compare a pack. (cols <= 2048 here,
  // and a whole number of packs when Vec > 1.)
  const int row_packs = static_cast<int>(p.cols / Vec);
  const int lane_packs = row_packs > lane ? (row_packs - lane + Width - 1) / Width : 0;
  const Op op(p);

  for (long long base = warp * kRowsPerWarp; base < p.rows; base += row_step) {
    const long long row = base + group;
    const bool active = row < p.rows;
    const long long row_offset = active ? row * p.cols : 0;
    const int packs = active ? lane_packs : 0;
    float v[Cols];
    float m = kNegInf;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const long long col = (static_cast<long long>(i) * Width + lane) * Vec;
      if (i < kSurePacks ? active : i < packs) {
        load_pack<T, Vec>(x + row_offset + col, sub_array<Vec>(v + i * Vec));
      } else {
#pragma unroll
        for (int j = 0; j < Vec; ++j) v[i * Vec + j] = kNegInf;
      }
#pragma unroll
      for (int j = 0; j < Vec; ++j) m = fmaxf(m, v[i * Vec + j]);
    }
    const float shift = row_shift(warp_max<Width>(m));
    float d = 0.0f;
#pragma unroll
    for (int j = 0; j < Cols; ++j) {
      const float t = op.shifted(v[j], shift);
      const float e = op.exp_of_shifted(t);  // exp(scale * (x - shift))
      d += e;
      v[j] = Op::kFromExp ? e : t;
    }
    const typename Op::Row r = op.row(shift, warp_sum<Width>(d));
    // Every slot's output, unpredicated (slots past the row end compute garbage that is never
    // stored): predicated arithmetic made ptxas reload the scale from the constant bank once
    // per slot in the log-softmax kernels.
#pragma unroll
    for (int j = 0; j < Cols; ++j) v[j] = Op::kFromExp ? op.from_exp(v[j], r) : op.from_shifted(v[j], r);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const long long col = (static_cast<long long>(i) * Width + lane) * Vec;
      if (i < kSurePacks ? active : i < packs) store_pack<TO, Vec>(y + row_offset + col, sub_array<Vec>(v + i * Vec));
    }
  }
}

// Calls f(first_col, values) over a row held in shared memory (column c at buf[c + lead]): the
// scalar head and tail element by element, the packs between as one LDS.128 each. Wide: f
// writes an output twice as wide as T (f32 from 16-bit input); its pack loop is unrolled twice,
// not as the compiler likes: at its default unroll the 8 outputs a pack made ptxas spill the
// log-softmax kernels on sm_75 at 64 registers.
template <typename T, int Block, bool Wide = false, typename F>
__device__ __forceinline__ void for_each_on_chip(SmemPtr<T> buf, long long lead, long long head, long long packs,
                                                 long long cols, F&& f) {
  constexpr int V = Vec16<T>::n;
  for (long long c = threadIdx.x; c < head; c += Block) {
    float v[1] = {to_f32(static_cast<T>(buf[c + lead]))};
    f(c, v);
  }
  const auto pack = [&](long long k) {
    uint32_t w[4];
    float v[V];
    smem_load16(buf, head + lead + k * V, w);
    unpack16<T>(w, v);
    f(head + k * V, v);
  };
  if constexpr (Wide) {
#pragma unroll 2
    for (long long k = threadIdx.x; k < packs; k += Block) pack(k);
  } else {
    for (long long k = threadIdx.x; k < packs; k += Block) pack(k);
  }
  for (long long c = head + packs * V + threadIdx.x; c < cols; c += Block) {
    float v[1] = {to_f32(static_cast<T>(buf[c + lead]))};
    f(c, v);
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

// A block per row, the row held on chip in its storage type (half the footprint of f32 for
// f16/bf16). Column c sits at shared element c + lead, where lead puts x's 16-byte packs on
// 16-byte boundaries of shared memory: a pack moves global -> shared -> registers as LDG.128,
// STS.128, LDS.128, and a warp's consecutive packs hit every bank once (no conflicts). Three
// passes over the row: load and max; sum of exp from shared memory; exp again, scale, store
// (recomputing exp costs less than writing exps back and reading them again).
template <typename T, int Block, typename Op, typename TO = T>
__device__ __forceinline__ void softmax_block(const SoftmaxParams& p) {
  constexpr int V = Vec16<T>::n;
  const T* x = static_cast<const T*>(p.x);
  TO* y = static_cast<TO*>(p.y);
  const SmemPtr<T> buf = dynamic_smem<T>();  // p.cols + V elements
  const Op op(p);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* xr = x + row * p.cols;
    TO* yr = y + row * p.cols;
    const long long head = head_elements(xr, p.cols);
    const long long lead = (V - head) % V;
    const long long packs = (p.cols - head) / V;
    const long long tail = head + packs * V;
    // Pass 1: the row into shared memory, and its maximum.
    float m = kNegInf;
    for (long long c = threadIdx.x; c < head; c += Block) {
      CS_CHECK_GLOBAL(xr + c, sizeof(T), false);
      const T v = xr[c];
      buf[c + lead] = v;
      m = fmaxf(m, to_f32(v));
    }
    for (long long k = threadIdx.x; k < packs; k += Block) {
      uint32_t w[4];
      float v[V];
      load16(xr + head + k * V, w);
      smem_store16(buf, head + lead + k * V, w);
      unpack16<T>(w, v);
#pragma unroll
      for (int j = 0; j < V; ++j) m = fmaxf(m, v[j]);
    }
    for (long long c = tail + threadIdx.x; c < p.cols; c += Block) {
      CS_CHECK_GLOBAL(xr + c, sizeof(T), false);
      const T v = xr[c];
      buf[c + lead] = v;
      m = fmaxf(m, to_f32(v));
    }
    // block_max's barriers also publish every thread's writes to buf.
    const float shift = row_shift(block_max<Block>(m));
    // Pass 2: the sum of exponentials, from shared memory.
    float d = 0.0f;
    for_each_on_chip<T, Block>(buf, lead, head, packs, p.cols, [&](long long, auto& v) {
      constexpr int n = sizeof(v) / sizeof(float);
#pragma unroll
      for (int j = 0; j < n; ++j) d += exp_shifted(v[j], shift, op.k);
    });
    const typename Op::Row r = op.row(shift, block_sum<Block>(d));
    // Pass 3: y. When y's packs line up with x's (the usual case) they go shared -> global as
    // LDS.128 / STG.128 (two STG.128 for f32 output of 16-bit input); otherwise y is still
    // stored in packs (by its own alignment), read from shared memory element by element.
    if (packs_line_up(xr, yr, head)) {
      constexpr bool kWide = sizeof(TO) > sizeof(T);
      for_each_on_chip<T, Block, kWide>(buf, lead, head, packs, p.cols, [&](long long c, auto& v) {
        constexpr int n = sizeof(v) / sizeof(float);
#pragma unroll
        for (int j = 0; j < n; ++j) v[j] = op.from_x(v[j], r);
        store_pack<TO, n>(yr + c, v);
      });
    } else {
      for_each_stored<TO, Block>(yr, p.cols, [&](long long c, auto& v) {
        constexpr int n = sizeof(v) / sizeof(float);
#pragma unroll
        for (int j = 0; j < n; ++j) v[j] = op.from_x(to_f32(static_cast<T>(buf[c + j + lead])), r);
      });
    }
    __syncthreads();  // the next row overwrites buf
  }
}

// The op's output over one row (or chunk) of n elements: the second pass of the online and
// split-row kernels. When y's packs line up with x's (the usual case: same offsets), both move
// in 16-byte packs, chunked by x's alignment; otherwise element by element. The test is made
// once, outside the loops, so the pack loop holds only 16-byte accesses.
template <typename T, int Block, typename Op, typename TO>
__device__ __forceinline__ void write_normalized(const T* xr, TO* yr, long long n, const Op& op,
                                                 const typename Op::Row& r) {
  constexpr int V = Vec16<T>::n;
  const long long head = head_elements(xr, n);
  if (packs_line_up(xr, yr, head)) {
    const long long packs = (n - head) / V;
    const long long tail = head + packs * V;
    for (long long c = threadIdx.x; c < head; c += Block) store_one(yr + c, op.from_x(load_one(xr + c), r));
    // x's last read: its lines may leave L2 first; y is streamed out.
    for_each_pack_batch<T, Block>(xr + head, packs, l2_evict_first(), [&](long long k, uint32_t(&w)[4]) {
      float v[V];
      unpack16<T>(w, v);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = op.from_x(v[j], r);
      store_pack_streaming<TO, V>(yr + head + k * V, v);
    });
    for (long long c = tail + threadIdx.x; c < n; c += Block) store_one(yr + c, op.from_x(load_one(xr + c), r));
  } else {
    for (long long c = threadIdx.x; c < n; c += Block) store_one(yr + c, op.from_x(load_one(xr + c), r));
  }
}

template <typename T, int Block, typename Op, typename TO = T>
__device__ __forceinline__ void softmax_online(const SoftmaxParams& p) {
  const T* x = static_cast<const T*>(p.x);
  TO* y = static_cast<TO*>(p.y);
  const Op op(p);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const MaxSum s = block_row_state<T, Block>(x + row * p.cols, p.cols, op.k);
    write_normalized<T, Block>(x + row * p.cols, y + row * p.cols, p.cols, op, op.row(row_shift(s.m), s.d));
  }
}

// Split-row pass 2: block (chunk, row) merges every chunk state of its row (associative, so the
// order does not matter) and writes its own chunk.
template <typename T, int Block, typename Op, typename TO = T>
__device__ __forceinline__ void softmax_split_write(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
  const long long first = chunk * p.chunk_cols;
  const long long n = p.cols - first < p.chunk_cols ? p.cols - first : p.chunk_cols;
  const Op op(p);
  MaxSum s = maxsum_identity();
  for (long long k = threadIdx.x; k < chunks; k += Block) {
    const float* state = p.workspace + 2 * (row * chunks + k);
    s = maxsum_merge(s, MaxSum{load_one(state), load_one(state + 1)}, op.k);
  }
  s = block_maxsum<Block>(s, op.k);
  const long long offset = row * p.cols + first;
  write_normalized<T, Block>(static_cast<const T*>(p.x) + offset, static_cast<TO*>(p.y) + offset, n, op,
                             op.row(row_shift(s.m), s.d));
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
