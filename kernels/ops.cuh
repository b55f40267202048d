// The ops of the softmax family as policies on the kernel families (docs/architecture.md: an op is
// a small policy; a family owns the row loop, the loads and stores and the reductions). The op
// structs say what an element's output is from its row's statistics; the row policies below them
// say what the row families load, reduce and store. Every family includes this header: the row
// families (warp_rows.cu, block_rows.cu, two_pass_rows.cu) and the strided family
// (strided_rows.cu).
#pragma once

#include "common.cuh"

namespace cs {

// ---- The op a family computes. Every family finds each row's statistics the same way: the
// shift (row max, -inf -> 0) and the sum of exp(scale * (x - shift)); the op turns them into
// per-row constants (`row`) and each element's output. An op is built once a thread from the
// launch parameters (the scale); the backward pass and the cross-entropy epilogue of later
// issues are further ops on the same families.
struct SoftmaxOp {
  // The output is exp(scale * (x - shift)) / sum: register-resident rows keep the exps (else
  // they keep x - shift, for from_shifted).
  static constexpr bool kFromExp = true;
  float k;  // exp2 factor: log2(e) * scale
  __device__ __forceinline__ explicit SoftmaxOp(const SoftmaxParams& p) : k(exp2_factor(p.scale)) {}
  struct Row {
    float shift;
    float inv;  // 1 / sum, 0 for an all -inf row
  };
  __device__ __forceinline__ Row row(float shift, float sum) const { return Row{shift, safe_reciprocal(sum)}; }
  // The warp family keeps t = shifted(x) for each element and takes exp(scale * (x - shift))
  // as exp_of_shifted(t). (x - shift may overflow to -inf, whose exp, 0, is exact.)
  __device__ __forceinline__ float shifted(float x, float shift) const { return x - shift; }
  __device__ __forceinline__ float exp_of_shifted(float t) const { return fast_exp2(t * k); }
  // From e = exp(scale * (x - shift)), already computed.
  __device__ __forceinline__ float from_exp(float e, const Row& r) const { return e * r.inv; }
  __device__ __forceinline__ float from_shifted(float t, const Row& r) const {
    return from_exp(fast_exp2(t * k), r);
  }
  // From x.
  __device__ __forceinline__ float from_x(float x, const Row& r) const {
    return from_exp(exp_shifted(x, r.shift, k), r);
  }
};

// log_softmax(scale * x) = scale * (x - m) - log(sum), from the row's (m, sum): never
// log(softmax), which underflows to -inf where softmax rounds to 0. Two instructions an element
// (FFMA, FFMA) and one MUFU.LG2 a row. An all -inf row (sum 0) takes log_sum = 0 and gives -inf
// everywhere; a NaN sum (a NaN or +inf in the row) gives a NaN row.
//
// x - m overflows f32 when x and m lie near opposite ends of the range (f32 and bf16 logits
// near 3e38): -inf, where scale * (x - m) is finite for scale < 1. So for scale < 1 the
// difference is taken of halves, t = x / 2 - m / 2 (one FFMA, rounded once like x - m, and
// never overflowing), and multiplied by 2 * scale; halving is exact (above the subnormals), so
// every finite result has the bits of scale * (x - m) - log(sum). For scale >= 1 an overflowed
// x - m means a result below -FLT_MAX, and -inf is the correctly rounded answer: h = 1 there.
struct LogSoftmaxOp {
  static constexpr bool kFromExp = false;
  float k;      // exp2 factor: log2(e) * scale
  float h;      // 1/2 for scale < 1, else 1: t = h * (x - shift)
  float k_t;    // k / h: exp(scale * (x - shift)) = exp2(t * k_t)
  float scale_t;  // scale / h: scale * (x - shift) = t * scale_t
  __device__ __forceinline__ explicit LogSoftmaxOp(const SoftmaxParams& p)
      : k(exp2_factor(p.scale)),
        h(p.scale < 1.0f ? 0.5f : 1.0f),
        k_t(p.scale < 1.0f ? 2.0f * k : k),
        scale_t(p.scale < 1.0f ? 2.0f * p.scale : p.scale) {}
  struct Row {
    float shift;
    float log_sum;
  };
  __device__ __forceinline__ Row row(float shift, float sum) const {
    return Row{shift, sum == 0.0f ? 0.0f : fast_log2(sum) * kLn2};
  }
  __device__ __forceinline__ float shifted(float x, float shift) const { return fmaf(x, h, -(h * shift)); }
  __device__ __forceinline__ float exp_of_shifted(float t) const { return fast_exp2(t * k_t); }
  __device__ __forceinline__ float from_exp(float, const Row&) const { return 0.0f; }  // not used
  // From t = shifted(x), already formed for the sum (one FFMA).
  __device__ __forceinline__ float from_shifted(float t, const Row& r) const {
    return fmaf(t, scale_t, -r.log_sum);
  }
  __device__ __forceinline__ float from_x(float x, const Row& r) const { return from_shifted(shifted(x, r.shift), r); }
};

// ---- Backward ops: the row statistic is g, a plain sum of term(y, dy); each output is
// out(y, dy, g).
struct SoftmaxBackwardOp {
  float scale;
  __device__ __forceinline__ explicit SoftmaxBackwardOp(const SoftmaxParams& p) : scale(p.scale) {}
  __device__ __forceinline__ float term(float y, float dy) const { return y == 0.0f ? 0.0f : y * dy; }
  __device__ __forceinline__ float out(float y, float dy, float g) const {
    // y * (dy - g) * scale as y * fma(dy, scale, -g * scale): one instruction fewer; g * scale is
    // a per-row constant, its rounding far below the cancellation error the tests allow.
    return y == 0.0f ? 0.0f : y * fmaf(dy, scale, -(g * scale));
  }
};

struct LogSoftmaxBackwardOp {
  float scale;
  __device__ __forceinline__ explicit LogSoftmaxBackwardOp(const SoftmaxParams& p) : scale(p.scale) {}
  __device__ __forceinline__ float term(float y, float dy) const { return y == kNegInf ? 0.0f : dy; }
  __device__ __forceinline__ float out(float y, float dy, float g) const {
    return y == kNegInf ? 0.0f : (dy - fast_exp2(y * kLog2e) * g) * scale;
  }
};

// ---- Row policies: what the row families (warp_rows.cu, block_rows.cu, two_pass_rows.cu) do
// with a row, in three parts:
// - load: kInputs, the tensors an element is read from (x; or y and dy for the backward ops);
// - statistics: how the row is summarised. The register and on-chip families (the whole row is
//   held) take a first statistic as the row is loaded (`First`, folded by `first_fold`) and turn
//   it into the row's constants with the reductions of their own (`registers_row` over a lane's
//   registers, `on_chip_row` over the row in shared memory, which it may visit again). The
//   two-pass and split families (the row is read twice) keep an online `State` (`identity`,
//   `add`, `reduce` over the block, `merge`, `save`/`restore` in the split workspace) and make
//   the row's constants from it (`row`);
// - store: kWritesRow false: every element's output, `out(a, b, row)` (and `out_kept` from what
//   `registers_row` left in the registers); true: one f32 a row, `row_value(row)`.
// A family calls only these, so an op with another load (a mask or a bias read beside x),
// another statistic (an argmax) or another store is a new policy, not a new family.

// The forward ops (softmax, log-softmax, either with f32 output) on the (max, sum) statistics.
template <typename Op>
struct ForwardRows {
  static constexpr int kInputs = 1;
  static constexpr bool kWritesRow = false;
  // Register-held slots past the row end hold -inf: no max, and exp(-inf) = 0 to the sum.
  static constexpr bool kPadMissing = true;
  static constexpr float kPad = kNegInf;
  using First = float;  // the row max so far
  using State = MaxSum;
  using Row = typename Op::Row;
  Op op;
  __device__ __forceinline__ explicit ForwardRows(const SoftmaxParams& p) : op(p) {}

