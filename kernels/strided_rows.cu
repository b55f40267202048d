// The softmax family over a dimension other than the last of a contiguous tensor, without a
// transpose. The tensor is [outer, n, inner] with the reduced dimension (n = params cols) in the
// middle; a row (outer index o, inner index i) is n elements `inner` apart, and row
// r = o * inner + i (params rows = outer * inner). Row r's element k sits at
// o * n * inner + k * inner + i.
//
// Threads run over rows, which are neighbours in memory along the inner dimension: lane l of a
// warp takes row 32 * tile + l (or rows 2 * (32 * tile + l) and the next, moved as one word), so
// at each step k a warp reads 32 (or 64) consecutive elements (one stretch of a [k, :] slab, or a
// few when inner is small): coalesced.
// The reduced dimension is split over the block's Slices warps: warp s takes k = s, s + Slices,
// ..., and the warps' partial statistics merge through shared memory (Slices > 1 when there are
// too few rows to fill the GPU one warp a tile).
//
// Two variants of each (src/planning/ picks):
// - on chip: a thread keeps every element it loaded in shared memory, at [input][k][lane]: a
//   slot only its own thread writes and reads, so no barrier guards it; 32 lanes touch 32
//   consecutive elements (no bank conflicts). The write pass reads them there: traffic 1.0.
// - two-pass: the write pass reads the inputs again from global memory: 1.5 (forward) or 5/3
//   (backward); for rows too long for 32 of them to fit in shared memory.
//
// In place is safe: every element is read and written by one thread only, read before written.
#include "common.cuh"
#include "ops.cuh"

