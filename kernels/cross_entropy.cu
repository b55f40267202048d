// Fused softmax cross-entropy over the last dimension (src/ops/cross_entropy.rs): the loss, each
// row's logsumexp and the gradient with respect to the logits, from the logits and the target
// class of each row, without materialising probabilities. Semantics are PyTorch's
// F.cross_entropy (class weights, label smoothing e, ignore_index) plus PaLM's z-loss
// (z * lse^2) and Gemma 2's logit softcap (x -> c * tanh(x / c) before everything else):
//
//   ce_i = (1 - e) * w_t * (lse - x_t) + (e / V) * sum_j w_j * (lse - x_j),   z_i = z * lse^2
//   dx_j = [a_ce * (((1 - e) w_t + e W / V) p_j - (1 - e) w_t [j = t] - (e / V) w_j)
//           + a_z * 2 z lse p_j] * softcap'(x_j)
//
// with W / V = sum_j w_j / V, p_j = exp(x_j - lse), and a_ce, a_z the upstream gradient divided
// by the Mean denominators (D_w = the weight of the rows that count, D_n their number) or not.
// A term whose coefficient is exactly 0 ((1 - e) or w_t for the target's, e for the smoothing
// terms', z) is left out of the loss and the gradient alike: no 0 * inf or 0 * NaN of a logit,
// of a weight no row targets, or of a W / V that overflowed (with e = 0, W / V is never read).
//
// Stages (one plan, the same parameters, in this order; src/ops/cross_entropy.rs picks them):
// - prepare (one block): W / V, D_w, D_n into the workspace's globals, and the first row whose
//   target is invalid into `status` (the host's target check launches this stage alone).
// - stats (a block per (chunk, row)): one read of the chunk: the online (max, sum) state and the
//   chunk's share of sum_j w_j x_j / V, into the workspace.
// - finish (a thread per row): merges the row's chunk states, reads the target logit, writes
//   lse, the row's loss terms (and, for Reduction::None, the loss), and the row state the
//   gradient stage starts from.
// - reduce (one block): the Sum/Mean loss, in a fixed order (deterministic).
// - grad (a block per (chunk, row)): reads the chunk again and writes the gradient (over the
//   logits for the in-place op: each element is read and written by the same thread).
// Loss only: prepare, stats, finish, reduce: the logits are read once. forward_backward adds
// grad: read, read again, write (1.5x the bytes of one read and one write).
//
// Invalid targets (outside [0, V), not ignore_index) are never used as an address: their row's
// loss and gradient are NaN. Ignored rows: loss 0, gradient 0 (written without reading).
#include "common.cuh"

