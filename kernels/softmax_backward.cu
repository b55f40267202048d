// Backward passes of softmax and log-softmax over the last dimension. Three tensors per row: the
// forward output y (params x), the upstream gradient dy (params dy) and dx (params y), which may
// be the very same view as dy or y (every element is read before the thread that owns it writes
// it, and the row statistic is complete before any write).
//
//   softmax:      dx = s * y * (dy - g),        g = sum(dy * y)
//   log-softmax:  dx = s * (dy - exp(y) * g),   g = sum(dy)
//
// Masked elements took no part in the forward pass, so they get 0 and add nothing to g, whatever
// their dy (even inf or NaN): softmax y == 0, log-softmax y == -inf. A fully masked row gives 0.
//
// Families, chosen by src/planning/ as for the forward ops:
// - backward_warp:   a row in registers (y and dy), Width lanes a row. Traffic 1.0 (3 tensors).
// - backward_block:  a block per row, y and dy held in shared memory. Traffic 1.0.
// - backward_online: a block per row, g in one pass, dx in a second (y and dy read twice: 5/3),
//                    for rows too long for shared memory.
// - backward_split_*: few long rows: per-chunk partial g into the workspace, then a merge and
//                    the chunk's dx.
#include "common.cuh"
#include "ops.cuh"

namespace cs {

template <typename T, int Width, int Cols, int Vec, typename Op>
__device__ __forceinline__ void backward_warp(const SoftmaxParams& p) {
  static_assert(Cols % Vec == 0, "a lane's columns are whole packs");
  constexpr int kPacks = Cols / Vec;
  // As in softmax_warp: packs every lane holds in the shortest row need no bounds compare.
  constexpr int kMinRowPacks = (warp_min_cols(Width, Cols) + Vec - 1) / Vec;
  constexpr int kSurePacks = Width == 1 ? 0 : kMinRowPacks / Width < kPacks ? kMinRowPacks / Width : kPacks;
  constexpr int kRowsPerWarp = 32 / Width;
  const T* yv = static_cast<const T*>(p.x);
  const T* dyv = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.y);
  const long long warps_per_block = blockDim.x / 32;
  const long long warp = static_cast<long long>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const long long row_step = static_cast<long long>(gridDim.x) * warps_per_block * kRowsPerWarp;
  const int lane = threadIdx.x % Width;
  const int group = (threadIdx.x % 32) / Width;
  const int row_packs = static_cast<int>(p.cols / Vec);
  const int lane_packs = row_packs > lane ? (row_packs - lane + Width - 1) / Width : 0;
  const Op op(p);
  // Slots past the row end keep finite stale values: their outputs are computed (unpredicated)
  // and never stored, and they add nothing to g.
  float a[Cols], b[Cols];
#pragma unroll
  for (int j = 0; j < Cols; ++j) a[j] = b[j] = 0.0f;

  for (long long base = warp * kRowsPerWarp; base < p.rows; base += row_step) {
    const long long row = base + group;
    const bool active = row < p.rows;
    const long long row_offset = active ? row * p.cols : 0;
    const int packs = active ? lane_packs : 0;
    float g = 0.0f;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const long long col = (static_cast<long long>(i) * Width + lane) * Vec;
      if (i < kSurePacks ? active : i < packs) {
        load_pack<T, Vec>(yv + row_offset + col, sub_array<Vec>(a + i * Vec));
        load_pack<T, Vec>(dyv + row_offset + col, sub_array<Vec>(b + i * Vec));
#pragma unroll
        for (int j = 0; j < Vec; ++j) g += op.term(a[i * Vec + j], b[i * Vec + j]);
      }
    }
    g = warp_sum<Width>(g);
#pragma unroll
    for (int j = 0; j < Cols; ++j) a[j] = op.out(a[j], b[j], g);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const long long col = (static_cast<long long>(i) * Width + lane) * Vec;
      if (i < kSurePacks ? active : i < packs) store_pack<T, Vec>(dx + row_offset + col, sub_array<Vec>(a + i * Vec));
    }
  }
}

// Packs of each input a thread loads before it uses the first: 2 x 2 x 16 bytes in flight a
// thread (the forward two-pass kernels hold 4 x 16 of one input). 4 was tried when the loop
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

// True when the three rows start at the same offset from a 16-byte boundary (the usual case):
// then they move in 16-byte packs together.
template <typename T>
__device__ __forceinline__ bool same_alignment(const T* a, const T* b, const T* c) {
  const uintptr_t x = reinterpret_cast<uintptr_t>(a);
  return (((x ^ reinterpret_cast<uintptr_t>(b)) | (x ^ reinterpret_cast<uintptr_t>(c))) & 15u) == 0;
}