namespace cs {

// ---- Row statistics of the ops, as the strided family needs them: a state per thread, folded
// U values at a time (`add`), handed to the other warps as a `Shared` value (`settle`), merged
// across warps (`merge`, back with `from_shared`), turned into per-row constants (`row`), and
// each element's output (`out`). Values past the row end (and of inactive rows) are kPad, which
// adds nothing.

// The forward state of one lane's row: the online (max, sum) with the sum compensated. One lane
// may fold a whole row by itself (one warp a block, a two-pass row of thousands of elements): a
// plain running sum then loses about sqrt(n) ulps (2.4e-6 relative at 697 f32 elements, past the
// f32 tolerance of 2e-6). Each batch's exps are summed pairwise, then added to the running sum
// with Kahan's compensation `c` (the low-order part the sum lost; the true sum is d - c), both
// rescaled with the max: 5 instructions a batch, 0.02 a row element of a warp.
struct CompensatedMaxSum {
  float m;
  float d;
  float c;
};

template <typename Op>
struct ForwardStats {
  static constexpr int kInputs = 1;
  static constexpr float kPad = kNegInf;  // exp(-inf) = 0, and it never raises the max
  using State = CompensatedMaxSum;
  using Shared = MaxSum;  // what warps exchange through shared memory (8 bytes a row)
  using Row = typename Op::Row;
  Op op;
  __device__ __forceinline__ explicit ForwardStats(const SoftmaxParams& p) : op(p) {}
  __device__ __forceinline__ State identity() const { return State{kNegInf, 0.0f, 0.0f}; }
  template <int U>
  __device__ __forceinline__ State add(State s, const float (&x)[U], const float (&)[U]) const {
    static_assert(U > 0 && (U & (U - 1)) == 0, "pairwise sums of a power of two");
    float m = s.m;
#pragma unroll
    for (int i = 0; i < U; ++i) m = fmaxf(m, x[i]);
    const float shift = row_shift(m);
    float e[U];
#pragma unroll
    for (int i = 0; i < U; ++i) e[i] = exp_shifted(x[i], shift, op.k);
#pragma unroll
    for (int w = U / 2; w > 0; w /= 2) {
#pragma unroll
      for (int i = 0; i < w; ++i) e[i] += e[i + w];
    }
    // (A -inf max so far rescales by exp(-inf) = 0: d and c are 0 then anyway.)
    const float r = exp_shifted(s.m, shift, op.k);
    const float d = s.d * r;
    const float y = e[0] - s.c * r;
    const float t = d + y;
    return State{m, t, (t - d) - y};
  }
  __device__ __forceinline__ Shared settle(State s) const { return MaxSum{s.m, s.d - s.c}; }
  __device__ __forceinline__ State from_shared(Shared s) const { return State{s.m, s.d, 0.0f}; }
  __device__ __forceinline__ Shared merge(Shared a, Shared b) const { return maxsum_merge(a, b, op.k); }
  __device__ __forceinline__ Row row(State s) const { return op.row(row_shift(s.m), s.d - s.c); }
  __device__ __forceinline__ float out(float x, float, const Row& r) const { return op.from_x(x, r); }
};

// Backward: y (first input) and dy (second); g = sum(term(y, dy)). A pad of y = 0, dy = 0 adds 0
// to g for both ops (softmax: y == 0 is masked; log-softmax: the term is dy).
template <typename Op>
struct BackwardStats {
  static constexpr int kInputs = 2;
  static constexpr float kPad = 0.0f;
  using State = float;
  using Shared = float;
  using Row = float;
  Op op;
  __device__ __forceinline__ explicit BackwardStats(const SoftmaxParams& p) : op(p) {}
  __device__ __forceinline__ State identity() const { return 0.0f; }
  template <int U>
  __device__ __forceinline__ State add(State g, const float (&y)[U], const float (&dy)[U]) const {
#pragma unroll
    for (int u = 0; u < U; ++u) g += op.term(y[u], dy[u]);
    return g;
  }
  __device__ __forceinline__ Shared settle(State g) const { return g; }
  __device__ __forceinline__ State from_shared(Shared g) const { return g; }
  __device__ __forceinline__ Shared merge(Shared a, Shared b) const { return a + b; }
  __device__ __forceinline__ Row row(State g) const { return g; }
  __device__ __forceinline__ float out(float y, float dy, float g) const { return op.out(y, dy, g); }
};

// The state of each of the lane's P rows from every warp's share: every warp merges the Slices
// partial states of its lane's rows in the same order, so all of them get the same bits.
template <int Slices, int P, typename Stats>
__device__ __forceinline__ void merge_slices(typename Stats::State (&s)[P], const Stats& stats) {
  if constexpr (Slices > 1) {
    CS_SHARED_ARRAY(typename Stats::Shared, partial, P * Slices * 32);  // [p][slice][lane]
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int q = 0; q < P; ++q) partial[q * Slices * 32 + threadIdx.x] = stats.settle(s[q]);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < P; ++q) {
      typename Stats::Shared total = partial[q * Slices * 32 + lane];
      // Unrolled: once a tile, not an element (and no loop for the SASS census to take for a
      // steady state).
#pragma unroll
      for (int j = 1; j < Slices; ++j) total = stats.merge(total, partial[(q * Slices + j) * 32 + lane]);
      s[q] = stats.from_shared(total);
    }
    __syncthreads();  // the next tile's states overwrite `partial`
  }
}

// Words a thread loads before it uses the first: U loads in flight a thread (of each input),
// and one rescale of the online state per U elements of a row. 8 against 4: 0.59 -> 0.54 warp
// instructions an element (f16 softmax, on chip, two rows a lane; sm_90).
constexpr int kStridedBatch = 8;

// P neighbouring elements of storage type T (one element of each of a lane's P rows) as one
// unsigned word of P * sizeof(T) bytes: moved by one global or shared access, never split.
template <typename T, int P>
struct RowWord {
  static_assert(P == 1 || P == 2, "one or two rows a lane");
  static constexpr int kBits = 8 * static_cast<int>(sizeof(T));
  using Type = typename Conditional<
      P * sizeof(T) == 8, unsigned long long,
      typename Conditional<P * sizeof(T) == 4, uint32_t, unsigned short>::type>::type;
  __device__ __forceinline__ static void unpack(Type w, float (&out)[P]) {
#pragma unroll
    for (int q = 0; q < P; ++q) out[q] = to_f32(from_storage_bits<T>(static_cast<uint32_t>(w >> (q * kBits))));
  }
  __device__ __forceinline__ static Type pack(const float (&in)[P]) {
    Type w = 0;
#pragma unroll
    for (int q = 0; q < P; ++q) w |= static_cast<Type>(static_cast<Type>(storage_bits(from_f32<T>(in[q]))) << (q * kBits));
    return w;
  }
};


