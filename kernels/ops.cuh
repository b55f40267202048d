// The ops of the softmax family as policies on the kernel families (DESIGN.md: an op is a small
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
// (FADD, FFMA) and one MUFU.LG2 a row. An all -inf row (sum 0) takes log_sum = 0 and gives -inf
// everywhere; a NaN sum (a NaN or +inf in the row) gives a NaN row.
struct LogSoftmaxOp {
  static constexpr bool kFromExp = false;
  float k;  // exp2 factor: log2(e) * scale
  float scale;
  __device__ __forceinline__ explicit LogSoftmaxOp(const SoftmaxParams& p)
      : k(exp2_factor(p.scale)), scale(p.scale) {}
  struct Row {
    float shift;
    float log_sum;
  };
  __device__ __forceinline__ Row row(float shift, float sum) const {
    return Row{shift, sum == 0.0f ? 0.0f : fast_log2(sum) * kLn2};
  }
  __device__ __forceinline__ float from_exp(float, const Row&) const { return 0.0f; }  // not used
  // From t = x - shift, already formed for the sum (one FFMA).
  __device__ __forceinline__ float from_shifted(float t, const Row& r) const { return fmaf(t, scale, -r.log_sum); }
  __device__ __forceinline__ float from_x(float x, const Row& r) const { return from_shifted(x - r.shift, r); }
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