// The block's share of g over n elements of a row (or chunk), reduced over the block. dx's
// alignment decides the pack path as in write_backward, so both passes take the same one.
template <typename T, int Block, typename Op>
__device__ __forceinline__ float block_row_g(const T* yr, const T* dyr, const T* dxr, long long n, const Op& op) {
  constexpr int V = Vec16<T>::n;
  float g = 0.0f;
  if (same_alignment(yr, dyr, dxr)) {
    const long long head = head_elements(yr, n);
    const long long packs = (n - head) / V;
    for (long long c = threadIdx.x; c < head; c += Block) g += op.term(load_one(yr + c), load_one(dyr + c));
    // The first of two reads: keep the lines in L2 for the second.
    for_each_pack_pair<T, Block>(yr + head, dyr + head, dxr + head, packs, l2_evict_last(),
                                 [&](const T*, uint32_t(&wy)[4], uint32_t(&wd)[4]) {
                                   float a[V], b[V];
                                   unpack16<T>(wy, a);
                                   unpack16<T>(wd, b);
#pragma unroll
                                   for (int j = 0; j < V; ++j) g += op.term(a[j], b[j]);
                                 });
    for (long long c = head + packs * V + threadIdx.x; c < n; c += Block) {
      g += op.term(load_one(yr + c), load_one(dyr + c));
    }
  } else {
    for (long long c = threadIdx.x; c < n; c += Block) g += op.term(load_one(yr + c), load_one(dyr + c));
  }
  return block_sum<Block>(g);
}

// dx over n elements of a row (or chunk) given g: the second read of y and dy.
template <typename T, int Block, typename Op>
__device__ __forceinline__ void write_backward(const T* yr, const T* dyr, T* dxr, long long n, const Op& op, float g) {
  constexpr int V = Vec16<T>::n;
  if (same_alignment(yr, dyr, static_cast<const T*>(dxr))) {
    const long long head = head_elements(yr, n);
    const long long packs = (n - head) / V;
    for (long long c = threadIdx.x; c < head; c += Block) {
      store_one(dxr + c, op.out(load_one(yr + c), load_one(dyr + c), g));
    }
    for_each_pack_pair<T, Block>(yr + head, dyr + head, dxr + head, packs, l2_evict_first(),
                                 [&](T* dxp, uint32_t(&wy)[4], uint32_t(&wd)[4]) {
                                   float a[V], b[V];
                                   unpack16<T>(wy, a);
                                   unpack16<T>(wd, b);
#pragma unroll
                                   for (int j = 0; j < V; ++j) a[j] = op.out(a[j], b[j], g);
                                   pack16<T>(a, wy);
                                   store16_streaming(dxp, wy);
                                 });
    for (long long c = head + packs * V + threadIdx.x; c < n; c += Block) {
      store_one(dxr + c, op.out(load_one(yr + c), load_one(dyr + c), g));
    }
  } else {
    for (long long c = threadIdx.x; c < n; c += Block) {
      store_one(dxr + c, op.out(load_one(yr + c), load_one(dyr + c), g));
    }
  }
}

// A block per row with y and dy held on chip in their storage type: traffic 1.0 (y and dy read
// once, dx written once). Column c of each sits at shared element c + lead, where lead puts the
// rows' 16-byte packs on 16-byte boundaries of shared memory (as in softmax_block). Two passes:
// load both rows and sum g; dx from shared memory. When y, dy and dx do not share their
// alignment the rows move element by element (still once each).
template <typename T, int Block, typename Op>
__device__ __forceinline__ void backward_block(const SoftmaxParams& p) {
  constexpr int V = Vec16<T>::n;
  const T* y = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.y);
  // [y row | one pack | dy row | one pack], each row lead elements in.
  const long long stride = (p.cols + V + V - 1) / V * V;  // elements, a whole number of packs
  const SmemPtr<T> buf_y = dynamic_smem<T>();
  const SmemPtr<T> buf_dy = buf_y + stride;
  const Op op(p);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const long long o = row * p.cols;
    const T* yr = y + o;
    const T* dyr = dy + o;
    T* dxr = dx + o;
    float g = 0.0f;
    if (same_alignment(yr, dyr, static_cast<const T*>(dxr))) {
      const long long head = head_elements(yr, p.cols);
      const long long lead = (V - head) % V;
      const long long packs = (p.cols - head) / V;
      const long long tail = head + packs * V;
      // Pass 1: both rows into shared memory, and g.
      for (long long c = threadIdx.x; c < head; c += Block) {
        const T a = load_element(yr + c), b = load_element(dyr + c);
        buf_y[c + lead] = a;
        buf_dy[c + lead] = b;
        g += op.term(to_f32(a), to_f32(b));
      }
      for (long long k = threadIdx.x; k < packs; k += Block) {
        uint32_t wy[4], wd[4];
        load16(yr + head + k * V, wy);
        load16(dyr + head + k * V, wd);
        smem_store16(buf_y, head + lead + k * V, wy);
        smem_store16(buf_dy, head + lead + k * V, wd);
        float a[V], b[V];
        unpack16<T>(wy, a);
        unpack16<T>(wd, b);
#pragma unroll
        for (int j = 0; j < V; ++j) g += op.term(a[j], b[j]);
      }
      for (long long c = tail + threadIdx.x; c < p.cols; c += Block) {
        const T a = load_element(yr + c), b = load_element(dyr + c);
        buf_y[c + lead] = a;
        buf_dy[c + lead] = b;
        g += op.term(to_f32(a), to_f32(b));
      }
      // block_sum's barriers also publish every thread's writes to the buffers.
      g = block_sum<Block>(g);
      // Pass 2: dx from shared memory, packs as LDS.128 x 2 -> STG.128.
      for (long long c = threadIdx.x; c < head; c += Block) {
        store_one(dxr + c, op.out(to_f32(static_cast<T>(buf_y[c + lead])), to_f32(static_cast<T>(buf_dy[c + lead])), g));
      }
      for (long long k = threadIdx.x; k < packs; k += Block) {
        uint32_t wy[4], wd[4];
        smem_load16(buf_y, head + lead + k * V, wy);
        smem_load16(buf_dy, head + lead + k * V, wd);
        float a[V], b[V];
        unpack16<T>(wy, a);
        unpack16<T>(wd, b);
#pragma unroll
        for (int j = 0; j < V; ++j) a[j] = op.out(a[j], b[j], g);
        pack16<T>(a, wy);
        store16(dxr + head + k * V, wy[0], wy[1], wy[2], wy[3]);
      }
      for (long long c = tail + threadIdx.x; c < p.cols; c += Block) {
        store_one(dxr + c, op.out(to_f32(static_cast<T>(buf_y[c + lead])), to_f32(static_cast<T>(buf_dy[c + lead])), g));
      }
    } else {
      for (long long c = threadIdx.x; c < p.cols; c += Block) {
        const T a = load_element(yr + c), b = load_element(dyr + c);
        buf_y[c] = a;
        buf_dy[c] = b;
        g += op.term(to_f32(a), to_f32(b));
      }
      g = block_sum<Block>(g);
      for (long long c = threadIdx.x; c < p.cols; c += Block) {
        store_one(dxr + c, op.out(to_f32(static_cast<T>(buf_y[c])), to_f32(static_cast<T>(buf_dy[c])), g));
      }
    }
    __syncthreads();  // the next row overwrites the buffers
  }
}