namespace cs {

// The parameter block of the cross-entropy entry points: SoftmaxParams (x the logits, y the
// gradient, workspace the stages' scratch, rows, cols, chunk_cols), then the fields below.
// Mirrored by src/runtime/launch.rs (CrossEntropyParams), which passes it to these entry points
// only.
struct CrossEntropyParams : SoftmaxParams {
  const void* targets;     // [rows] class indices, i32 or i64 (ce_flags)
  const float* weight;     // [cols] class weights, or null
  float* loss;             // [rows] (Reduction::None) or [1]
  float* lse;              // [rows]: written by the forward, read by the backward
  float* z_loss;           // the loss's shape
  const float* dloss;      // upstream gradient of the loss's shape; null: 1
  long long* status;       // prepare: the first row with an invalid target (-1: none), or null
  long long ignore_index;  // with kCeHasIgnore
  float smoothing;         // label smoothing e in [0, 1]
  float z;                 // z-loss coefficient >= 0
  float softcap;           // c > 0, or 0 for none
  int ce_flags;            // kCe* bits
};
static_assert(sizeof(SoftmaxParams) == 72 && sizeof(CrossEntropyParams) == 152,
              "mirrored by src/runtime/launch.rs (a test there checks the Rust side)");

// Flag bits of CrossEntropyParams::ce_flags (mirrored in src/ops/cross_entropy.rs).
constexpr int kCeTargetsI64 = 1;       // targets are i64 (else i32)
constexpr int kCeHasIgnore = 2;        // rows whose target == ignore_index are ignored
constexpr int kCeReductionShift = 2;   // bits 2-3: 0 None, 1 Sum, 2 Mean
constexpr int kCeGradFromLse = 16;     // grad: start from the caller's lse (backward), not the
                                       // row state finish left in the workspace
constexpr int kCeNone = 0, kCeMean = 2;  // (1: Sum)

// Workspace layout (f32): globals, then 4 a row, then 4 a (row, chunk).
constexpr long long kCeGlobals = 4;  // W / V, D_w, D_n, unused
__device__ __forceinline__ float* ce_row_state(const CrossEntropyParams& p, long long row) {
  return p.workspace + kCeGlobals + 4 * row;  // shift, log2(sum), ce_i, z_i
}
__device__ __forceinline__ float* ce_chunk_state(const CrossEntropyParams& p, long long row, long long chunk,
                                                 long long chunks) {
  return p.workspace + kCeGlobals + 4 * p.rows + 4 * (row * chunks + chunk);  // CeState
}

__device__ __forceinline__ int ce_reduction(const CrossEntropyParams& p) { return (p.ce_flags >> kCeReductionShift) & 3; }

__device__ __forceinline__ long long ce_target(const CrossEntropyParams& p, long long row) {
  if (p.ce_flags & kCeTargetsI64) return load_element(static_cast<const long long*>(p.targets) + row);
  return load_element(static_cast<const int*>(p.targets) + row);
}

// What a row's target makes of it.
enum CeRowKind { kCeIgnored, kCeValid, kCeInvalid };
__device__ __forceinline__ CeRowKind ce_row_kind(const CrossEntropyParams& p, long long t) {
  if ((p.ce_flags & kCeHasIgnore) && t == p.ignore_index) return kCeIgnored;  // ignore wins
  return t >= 0 && t < p.cols ? kCeValid : kCeInvalid;
}

__device__ __forceinline__ float ce_weight(const CrossEntropyParams& p, long long t) {
  return p.weight != nullptr ? load_one(p.weight + t) : 1.0f;
}

// tanh(x / c) for the softcap: the accurate tanhf (a few ulp; tanh.approx's 2^-11 would be far
// above f32's tolerance). The capped logit is c * tanh and its derivative 1 - tanh^2.
__device__ __forceinline__ float ce_tanh(float x, float inv_c) {
#ifdef CS_EMULATOR
  return std::tanh(x * inv_c);
#else
  return tanhf(x * inv_c);
#endif
}

// Calls f(v, col) on the elements [begin, end) of a row, read as 16-byte packs where they line
// up (v a float[Vec]) and one at a time in the unaligned head and the tail (v a float[1]);
// `col` is the column of v[0]. With Write, f's changes to v are stored to `out` at the same
// columns (which may be `row` itself: the same thread reads and writes each element); without
// Read, v starts at 0 and nothing is read.
template <typename T, int Block, bool Read, bool Write, typename F>
__device__ __forceinline__ void ce_for_each(const T* row, T* out, long long begin, long long end, F&& f) {
  // A step is 8 elements: one 16-byte pack of f16/bf16, two of f32 (so that f32's per-step
  // work, the state's rescale, is shared by 8 elements as well: 0.316 -> 0.29 warp
  // instructions an element in the f32 stats loop).
  constexpr int V = 8;
  constexpr int kLoad = Vec16<T>::n;
  // Packs need the input and the output to line up alike (a new gradient tensor against an
  // odd view of the logits does not): else every element goes one at a time.
  const bool apart = Write && ((reinterpret_cast<uintptr_t>(row) ^ reinterpret_cast<uintptr_t>(out)) & 15u) != 0;
  const long long head = apart ? end - begin : head_elements(row + begin, end - begin);
  const long long body = begin + head;
  const long long packs = (end - body) / V;
  const long long tail = body + packs * V;
  const int t = static_cast<int>(threadIdx.x);
  auto scalar = [&](long long col) {
    float v[1] = {0.0f};
    if constexpr (Read) load_pack<T, 1>(row + col, v);
    f(v, col);
    if constexpr (Write) store_pack<T, 1>(out + col, v);
  };
  for (long long col = begin + t; col < body; col += Block) scalar(col);
  // Loop-carried offsets (an add an iteration), not a 64-bit index times V.
  long long col = body + static_cast<long long>(t) * V;
#pragma unroll 2
  for (long long i = t; i < packs; i += Block, col += static_cast<long long>(Block) * V) {
    float v[V];
    if constexpr (Read) {
#pragma unroll
      for (int h = 0; h < V / kLoad; ++h) load_pack<T, kLoad>(row + col + h * kLoad, sub_array<kLoad>(v + h * kLoad));
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] = 0.0f;
    }
    f(v, col);
    if constexpr (Write) {
#pragma unroll
      for (int h = 0; h < V / kLoad; ++h) store_pack<T, kLoad>(out + col + h * kLoad, sub_array<kLoad>(v + h * kLoad));
    }
  }
  if (t < end - tail) scalar(tail + t);
}