// Where a thread's elements of its rows are: its j-th word (k = slice + j * Slices) at
// a[j * step] (and b[j * step], out[j * step]) in global memory, at cache[slot + j * 32 *
// Slices] (and at second + that) on chip. The output's words (WO) hold the same P elements in
// the output's storage type (f32 for forward_f32 of 16-bit input), so `step` counts both.
template <typename W, typename WO = W>
struct StridedCursor {
  const W* a;
  const W* b;
  WO* out;
  long long step;
  int slot;
  __device__ __forceinline__ void advance(int words, int slot_step) {
    a += words * step;
    b += words * step;
    out += words * step;
    slot += words * slot_step;
  }
};

// Pass 1 over the next U words (Full) or the `left` < U remaining ones: loads them (keeping a
// copy on chip) and folds them into the P row states. The full batch has no predicate: the loop
// that runs it is the steady state; the partial one runs once a row, outside any loop.
template <typename T, int Slices, int P, bool OnChip, bool Full, typename Stats, typename WO>
__device__ __forceinline__ void fold_batch(const Stats& stats, typename Stats::State (&s)[P],
                                           const StridedCursor<typename RowWord<T, P>::Type, WO>& c,
                                           SmemPtr<typename RowWord<T, P>::Type> cache, int second, int left) {
  constexpr int U = kStridedBatch;
  using Word = RowWord<T, P>;
  float a[P][U], b[P][U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    float va[P], vb[P];
#pragma unroll
    for (int q = 0; q < P; ++q) {
      va[q] = Stats::kPad;
      vb[q] = 0.0f;
    }
    if (Full || u < left) {
      const typename Word::Type wa = load_element(c.a + u * c.step);
      Word::unpack(wa, va);
      if constexpr (OnChip) cache[c.slot + u * 32 * Slices] = wa;
      if constexpr (Stats::kInputs == 2) {
        const typename Word::Type wb = load_element(c.b + u * c.step);
        Word::unpack(wb, vb);
        if constexpr (OnChip) cache[second + c.slot + u * 32 * Slices] = wb;
      }
    }
#pragma unroll
    for (int q = 0; q < P; ++q) {
      a[q][u] = va[q];
      b[q][u] = vb[q];
    }
  }
#pragma unroll
  for (int q = 0; q < P; ++q) s[q] = stats.add(s[q], a[q], b[q]);
}

// Pass 2 over the next U words (or the `left` remaining): each output from the on-chip copy or
// a second read.
template <typename T, typename TO, int Slices, int P, bool OnChip, bool Full, typename Stats>
__device__ __forceinline__ void write_batch(const Stats& stats, const typename Stats::Row (&r)[P],
                                            const StridedCursor<typename RowWord<T, P>::Type,
                                                                typename RowWord<TO, P>::Type>& c,
                                            SmemPtr<typename RowWord<T, P>::Type> cache, int second, int left) {
  constexpr int U = kStridedBatch;
  using Word = RowWord<T, P>;
  typename Word::Type wa[U], wb[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    wa[u] = wb[u] = 0;
    if (Full || u < left) {
      if constexpr (OnChip) {
        wa[u] = cache[c.slot + u * 32 * Slices];
        if constexpr (Stats::kInputs == 2) wb[u] = cache[second + c.slot + u * 32 * Slices];
      } else {
        wa[u] = load_element(c.a + u * c.step);
        if constexpr (Stats::kInputs == 2) wb[u] = load_element(c.b + u * c.step);
      }
    }
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (Full || u < left) {
      float va[P], vb[P] = {};
      Word::unpack(wa[u], va);
      if constexpr (Stats::kInputs == 2) Word::unpack(wb[u], vb);
#pragma unroll
      for (int q = 0; q < P; ++q) va[q] = stats.out(va[q], vb[q], r[q]);
      store_element(c.out + u * c.step, RowWord<TO, P>::pack(va));
    }
  }
}