template <typename T, int Block, typename Op>
__device__ __forceinline__ void backward_online(const SoftmaxParams& p) {
  const T* y = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.y);
  const Op op(p);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const long long o = row * p.cols;
    const float g = block_row_g<T, Block>(y + o, dy + o, dx + o, p.cols, op);
    write_backward<T, Block>(y + o, dy + o, dx + o, p.cols, op, g);
  }
}

// Split-row pass 1: block (chunk, row) stores its chunk's partial g at workspace[row][chunk]
// (as (g, 0): the workspace holds two floats a chunk).
template <typename T, int Block, typename Op>
__device__ __forceinline__ void backward_split_stats(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
  const long long first = chunk * p.chunk_cols;
  const long long n = p.cols - first < p.chunk_cols ? p.cols - first : p.chunk_cols;
  const long long o = row * p.cols + first;
  const Op op(p);
  const float g = block_row_g<T, Block>(static_cast<const T*>(p.x) + o, static_cast<const T*>(p.dy) + o,
                                        static_cast<const T*>(p.y) + o, n, op);
  if (threadIdx.x == 0) {
    const float state[2] = {g, 0.0f};
    store_pack<float, 2>(p.workspace + 2 * (row * chunks + chunk), state);
  }
}

// Split-row pass 2: block (chunk, row) adds the row's partial sums and writes its chunk.
template <typename T, int Block, typename Op>
__device__ __forceinline__ void backward_split_write(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunk = blockIdx.x, chunks = gridDim.x;
  const long long first = chunk * p.chunk_cols;
  const long long n = p.cols - first < p.chunk_cols ? p.cols - first : p.chunk_cols;
  const Op op(p);
  float g = 0.0f;
  for (long long k = threadIdx.x; k < chunks; k += Block) g += load_one(p.workspace + 2 * (row * chunks + k));
  g = block_sum<Block>(g);
  const long long o = row * p.cols + first;
  write_backward<T, Block>(static_cast<const T*>(p.x) + o, static_cast<const T*>(p.dy) + o,
                           static_cast<T*>(p.y) + o, n, op, g);
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
// The block kernels' register budget: 64 registers a thread everywhere, except on sm_120, where
// ptxas 12.9 spilled 16-40 bytes at 64 in the f32 ones: three quarters of the blocks, 85
// registers. Compiled for sm_120 itself (nvcc, or the run-time fallback) that is this branch;
// the default image's sm_120 SASS comes from compute_90 PTX, whose launch bounds build.rs
// rewrites by the same rule (build/ptx_variants.rs: keep the two in step).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1200
#define CS_BWD_BLOCK_MIN_BLOCKS(n) ((n) * 3 / 4 > 0 ? (n) * 3 / 4 : 1)
#else
#define CS_BWD_BLOCK_MIN_BLOCKS(n) (n)
#endif
