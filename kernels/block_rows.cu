// The block family: a block per row, the row held on chip in its storage type (half the
// footprint of f32 for f16/bf16), for rows that fit in shared memory. Reads each input once and
// writes the output once. Forward ops (ForwardRows: the max as the row loads, the sum of exp from
// shared memory, then the output) and backward ops (BackwardRows: g as y and dy load, then dx)
// run on this one skeleton.
#include "common.cuh"
#include "ops.cuh"
#include "row_loops.cuh"

namespace cs {

// Calls f(first_col, a_values, b_values) over a row held in shared memory (column c of input j
// at buf_j[c + lead]; b only with two inputs): the scalar head and tail element by element, the
// packs between as one LDS.128 an input. Wide: f writes an output twice as wide as T (f32 from
// 16-bit input); its pack loop is unrolled twice, not as the compiler likes: at its default
// unroll the 8 outputs a pack made ptxas spill the log-softmax kernels on sm_75 at 64 registers.
template <typename T, int Block, int Inputs, bool Wide = false, typename F>
__device__ __forceinline__ void for_each_on_chip(SmemPtr<T> buf_a, SmemPtr<T> buf_b, long long lead, long long head,
                                                 long long packs, long long cols, F&& f) {
  constexpr int V = Vec16<T>::n;
  const auto one = [&](long long c) {
    float a[1] = {to_f32(static_cast<T>(buf_a[c + lead]))};
    float b[1] = {0.0f};
    if constexpr (Inputs == 2) b[0] = to_f32(static_cast<T>(buf_b[c + lead]));
    f(c, a, b);
  };
  for (long long c = threadIdx.x; c < head; c += Block) one(c);
  const auto pack = [&](long long k) {
    uint32_t wa[4], wb[4];
    float a[V], b[V];
    smem_load16(buf_a, head + lead + k * V, wa);
    if constexpr (Inputs == 2) smem_load16(buf_b, head + lead + k * V, wb);
    unpack16<T>(wa, a);
    if constexpr (Inputs == 2) unpack16<T>(wb, b);
    f(head + k * V, a, b);
  };
  if constexpr (Wide) {
#pragma unroll 2
    for (long long k = threadIdx.x; k < packs; k += Block) pack(k);
  } else {
    for (long long k = threadIdx.x; k < packs; k += Block) pack(k);
  }
  for (long long c = head + packs * V + threadIdx.x; c < cols; c += Block) one(c);
}

// A block per row. Column c of each input sits at shared element c + lead, where lead puts the
// inputs' 16-byte packs on 16-byte boundaries of shared memory: a pack moves global -> shared
// -> registers as LDG.128, STS.128, LDS.128, and a warp's consecutive packs hit every bank once
// (no conflicts). Two inputs (y, dy) that do not share their alignment move element by element
// (still once each). Passes: the row into shared memory, folding the policy's first statistic;
// the policy's row constants (its reductions, and for the forward ops the sum of exp from shared
// memory); the output from shared memory, in 16-byte packs when it lines up with the inputs.
template <typename T, int Block, typename Rows, typename TO = T>
__device__ __forceinline__ void block_rows(const SoftmaxParams& p) {
  constexpr int V = Vec16<T>::n;
  constexpr int kInputs = Rows::kInputs;
  static_assert(!Rows::kWritesRow, "the block family writes every element");
  const T* a = static_cast<const T*>(p.x);
  const T* b = static_cast<const T*>(kInputs == 2 ? p.dy : p.x);
  TO* y = static_cast<TO*>(p.y);
  // [a row | one pack] and, with two inputs, [b row | one pack] after it, each a whole number of
  // packs (src/planning/shared_memory.rs sizes it).
  const long long stride = (p.cols + V + V - 1) / V * V;
  const SmemPtr<T> buf_a = dynamic_smem<T>();
  const SmemPtr<T> buf_b = kInputs == 2 ? buf_a + stride : buf_a;
  const Rows rows(p);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* ar = a + row * p.cols;
    const T* br = b + row * p.cols;
    TO* yr = y + row * p.cols;
    // Inputs that share their alignment (with two, the output's too) move in packs between a
    // scalar head and tail; else element by element (the whole row is "head", at lead 0). Two copies of the row's code, so
    // that the pack path's loops are those of one input.
    const auto run = [&](auto packed_tag) {
      constexpr bool kPacked = decltype(packed_tag)::value;
      const long long head = kPacked ? head_elements(ar, p.cols) : p.cols;
      const long long lead = kPacked ? (V - head) % V : 0;
      const long long packs = (p.cols - head) / V;
      const long long tail = head + packs * V;
      // Pass 1: the row into shared memory, and the first statistic.
      typename Rows::First s = rows.first_identity();
      const auto one = [&](long long c) {
        const T ea = load_element(ar + c);
        buf_a[c + lead] = ea;
        float fa[1] = {to_f32(ea)}, fb[1] = {0.0f};
        if constexpr (kInputs == 2) {
          const T eb = load_element(br + c);
          buf_b[c + lead] = eb;
          fb[0] = to_f32(eb);
        }
        s = rows.first_fold(s, fa, fb, true);
      };
      for (long long c = threadIdx.x; c < head; c += Block) one(c);
      for (long long k = threadIdx.x; k < packs; k += Block) {
        uint32_t wa[4], wb[4];
        float fa[V], fb[V];
        load16(ar + head + k * V, wa);
        if constexpr (kInputs == 2) load16(br + head + k * V, wb);
        smem_store16(buf_a, head + lead + k * V, wa);
        if constexpr (kInputs == 2) smem_store16(buf_b, head + lead + k * V, wb);
        unpack16<T>(wa, fa);
        if constexpr (kInputs == 2) unpack16<T>(wb, fb);
        s = rows.first_fold(s, fa, fb, true);
      }
      for (long long c = tail + threadIdx.x; c < p.cols; c += Block) one(c);
      // Pass 2: the row's constants. The policy's block reduction comes first: its barriers also
      // publish every thread's writes to the buffers.
      const typename Rows::Row r = rows.template on_chip_row<Block>(s, [&](auto&& f) {
        for_each_on_chip<T, Block, kInputs>(buf_a, buf_b, lead, head, packs, p.cols,
                                            [&](long long, auto& fa, auto& fb) { f(fa, fb); });
      });
      // Pass 3: the output. When y's packs line up with the inputs' (the usual case) they go
      // shared -> global as LDS.128 / STG.128 (two STG.128 for f32 output of 16-bit input);
      // otherwise y is still stored in packs by its own alignment, read from shared memory element
      // by element. (Two inputs took the pack path only if the output lines up too, else they
      // store element by element: a pack path for the output alone made ptxas spill on sm_120
      // at its budget.)
      bool packed_out;
      if constexpr (kInputs == 2) {
        packed_out = kPacked;
      } else {
        packed_out = packs_line_up(ar, yr, head);
      }
      if (packed_out) {
        constexpr bool kWide = sizeof(TO) > sizeof(T);
        for_each_on_chip<T, Block, kInputs, kWide>(buf_a, buf_b, lead, head, packs, p.cols,
                                                   [&](long long c, auto& fa, auto& fb) {
                                                     constexpr int n = sizeof(fa) / sizeof(float);
#pragma unroll
                                                     for (int j = 0; j < n; ++j) fa[j] = rows.out(fa[j], fb[j], r);
                                                     store_pack<TO, n>(yr + c, fa);
                                                   });
      } else if constexpr (kInputs == 2) {
        for (long long c = threadIdx.x; c < p.cols; c += Block) {
          store_one(yr + c, rows.out(to_f32(static_cast<T>(buf_a[c + lead])), to_f32(static_cast<T>(buf_b[c + lead])), r));
        }
      } else {
        for_each_stored<TO, Block>(yr, p.cols, [&](long long c, auto& v) {
          constexpr int n = sizeof(v) / sizeof(float);
#pragma unroll
          for (int j = 0; j < n; ++j) v[j] = rows.out(to_f32(static_cast<T>(buf_a[c + j + lead])), 0.0f, r);
        });
      }
    };
    if (kInputs == 1 || same_alignment(ar, br, reinterpret_cast<const T*>(yr))) {
      run(TrueType{});
    } else if constexpr (kInputs == 2) {
      run(FalseType{});
    }
    __syncthreads();  // the next row overwrites the buffers
  }
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
// The backward block kernels' register budget: 64 registers a thread everywhere, except on
// sm_120, where ptxas 12.9 spilled 16-40 bytes at 64 in the f32 ones: three quarters of the
// blocks, 85 registers. Compiled for sm_120 itself (nvcc, or the run-time fallback) that is this
// branch; the default image's sm_120 SASS comes from compute_90 PTX, whose launch bounds build.rs
// rewrites by the same rule (build/ptx_variants.rs: keep the two in step).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1200
#define CS_BWD_BLOCK_MIN_BLOCKS(n) ((n) * 3 / 4 > 0 ? (n) * 3 / 4 : 1)
#else
#define CS_BWD_BLOCK_MIN_BLOCKS(n) (n)
#endif