// The columns of chunk `chunk` of a row.
__device__ __forceinline__ void ce_chunk(const CrossEntropyParams& p, long long chunk, long long& begin,
                                         long long& end) {
  begin = chunk * p.chunk_cols;
  end = begin + p.chunk_cols < p.cols ? begin + p.chunk_cols : p.cols;
}

// ---- prepare: one block.
struct MinI64Op {
  __device__ __forceinline__ long long identity() const { return 0x7fffffffffffffffLL; }
  __device__ __forceinline__ long long warp(long long v) const {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const long long other = __shfl_xor_sync(0xffffffffu, v, o);
      v = other < v ? other : v;
    }
    return v;
  }
};

// W / V is summed as sum_j (w_j / V), like the stats fold's sw: finite weights whose sum
// overflows f32 (two of 3e38) keep a finite W / V once V >= 2. Only smoothing reads it.
template <int Block>
__device__ __forceinline__ void ce_prepare(const CrossEntropyParams& p) {
  const int tid = static_cast<int>(threadIdx.x);
  const float inv_v = 1.0f / static_cast<float>(p.cols);
  float w_over_v = 0.0f;
  if (p.weight != nullptr && p.smoothing != 0.0f) {
    for (long long j = tid; j < p.cols; j += Block) w_over_v += load_one(p.weight + j) * inv_v;
  }
  float d_w = 0.0f, d_n = 0.0f;
  long long bad = MinI64Op{}.identity();
  for (long long row = tid; row < p.rows; row += Block) {
    const long long t = ce_target(p, row);
    switch (ce_row_kind(p, t)) {
      case kCeValid:
        d_n += 1.0f;
        d_w += ce_weight(p, t);
        break;
      case kCeInvalid:
        bad = bad < row ? bad : row;
        break;
      default:
        break;
    }
  }
  w_over_v = block_sum<Block>(w_over_v);
  d_w = block_sum<Block>(d_w);
  d_n = block_sum<Block>(d_n);
  bad = block_reduce<Block>(bad, MinI64Op{});
  if (tid == 0) {
    store_one(p.workspace + 0, p.weight != nullptr ? w_over_v : 1.0f);
    store_one(p.workspace + 1, d_w);
    store_one(p.workspace + 2, d_n);
    store_one(p.workspace + 3, 0.0f);
    if (p.status != nullptr) store_element(p.status, bad == MinI64Op{}.identity() ? -1LL : bad);
  }
}

// ---- The per-element work of each pass, shared by the chunked and the on-chip kernels.
using CeYes = TrueType;
using CeNo = FalseType;

// A row's (or chunk's) online state: the (max, sum) of the softmax and, for the smoothing term,
// sx = sum_j w_j (x_j - shift) / V and sw = sum_j w_j / V over the elements folded so far,
// with shift = row_shift(m) the state's current shift. Relative to the shift, sx carries no
// common offset of the logits: the smoothing term sum_j w_j (lse - x_j) / V is then
// (W / V) log(sum) - sx with no cancellation (a plain sum of w_j x_j against W / V * lse lost
// everything to rounding at large offsets, and overflowed near the f32 maximum). When the max
// moves, sx moves by the shift's change times sw. A class weighted 0 adds nothing, whatever its
// logit (no 0 * inf).
struct CeState {
  float m, d, sx, sw;
};

__device__ __forceinline__ CeState ce_state_identity() { return CeState{kNegInf, 0.0f, 0.0f, 0.0f}; }

__device__ __forceinline__ CeState ce_state_merge(const CeState& a, const CeState& b) {
  const MaxSum s = maxsum_merge(MaxSum{a.m, a.d}, MaxSum{b.m, b.d}, kLog2e);
  const float shift = row_shift(s.m);
  // An empty side (sw == 0) moves by nothing, whatever the shift.
  const float sa = a.sw == 0.0f ? a.sx : fmaf(-(shift - row_shift(a.m)), a.sw, a.sx);
  const float sb = b.sw == 0.0f ? b.sx : fmaf(-(shift - row_shift(b.m)), b.sw, b.sx);
  return CeState{s.m, s.d, sa + sb, a.sw + b.sw};
}