  __device__ __forceinline__ First first_identity() const { return kNegInf; }
  template <int N>
  __device__ __forceinline__ First first_fold(First m, const float (&a)[N], const float (&)[N], bool) const {
#pragma unroll
    for (int j = 0; j < N; ++j) m = fmaxf(m, a[j]);
    return m;
  }
  // A row in Width lanes' registers: the max, then each slot's exp (kept in place, or
  // t = shifted(x) for ops that start from it) and their sum.
  template <int Width, int N>
  __device__ __forceinline__ Row registers_row(First m, float (&a)[N], const float (&)[N]) const {
    const float shift = row_shift(warp_max<Width>(m));
    float d = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float t = op.shifted(a[j], shift);
      const float e = op.exp_of_shifted(t);  // exp(scale * (x - shift))
      d += e;
      a[j] = Op::kFromExp ? e : t;
    }
    return op.row(shift, warp_sum<Width>(d));
  }
  template <int N>
  __device__ __forceinline__ void out_kept(float (&a)[N], const float (&)[N], const Row& r) const {
#pragma unroll
    for (int j = 0; j < N; ++j) a[j] = Op::kFromExp ? op.from_exp(a[j], r) : op.from_shifted(a[j], r);
  }
  // A row on chip: the max (its block reduction's barriers also publish the loaded row), then
  // the sum of exp from shared memory (recomputing exp later costs less than storing it).
  template <int Block, typename Revisit>
  __device__ __forceinline__ Row on_chip_row(First m, Revisit&& revisit) const {
    const float shift = row_shift(block_max<Block>(m));
    float d = 0.0f;
    revisit([&](auto& a, auto&) {
      constexpr int n = sizeof(a) / sizeof(float);
#pragma unroll
      for (int j = 0; j < n; ++j) d += exp_shifted(a[j], shift, op.k);
    });
    return op.row(shift, block_sum<Block>(d));
  }
  __device__ __forceinline__ float out(float x, float, const Row& r) const { return op.from_x(x, r); }

