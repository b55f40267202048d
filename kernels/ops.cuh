// The ops of the softmax family as policies on the kernel families (docs/architecture.md: an op is a small
// policy; a family owns loading, row statistics and the store loop). Every family that runs an
// op includes this header: the last-dimension families (softmax.cu, softmax_backward.cu) and the
// strided-dimension family (softmax_strided.cu).
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

}  // namespace cs