struct CeStateOp {
  __device__ __forceinline__ CeState identity() const { return ce_state_identity(); }
  __device__ __forceinline__ CeState warp(CeState s) const {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const CeState other{__shfl_xor_sync(0xffffffffu, s.m, o), __shfl_xor_sync(0xffffffffu, s.d, o),
                          __shfl_xor_sync(0xffffffffu, s.sx, o), __shfl_xor_sync(0xffffffffu, s.sw, o)};
      s = ce_state_merge(s, other);
    }
    return s;
  }
};

struct CeFold {
  CeState s;
  // Folds the values v (logits of columns col..) into the state: softcapped first (Cap),
  // weighted by their class weights in the smoothing sums (Weigh).
  template <bool Cap, bool Weigh, int N>
  __device__ __forceinline__ void add(const CrossEntropyParams& p, float (&v)[N], long long col, float inv_c,
                                      float inv_v) {
    if constexpr (Cap) {
#pragma unroll
      for (int i = 0; i < N; ++i) v[i] = p.softcap * ce_tanh(v[i], inv_c);
    }
    const float old_shift = row_shift(s.m);
    const MaxSum ms = maxsum_add<N>(MaxSum{s.m, s.d}, v, kLog2e);
    const float shift = row_shift(ms.m);
    // (With nothing folded yet, sw = sx = 0 and the finite shifts move nothing.)
    float sx = fmaf(-(shift - old_shift), s.sw, s.sx);
    float sw = s.sw;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if constexpr (Weigh) {
        const float w = load_one(p.weight + col + i) * inv_v;
        sx += w == 0.0f ? 0.0f : w * (v[i] - shift);
        sw += w;
      } else {
        sx = fmaf(v[i] - shift, inv_v, sx);
      }
    }
    if constexpr (!Weigh) sw = fmaf(static_cast<float>(N), inv_v, sw);
    s = CeState{ms.m, ms.d, sx, sw};
  }
};

// Calls body(Cap, Weigh) with the compile-time flags of this launch's options: each option set
// gets a loop of its own, with no per-element test of the options.
template <typename Body>
__device__ __forceinline__ void ce_with_options(const CrossEntropyParams& p, Body&& body) {
  const bool weighted = p.smoothing != 0.0f && p.weight != nullptr;
  if (p.softcap > 0.0f) {
    if (weighted) {
      body(CeYes{}, CeYes{});
    } else {
      body(CeYes{}, CeNo{});
    }
  } else if (weighted) {
    body(CeNo{}, CeYes{});
  } else {
    body(CeNo{}, CeNo{});
  }
}

// Mean's 1 / d for a denominator d (D_w or D_n) when d_n rows count: every row ignored
// (d_n == 0) gives 0 (a loss of 0 and a zero gradient, not NaN); rows that count but weigh 0
// in total give NaN, as PyTorch's 0 / 0.
__device__ __forceinline__ float ce_mean_factor(float d, float d_n) {
  if (d != 0.0f) return 1.0f / d;
  return d_n == 0.0f ? 0.0f : kNaN;
}

// A row's gradient constants: dx~_j = a p_j - s w_j - b [j = t], p_j = exp2((x~_j - shift) *
// log2(e) - log2_sum). Computed by one thread and shared through shared memory: the target,
// the row state and the upstream gradient are read once a block, not once a thread.
struct CeGradRow {
  long long t;  // the target (any value: compared, never an address here)
  float shift;
  float neg_log2_sum;
  float a, s, b;
  int ignored;  // write zeros
};

// The coefficient (1 - e) w_t of a valid row's target term, 0 where either factor is 0 (the
// term is left out: a NaN or inf weight times 1 - e = 0 is no NaN).
__device__ __forceinline__ float ce_target_coefficient(const CrossEntropyParams& p, long long t) {
  const float w_t = ce_weight(p, t);
  return p.smoothing != 1.0f && w_t != 0.0f ? (1.0f - p.smoothing) * w_t : 0.0f;
}

// The smoothing terms' coefficients summed, sum_j (e / V) w_j = e * W / V; 0 without smoothing,
// and then W / V (NaN or inf with such a weight on a class no row targets) is not read.
__device__ __forceinline__ float ce_smoothing_coefficients(const CrossEntropyParams& p) {
  return p.smoothing != 0.0f ? p.smoothing * load_one(p.workspace) : 0.0f;
}

