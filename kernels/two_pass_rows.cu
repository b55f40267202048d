// The two-pass families, for rows too long for shared memory: the row is read twice, once for
// its statistics (the policy's online State, so one read suffices) and once for the output.
// - online: a block per row.
// - split (split_stats, then split_write): few long rows. Each row is cut into chunks, one
//   block per (chunk, row): split_stats saves each chunk's state in the workspace; split_write
//   merges the row's states (associative, so the order does not matter) and writes its chunk.
//   Fills the GPU when rows < SMs.
// Forward ops (ForwardRows), backward ops (BackwardRows) and logsumexp (LogSumExpRows: no second
// read; its value is written from the state) run on these skeletons. One input moves through
// for_each_loaded / for_each_pack_batch, two through for_each_pack_pair (row_loops.cuh).
#include "common.cuh"
#include "ops.cuh"
#include "row_loops.cuh"

namespace cs {

// The block's statistics State over n elements of a row (or chunk), reduced over the block. The
// first of the inputs' two reads: their lines are kept in L2 for the second. With two inputs,
// the output's alignment decides the pack path as in write_span, so both passes take the same.
template <typename T, int Block, typename Rows, typename TO>
__device__ __forceinline__ typename Rows::State fold_span(const Rows& rows, const T* a, const T* b, const TO* out,
                                                          long long n) {
  typename Rows::State s = rows.identity();
  if constexpr (Rows::kInputs == 1) {
    for_each_loaded<T, Block>(a, n, l2_evict_last(), [&](long long, auto& v) { s = rows.add(s, v, v); });
  } else {
    constexpr int V = Vec16<T>::n;
    const auto one = [&](long long c) {
      const float fa[1] = {load_one(a + c)}, fb[1] = {load_one(b + c)};
      s = rows.add(s, fa, fb);
    };
    if (same_alignment(a, b, static_cast<const T*>(out))) {
      const long long head = head_elements(a, n);
      const long long packs = (n - head) / V;
      for (long long c = threadIdx.x; c < head; c += Block) one(c);
      for_each_pack_pair<T, Block>(a + head, b + head, out + head, packs, l2_evict_last(),
                                   [&](const T*, uint32_t(&wa)[4], uint32_t(&wb)[4]) {
                                     float fa[V], fb[V];
                                     unpack16<T>(wa, fa);
                                     unpack16<T>(wb, fb);
                                     s = rows.add(s, fa, fb);
                                   });
      for (long long c = head + packs * V + threadIdx.x; c < n; c += Block) one(c);
    } else {
      for (long long c = threadIdx.x; c < n; c += Block) one(c);
    }
  }
  return rows.template reduce<Block>(s);
}

// The output over n elements of a row (or chunk), given its constants: the inputs' second read
// (their lines may leave L2 first; the output is streamed out). When the output's packs line up
// with the inputs' (the usual case: same offsets) everything moves in 16-byte packs, chunked by
// the inputs' alignment; otherwise element by element. The test is made once, outside the
// loops, so the pack loop holds only 16-byte accesses.
template <typename T, int Block, typename Rows, typename TO>
__device__ __forceinline__ void write_span(const Rows& rows, const T* a, const T* b, TO* out, long long n,
                                           const typename Rows::Row& r) {
  constexpr int V = Vec16<T>::n;
  const auto one = [&](long long c) {
    store_one(out + c, rows.out(load_one(a + c), Rows::kInputs == 2 ? load_one(b + c) : 0.0f, r));
  };
  // One input: the head first (the output's test needs it). Two: the head after the test, as
  // the backward kernel had it before the skeleton (formed before the test, the f32
  // log-softmax backward write loop took two instructions more).
  const long long head_x = Rows::kInputs == 1 ? head_elements(a, n) : 0;
  bool line_up;
  if constexpr (Rows::kInputs == 1) {
    line_up = packs_line_up(a, out, head_x);
  } else {
    line_up = same_alignment(a, b, static_cast<const T*>(out));
  }
  if (line_up) {
    const long long head = Rows::kInputs == 1 ? head_x : head_elements(a, n);
    const long long packs = (n - head) / V;
    for (long long c = threadIdx.x; c < head; c += Block) one(c);
    if constexpr (Rows::kInputs == 1) {
      for_each_pack_batch<T, Block>(a + head, packs, l2_evict_first(), [&](long long k, uint32_t(&w)[4]) {
        float v[V];
        unpack16<T>(w, v);
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = rows.out(v[j], 0.0f, r);
        store_pack_streaming<TO, V>(out + head + k * V, v);
      });
    } else {
      for_each_pack_pair<T, Block>(a + head, b + head, out + head, packs, l2_evict_first(),
                                   [&](TO* o, uint32_t(&wa)[4], uint32_t(&wb)[4]) {
                                     float fa[V], fb[V];
                                     unpack16<T>(wa, fa);
                                     unpack16<T>(wb, fb);
#pragma unroll
                                     for (int j = 0; j < V; ++j) fa[j] = rows.out(fa[j], fb[j], r);
                                     pack16<T>(fa, wa);
                                     store16_streaming(o, wa);
                                   });
    }
    for (long long c = head + packs * V + threadIdx.x; c < n; c += Block) one(c);
  } else {
    for (long long c = threadIdx.x; c < n; c += Block) one(c);
  }
}

// A block per row: the state in one read, then the output in a second (or the row's value).
template <typename T, int Block, typename Rows, typename TO = T>
__device__ __forceinline__ void two_pass_rows(const SoftmaxParams& p) {
  const T* a = static_cast<const T*>(p.x);
  const T* b = static_cast<const T*>(Rows::kInputs == 2 ? p.dy : p.x);
  TO* y = static_cast<TO*>(p.y);
  const Rows rows(p);
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const long long o = row * p.cols;
    if constexpr (Rows::kWritesRow) {
      const typename Rows::State s = fold_span<T, Block>(rows, a + o, b + o, a + o, p.cols);
      if (threadIdx.x == 0) store_one(static_cast<float*>(p.y) + row, rows.row_value(rows.row(s)));
    } else {
      const typename Rows::State s = fold_span<T, Block>(rows, a + o, b + o, y + o, p.cols);
      write_span<T, Block>(rows, a + o, b + o, y + o, p.cols, rows.row(s));
    }
  }
}