  __device__ __forceinline__ State identity() const { return maxsum_identity(); }
  template <int N>
  __device__ __forceinline__ State add(State s, const float (&a)[N], const float (&)[N]) const {
    return maxsum_add<N>(s, a, op.k);
  }
  template <int Block>
  __device__ __forceinline__ State reduce(State s) const {
    return block_maxsum<Block>(s, op.k);
  }
  __device__ __forceinline__ State merge(State a, State b) const { return maxsum_merge(a, b, op.k); }
  __device__ __forceinline__ void save(float* slot, State s) const {
    const float state[2] = {s.m, s.d};
    store_pack<float, 2>(slot, state);
  }
  __device__ __forceinline__ State restore(const float* slot) const { return MaxSum{load_one(slot), load_one(slot + 1)}; }
  __device__ __forceinline__ Row row(State s) const { return op.row(row_shift(s.m), s.d); }
};

// logsumexp: the forward statistics, stored as one f32 a row:
// lse = scale * m + log(sum(exp(scale * (x - m)))). An all -inf row gives -inf; a NaN or +inf in
// the row gives NaN. Its statistics are every forward op's, so the split-row stats pass of all of
// them is this policy's (one entry point a dtype).
struct LogSumExpRows : ForwardRows<SoftmaxOp> {
  static constexpr bool kWritesRow = true;
  using Row = MaxSum;
  float scale;
  __device__ __forceinline__ explicit LogSumExpRows(const SoftmaxParams& p) : ForwardRows<SoftmaxOp>(p), scale(p.scale) {}
  template <int Width, int N>
  __device__ __forceinline__ Row registers_row(First m, float (&a)[N], const float (&)[N]) const {
    m = warp_max<Width>(m);
    const float shift = row_shift(m);
    float d = 0.0f;
#pragma unroll
    for (int j = 0; j < N; ++j) d += exp_shifted(a[j], shift, op.k);
    return MaxSum{m, warp_sum<Width>(d)};
  }
  __device__ __forceinline__ Row row(State s) const { return s; }
  // sum == 0 only for an all -inf row (m = -inf): log(0) = -inf is the answer, shift * scale
  // would be 0 there. NaN states stay NaN.
  __device__ __forceinline__ float row_value(const Row& s) const {
    return s.d == 0.0f ? kNegInf : row_shift(s.m) * scale + fast_log2(s.d) * kLn2;
  }
};

// The backward ops on their statistic g, a plain sum of term(y, dy); a = y, b = dy.
template <typename Op>
struct BackwardRows {
  static constexpr int kInputs = 2;
  static constexpr bool kWritesRow = false;
  // Register-held slots past the row end keep finite stale values: their outputs are computed
  // (unpredicated) and never stored, and only loaded slots add to g (no padding stores).
  static constexpr bool kPadMissing = false;
  static constexpr float kPad = 0.0f;
  using First = float;
  using State = float;
  using Row = float;
  Op op;
  __device__ __forceinline__ explicit BackwardRows(const SoftmaxParams& p) : op(p) {}

  __device__ __forceinline__ First first_identity() const { return 0.0f; }
  template <int N>
  __device__ __forceinline__ First first_fold(First g, const float (&a)[N], const float (&b)[N], bool loaded) const {
    if (loaded) {
#pragma unroll
      for (int j = 0; j < N; ++j) g += op.term(a[j], b[j]);
    }
    return g;
  }
  template <int Width, int N>
  __device__ __forceinline__ Row registers_row(First g, float (&)[N], const float (&)[N]) const {
    return warp_sum<Width>(g);
  }
  template <int N>
  __device__ __forceinline__ void out_kept(float (&a)[N], const float (&b)[N], const Row& g) const {
#pragma unroll
    for (int j = 0; j < N; ++j) a[j] = op.out(a[j], b[j], g);
  }
  // (block_sum's barriers publish the loaded rows.)
  template <int Block, typename Revisit>
  __device__ __forceinline__ Row on_chip_row(First g, Revisit&&) const {
    return block_sum<Block>(g);
  }
  __device__ __forceinline__ float out(float y, float dy, const Row& g) const { return op.out(y, dy, g); }

  __device__ __forceinline__ State identity() const { return 0.0f; }
  template <int N>
  __device__ __forceinline__ State add(State g, const float (&a)[N], const float (&b)[N]) const {
#pragma unroll
    for (int j = 0; j < N; ++j) g += op.term(a[j], b[j]);
    return g;
  }
  template <int Block>
  __device__ __forceinline__ State reduce(State g) const {
    return block_sum<Block>(g);
  }
  __device__ __forceinline__ State merge(State a, State b) const { return a + b; }
  // (g, 0): the workspace holds two floats a chunk.
  __device__ __forceinline__ void save(float* slot, State g) const {
    const float state[2] = {g, 0.0f};
    store_pack<float, 2>(slot, state);
  }
  __device__ __forceinline__ State restore(const float* slot) const { return load_one(slot); }
  __device__ __forceinline__ Row row(State g) const { return g; }
};

}  // namespace cs