// The constants of a row whose target kind, shift, log2(sum) and lse are known. The
// coefficient of p_j, a, sums the coefficients of the terms the loss has: those left out of it
// add nothing here either.
__device__ __forceinline__ CeGradRow ce_grad_constants(const CrossEntropyParams& p, long long row, long long t,
                                                       CeRowKind kind, float shift, float log2_sum, float lse) {
  const float inv_v = 1.0f / static_cast<float>(p.cols);
  const float e = p.smoothing;
  const int reduction = ce_reduction(p);
  CeGradRow r{};
  r.t = t;
  r.ignored = kind == kCeIgnored;
  if (r.ignored) return r;
  r.shift = shift;
  r.neg_log2_sum = -log2_sum;
  const float g = p.dloss == nullptr ? 1.0f : load_one(p.dloss + (reduction == kCeNone ? row : 0));
  float a_ce = g, a_z = g;
  if (reduction == kCeMean) {
    const float d_w = load_one(p.workspace + 1), d_n = load_one(p.workspace + 2);
    a_ce = ce_mean_factor(d_w, d_n) * g;
    a_z = ce_mean_factor(d_n, d_n) * g;
  }
  const float c_t = kind == kCeValid ? ce_target_coefficient(p, t) : 0.0f;
  r.a = a_ce * (c_t + ce_smoothing_coefficients(p));
  if (p.z != 0.0f) r.a += a_z * 2.0f * p.z * lse;
  r.s = e != 0.0f ? a_ce * e * inv_v : 0.0f;
  r.b = a_ce * c_t;
  // An invalid target, or a row of only -inf logits (no distribution): a NaN row.
  if (kind == kCeInvalid || !(lse > kNegInf)) r.a = kNaN;
  return r;
}

// The gradient of the logits v (columns col..) in place. t_off: the target's column less col
// (a value outside [0, N) when the target is elsewhere or invalid); 32-bit where the caller
// knows the row is short (on chip), so that the per-pack test is one 32-bit compare.
template <bool Cap, bool Weigh, int N, typename Off>
__device__ __forceinline__ void ce_grad_values(const CrossEntropyParams& p, const CeGradRow& r, float (&v)[N],
                                               long long col, Off t_off, float inv_c) {
  float v_in[N];  // the raw logits (the softcap's derivative needs them)
#pragma unroll
  for (int i = 0; i < N; ++i) {
    v_in[i] = v[i];
    float xc = v[i];
    if constexpr (Cap) xc = p.softcap * ce_tanh(v[i], inv_c);
    const float prob = fast_exp2(fmaf(xc - r.shift, kLog2e, r.neg_log2_sum));
    const float s_j = Weigh ? r.s * load_one(p.weight + col + i) : r.s;
    v[i] = fmaf(r.a, prob, -s_j);
  }
  // The target's column: one compare a pack (it is in at most one pack of the row).
  if (static_cast<typename MakeUnsigned<Off>::type>(t_off) < static_cast<unsigned>(N)) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (t_off == static_cast<Off>(i)) v[i] -= r.b;
    }
  }
  if constexpr (Cap) {
    // d/dx c tanh(x / c) = sech^2(u) = 4q / (1 + q)^2 with q = exp(-2|u|), u = x / c: accurate
    // where the cap saturates (1 - tanh^2 cancels there: 7e-4 relative error at |u| = 5, and
    // exactly 0 from |u| = 8.3 on).
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float q = fast_exp2(fabsf(v_in[i] * inv_c) * (-2.0f * kLog2e));
      const float r1 = 1.0f + q;
      v[i] *= 4.0f * q * fast_reciprocal(r1 * r1);
    }
  }
}