// P = rows a lane: 1, or 2 neighbouring rows (inner even, every tensor aligned to 2 elements)
// moved as one 4- or 8-byte word, which halves the loads, stores and address arithmetic an
// element. TO: the output's storage type (T, or f32 for 16-bit input).
template <typename T, int Slices, bool OnChip, int P, typename Stats, typename TO = T>
__device__ __forceinline__ void strided_rows(const SoftmaxParams& p) {
  constexpr int U = kStridedBatch;
  using W = typename RowWord<T, P>::Type;
  using WO = typename RowWord<TO, P>::Type;
  const long long inner = p.inner;
  const int n = static_cast<int>(p.cols);  // < 2^31: checked on the host
  const int lane = threadIdx.x % 32;
  const int slice = threadIdx.x / 32;
  const Stats stats(p);
  // On chip: input j's word k of this lane at (j * n + k) * 32 + lane.
  const SmemPtr<W> cache = dynamic_smem<W>();
  const int second = OnChip ? n * 32 : 0;
  // Shared-memory slots advance only on chip (a two-pass row may be far longer than int slots).
  constexpr int kSlotStep = OnChip ? 32 * Slices : 0;
  for (long long tile = blockIdx.x; tile * 32 * P < p.rows; tile += gridDim.x) {
    // The lane's first row; with P = 2 its neighbour (the next inner index) is the second.
    const long long row = (tile * 32 + lane) * P;
    const bool active = row < p.rows;
    const long long o = active ? row / inner : 0;
    // This thread's elements of its rows: k = slice, slice + Slices, ... (none for rows past
    // the end); element k sits k * inner past element (o, 0, i). The loops below hold no
    // barrier or shuffle, so their trip counts may differ between lanes.
    const int mine = active && slice < n ? (n - 1 - slice) / Slices + 1 : 0;
    const long long start = active ? (o * p.cols * inner + (row - o * inner) + slice * inner) / P : 0;
    // (Forward ops have no dy: their second cursor walks x and is never read.)
    const W* b_base = static_cast<const W*>(Stats::kInputs == 2 ? p.dy : p.x);
    const StridedCursor<W, WO> first{static_cast<const W*>(p.x) + start, b_base + start,
                                     static_cast<WO*>(p.y) + start, Slices * inner / P, slice * 32 + lane};
    // Pass 1: the row statistics (and the on-chip copy), U loads in flight.
    typename Stats::State s[P];
#pragma unroll
    for (int q = 0; q < P; ++q) s[q] = stats.identity();
    StridedCursor<W, WO> c = first;
    int j = 0;
    for (; j <= mine - U; j += U, c.advance(U, kSlotStep)) {
      fold_batch<T, Slices, P, OnChip, true>(stats, s, c, cache, second, U);
    }
    if (j < mine) fold_batch<T, Slices, P, OnChip, false>(stats, s, c, cache, second, mine - j);
    merge_slices<Slices>(s, stats);
    typename Stats::Row r[P];
#pragma unroll
    for (int q = 0; q < P; ++q) r[q] = stats.row(s[q]);
    // Pass 2: every element's output.
    c = first;
    j = 0;
    for (; j <= mine - U; j += U, c.advance(U, kSlotStep)) {
      write_batch<T, TO, Slices, P, OnChip, true>(stats, r, c, cache, second, U);
    }
    if (j < mine) write_batch<T, TO, Slices, P, OnChip, false>(stats, r, c, cache, second, mine - j);
  }
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