// The columns of block (chunk, row)'s chunk: from `first`, n of them (the last may be shorter).
__device__ __forceinline__ long long chunk_span(const SoftmaxParams& p, long long& first) {
  first = static_cast<long long>(blockIdx.x) * p.chunk_cols;
  return p.cols - first < p.chunk_cols ? p.cols - first : p.chunk_cols;
}

// Split-row pass 1: block (chunk, row) saves its chunk's state at workspace[row][chunk] (two
// floats).
template <typename T, int Block, typename Rows>
__device__ __forceinline__ void split_stats(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunks = gridDim.x;
  long long first;
  const long long n = chunk_span(p, first);
  const long long o = row * p.cols + first;
  const T* a = static_cast<const T*>(p.x) + o;
  const T* b = static_cast<const T*>(Rows::kInputs == 2 ? p.dy : p.x) + o;
  const Rows rows(p);
  // (The output's alignment picks the two-input pack path, as in split_write.)
  const typename Rows::State s =
      fold_span<T, Block>(rows, a, b, Rows::kInputs == 2 ? static_cast<const T*>(p.y) + o : a, n);
  if (threadIdx.x == 0) rows.save(p.workspace + 2 * (row * chunks + blockIdx.x), s);
}

// Split-row pass 2: block (chunk, row) merges every chunk state of its row and writes its own
// chunk. An op that writes one value a row writes it from chunk 0's block; the other chunks'
// blocks have nothing to do (the grid is shared with pass 1).
template <typename T, int Block, typename Rows, typename TO = T>
__device__ __forceinline__ void split_write(const SoftmaxParams& p) {
  const long long row = blockIdx.y, chunks = gridDim.x;
  if (Rows::kWritesRow && blockIdx.x != 0) return;
  const Rows rows(p);
  typename Rows::State s = rows.identity();
  for (long long k = threadIdx.x; k < chunks; k += Block) s = rows.merge(s, rows.restore(p.workspace + 2 * (row * chunks + k)));
  s = rows.template reduce<Block>(s);
  if constexpr (Rows::kWritesRow) {
    if (threadIdx.x == 0) store_one(static_cast<float*>(p.y) + row, rows.row_value(rows.row(s)));
  } else {
    long long first;
    const long long n = chunk_span(p, first);
    const long long o = row * p.cols + first;
    write_span<T, Block>(rows, static_cast<const T*>(p.x) + o, static_cast<const T*>(Rows::kInputs == 2 ? p.dy : p.x) + o,
                         static_cast<TO*>(p.y) + o, n, rows.row(s));
  }
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