// Merged state -> the row's outputs: lse, its loss terms (into the row state for reduce, and the
// loss itself for Reduction::None), and the shift and log2(sum) the gradient starts from.
// load_xt(t) gives the target's logit (raw: capped here). Returns the gradient constants.
template <typename LoadXt>
__device__ __forceinline__ CeGradRow ce_finish_row(const CrossEntropyParams& p, long long row, const CeState& s,
                                                   LoadXt&& load_xt) {
  const float e = p.smoothing;
  const float shift = row_shift(s.m);
  const float log2_sum = fast_log2(s.d);  // -inf for an all -inf row
  const float log_sum = log2_sum * kLn2;
  const float lse = s.d == 0.0f ? kNegInf : shift + log_sum;
  store_one(p.lse + row, lse);
  const long long t = ce_target(p, row);
  const CeRowKind kind = ce_row_kind(p, t);
  float ce = 0.0f, zl = 0.0f;
  if (kind == kCeValid) {
    if (s.d == 0.0f) {
      // Every logit -inf: no distribution. Loss +inf (the gradient is NaN).
      ce = kPosInf;
      zl = p.z > 0.0f ? ce : 0.0f;
    } else {
      float xt = load_xt(t);
      if (p.softcap > 0.0f) xt = p.softcap * ce_tanh(xt, 1.0f / p.softcap);
      // lse - x_t as (shift - x_t) + log(sum): exact where lse itself would round away
      // log(sum) (|shift| large). A term whose coefficient is 0 is left out, so that an
      // infinite logit it multiplies gives no 0 * inf = NaN.
      const float c_t = ce_target_coefficient(p, t);
      if (c_t != 0.0f) ce = c_t * ((shift - xt) + log_sum);
      // sum_j w_j (lse - x_j) / V = (W / V) log(sum) - sum_j w_j (x_j - shift) / V.
      if (e != 0.0f) ce += e * (load_one(p.workspace) * log_sum - s.sx);
      if (p.z != 0.0f) zl = p.z * lse * lse;
    }
  } else if (kind == kCeInvalid) {
    ce = kNaN;
    zl = kNaN;
  }
  float* state = ce_row_state(p, row);
  store_one(state, shift);
  store_one(state + 1, log2_sum);
  store_one(state + 2, ce);
  store_one(state + 3, zl);
  if (ce_reduction(p) == kCeNone) {
    store_one(p.loss + row, ce + zl);
    store_one(p.z_loss + row, zl);
  }
  return ce_grad_constants(p, row, t, kind, shift, log2_sum, lse);
}

// ---- stats: a block per (chunk, row).
template <typename T, int Block>
__device__ __forceinline__ void ce_stats(const CrossEntropyParams& p) {
  const T* x = static_cast<const T*>(p.x);
  const long long chunks = gridDim.x;
  long long begin, end;
  ce_chunk(p, blockIdx.x, begin, end);
  const float inv_v = 1.0f / static_cast<float>(p.cols);
  const float inv_c = p.softcap > 0.0f ? 1.0f / p.softcap : 0.0f;
  for (long long row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const T* xr = x + row * p.cols;
    CeFold f{ce_state_identity()};
    ce_with_options(p, [&](auto cap, auto weigh) {
      ce_for_each<T, Block, true, false>(xr, nullptr, begin, end, [&](auto& v, long long c) {
        f.add<decltype(cap)::value, decltype(weigh)::value>(p, v, c, inv_c, inv_v);
      });
    });
    const CeState s = block_reduce<Block>(f.s, CeStateOp{});
    if (threadIdx.x == 0) {
      float* state = ce_chunk_state(p, row, blockIdx.x, chunks);
      store_one(state, s.m);
      store_one(state + 1, s.d);
      store_one(state + 2, s.sx);
      store_one(state + 3, s.sw);
    }
  }
}

// ---- finish: a thread per row.
template <typename T>
__device__ __forceinline__ void ce_finish(const CrossEntropyParams& p) {
  const T* x = static_cast<const T*>(p.x);
  const long long chunks = (p.cols + p.chunk_cols - 1) / p.chunk_cols;
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long row = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows; row += step) {
    CeState s = ce_state_identity();
    for (long long c = 0; c < chunks; ++c) {
      const float* state = ce_chunk_state(p, row, c, chunks);
      s = ce_state_merge(s, CeState{load_one(state), load_one(state + 1), load_one(state + 2), load_one(state + 3)});
    }
    ce_finish_row(p, row, s, [&](long long t) { return load_one(x + row * p.cols + t); });
  }
}

// ---- reduce: one block, Sum and Mean. Mean scales each row's terms by 1 / D before adding
// them (not the sum after), so that rows of near-f32-max losses whose mean is finite do not
// overflow the sum. A zero denominator (every row ignored) scales by 0: a loss of 0, unless a
// row is NaN (an invalid target), which stays NaN.
template <int Block>
__device__ __forceinline__ void ce_reduce(const CrossEntropyParams& p) {
  float ce_scale = 1.0f, z_scale = 1.0f;
  if (ce_reduction(p) == kCeMean && threadIdx.x < p.rows) {  // (threads with rows to add)
    const float d_w = load_one(p.workspace + 1), d_n = load_one(p.workspace + 2);
    ce_scale = ce_mean_factor(d_w, d_n);
    z_scale = ce_mean_factor(d_n, d_n);
  }
  float ce = 0.0f, zl = 0.0f;
  for (long long row = threadIdx.x; row < p.rows; row += Block) {
    const float* state = ce_row_state(p, row);
    ce += load_one(state + 2) * ce_scale;
    zl += load_one(state + 3) * z_scale;
  }
  ce = block_sum<Block>(ce);
  zl = block_sum<Block>(zl);
  if (threadIdx.x == 0) {
    store_one(p.loss, ce + zl);
    store_one(p.z_loss, zl);
  }
}

// ---- grad: a block per (chunk, row).
template <typename T, int Block>
__device__ __forceinline__ void ce_grad(const CrossEntropyParams& p) {
  const T* x = static_cast<const T*>(p.x);
  T* dx = static_cast<T*>(p.y);
  long long begin, end;
  ce_chunk(p, blockIdx.x, begin, end);
  const float inv_c = p.softcap > 0.0f ? 1.0f / p.softcap : 0.0f;
  CS_SHARED_ARRAY(CeGradRow, shared_row, 1);
  for (long long row = blockIdx.y; row < p.rows; row += gridDim.y) {
    const T* xr = x + row * p.cols;
    T* dxr = dx + row * p.cols;
    __syncthreads();  // the previous row's readers are done with shared_row
    if (threadIdx.x == 0) {
      const long long t = ce_target(p, row);
      const CeRowKind kind = ce_row_kind(p, t);
      float shift = 0.0f, log2_sum = 0.0f, lse = 0.0f;
      if (kind != kCeIgnored) {
        if (p.ce_flags & kCeGradFromLse) {
          lse = load_one(p.lse + row);  // backward: exp(x - lse), the caller's lse
          shift = lse;
        } else {
          const float* state = ce_row_state(p, row);
          shift = load_one(state);
          log2_sum = load_one(state + 1);
          lse = log2_sum == kNegInf ? kNegInf : shift + log2_sum * kLn2;
        }
      }
      shared_row[0] = ce_grad_constants(p, row, t, kind, shift, log2_sum, lse);
    }
    __syncthreads();
    const CeGradRow r = shared_row[0];
    if (r.ignored) {
      ce_for_each<T, Block, false, true>(xr, dxr, begin, end, [](auto&, long long) {});
      continue;
    }
    ce_with_options(p, [&](auto cap, auto weigh) {
      ce_for_each<T, Block, true, true>(xr, dxr, begin, end, [&](auto& v, long long c) {
        // (Unsigned: an invalid target such as i64::MIN less c must not overflow.)
        const unsigned long long t_off = static_cast<unsigned long long>(r.t) - static_cast<unsigned long long>(c);
        ce_grad_values<decltype(cap)::value, decltype(weigh)::value>(p, r, v, c, t_off, inv_c);
      });
    });
  }
}

// ---- on chip: a block per row, the row held in shared memory in its storage type (rows that
// fit, enough of them to fill the GPU). One read of the logits and one write of the gradient:
// pass 1 loads the row into shared memory and folds its state; thread 0 finishes the row (the
// target logit from shared memory); pass 2 writes the gradient from shared memory. Column c
// sits at shared element c + lead, lead putting the row's 16-byte packs on 16-byte boundaries
// (as in the softmax block family).
template <typename T, int Block>
__device__ __forceinline__ void ce_on_chip(const CrossEntropyParams& p) {
  constexpr int V = Vec16<T>::n;
  const T* x = static_cast<const T*>(p.x);
  T* dx = static_cast<T*>(p.y);
  const SmemPtr<T> buf = dynamic_smem<T>();  // p.cols + V elements
  CS_SHARED_ARRAY(CeGradRow, shared_row, 1);
  const float inv_v = 1.0f / static_cast<float>(p.cols);
  const float inv_c = p.softcap > 0.0f ? 1.0f / p.softcap : 0.0f;
  for (long long row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const T* xr = x + row * p.cols;
    T* dxr = dx + row * p.cols;
    const long long head = head_elements(xr, p.cols);
    const long long lead = (V - head) % V;
    const long long packs = (p.cols - head) / V;
    const long long tail = head + packs * V;
    const int npacks = static_cast<int>(packs);
    // Pass 1: the row into shared memory; its state.
    CeFold f{ce_state_identity()};
    ce_with_options(p, [&](auto cap, auto weigh) {
      constexpr bool kCap = decltype(cap)::value, kWeigh = decltype(weigh)::value;
      auto scalar = [&](long long c) {
        CS_CHECK_GLOBAL(xr + c, sizeof(T), false);
        const T raw = xr[c];
        buf[c + lead] = raw;
        float v[1] = {to_f32(raw)};
        f.add<kCap, kWeigh>(p, v, c, inv_c, inv_v);
      };
      for (long long c = threadIdx.x; c < head; c += Block) scalar(c);
      // 32-bit pack counters and loop-carried addresses: a row on chip is far below 2^31.
      const int first = static_cast<int>(threadIdx.x) * V;
      const T* src = xr + head + first;
      int at = static_cast<int>(head + lead) + first;
#pragma unroll 2
      for (int k = threadIdx.x; k < npacks; k += Block, src += Block * V, at += Block * V) {
        uint32_t w[4];
        float v[V];
        load16(src, w);
        smem_store16(buf, at, w);
        unpack16<T>(w, v);
        f.add<kCap, kWeigh>(p, v, head + static_cast<long long>(k) * V, inv_c, inv_v);
      }
      for (long long c = tail + threadIdx.x; c < p.cols; c += Block) scalar(c);
    });
    // The reduction's barriers also publish every thread's writes to buf.
    const CeState s = block_reduce<Block>(f.s, CeStateOp{});
    if (threadIdx.x == 0) {
      shared_row[0] = ce_finish_row(p, row, s, [&](long long t) { return to_f32(static_cast<T>(buf[t + lead])); });
    }
    __syncthreads();
    const CeGradRow r = shared_row[0];
    // The target's column, and less the first pack's column in 32 bits: any value far outside
    // the row when the target is not a column (an invalid row is NaN anyway).
    const long long t_col = r.t >= 0 && r.t < p.cols ? r.t : -(1LL << 40);
    const int t_first = r.t >= 0 && r.t < p.cols ? static_cast<int>(r.t - head) : -(1 << 30);
    // Pass 2: the gradient from shared memory. Packs when dx's line up with x's (the same
    // offsets: in place, or a new tensor of an aligned view); else element by element.
    const bool line_up = ((reinterpret_cast<uintptr_t>(xr) ^ reinterpret_cast<uintptr_t>(dxr)) & 15u) == 0;
    if (r.ignored) {
      ce_for_each<T, Block, false, true>(xr, dxr, 0, p.cols, [](auto&, long long) {});
    } else if (line_up) {
      ce_with_options(p, [&](auto cap, auto weigh) {
        constexpr bool kCap = decltype(cap)::value, kWeigh = decltype(weigh)::value;
        auto scalar = [&](long long c) {
          float v[1] = {to_f32(static_cast<T>(buf[c + lead]))};
          ce_grad_values<kCap, kWeigh>(p, r, v, c, t_col - c, inv_c);
          store_pack<T, 1>(dxr + c, v);
        };
        for (long long c = threadIdx.x; c < head; c += Block) scalar(c);
        const int first = static_cast<int>(threadIdx.x) * V;
        T* dst = dxr + head + first;
        int at = static_cast<int>(head + lead) + first;
        int t_off = t_first - first;  // the target less this thread's first pack column
#pragma unroll 2
        for (int k = threadIdx.x; k < npacks; k += Block, dst += Block * V, at += Block * V, t_off -= Block * V) {
          uint32_t w[4];
          float v[V];
          smem_load16(buf, at, w);
          unpack16<T>(w, v);
          ce_grad_values<kCap, kWeigh>(p, r, v, head + static_cast<long long>(k) * V, t_off, inv_c);
          store_pack<T, V>(dst, v);
        }
        for (long long c = tail + threadIdx.x; c < p.cols; c += Block) scalar(c);
      });
    } else {
      ce_with_options(p, [&](auto cap, auto weigh) {
        for (long long c = threadIdx.x; c < p.cols; c += Block) {
          float v[1] = {to_f32(static_cast<T>(buf[c + lead]))};
          ce_grad_values<decltype(cap)::value, decltype(weigh)::value>(p, r, v, c, t_col - c, inv_c);
          store_pack<T, 1>(dxr + c, v);
        }
      });
    }
    __syncthreads();  // the next row overwrites buf and shared_row
  }
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
