// The warp family: a row in registers, owned by a group of Width lanes (several rows a warp when
// Width < 32), for rows of up to 2048 columns. Reads each input once and writes the output once.
// Every op of the softmax family runs on this one skeleton through its row policy (ops.cuh):
// forward, log-softmax and their f32-output forms (ForwardRows), the backward ops (BackwardRows)
// and logsumexp (LogSumExpRows, one value a row).
//
// The row loop is uniform across the warp (inactive rows still take part in the shuffles, which
// use the full mask).
#include "common.cuh"
#include "ops.cuh"

namespace cs {

// T: the inputs' storage type; TO: the output's (T; f32 for the _to_f32 ops; unused by ops that
// write one value a row, whose output is f32).
template <typename T, int Width, int Cols, int Vec, typename Rows, typename TO = T>
__device__ __forceinline__ void warp_rows(const SoftmaxParams& p) {
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
  const Rows rows(p);
  // The lane's first element in its group's row, carried from row to row (a pointer bump an
  // iteration) for every tensor (kCarried). Computed in the loop as x + (active ? row * cols : 0) + col,
  // NVVM rebuilt that address (the 64-bit multiply, the select, the shifts) and ptxas reloaded
  // cols and x in every pack's guarded block: about 70 integer instructions a row at 1-16
  // lanes. A loop-carried pointer is a leaf of the address, so each access is that register
  // plus an immediate. (They run past the last row, where nothing is accessed.) Not for one lane
  // a row of scalars that stores elements: there the carried pointers cost 8-10 instructions a
  // row more than x + row * cols (0.52 -> 0.55 warp instructions an element, f16 softmax at 1-8
  // columns on sm_90), so those kernels form the row's address from its index.
  constexpr bool kCarried = !(Width == 1 && Vec == 1 && !Rows::kWritesRow);
  const long long first = (warp * kRowsPerWarp + group) * p.cols + lane * Vec;
  const long long step = row_step * p.cols;
  const T* a = static_cast<const T*>(p.x) + first;
  // (One-input ops have no b: it walks x and is never read.)
  const T* b = static_cast<const T*>(Rows::kInputs == 2 ? p.dy : p.x) + first;
  TO* out = static_cast<TO*>(p.y) + (Rows::kWritesRow ? 0 : first);
  // Backward: slots past the row end keep finite stale values (kPadMissing false).
  float va[Cols], vb[Cols];
#pragma unroll
  for (int j = 0; j < Cols; ++j) va[j] = vb[j] = 0.0f;

  for (long long base = warp * kRowsPerWarp; base < p.rows;
       base += row_step, a += step, b += step, out += Rows::kWritesRow ? 0 : step) {
    const long long row = base + group;
    const bool active = row < p.rows;
    int packs = active ? lane_packs : 0;
    const long long row_offset = kCarried ? 0 : active ? row * p.cols : 0;
    const T* ar = kCarried ? a : static_cast<const T*>(p.x) + row_offset;
    const T* br = kCarried ? b : static_cast<const T*>(Rows::kInputs == 2 ? p.dy : p.x) + row_offset;
    TO* outr = kCarried ? out : static_cast<TO*>(p.y) + row_offset;
#ifndef CS_EMULATOR
    // One lane a row and one value a row written (no shuffle and no element store in the loop):
    // left visible, the packs > 0 test splits into the invariant cols > 0, and LLVM unswitches
    // the row loop on it, adding a second loop (for zero columns, never launched) to the
    // kernel's census. Opaque, packs is only known per row. (Not for the ops that store
    // elements: there it cost 10 instructions a row, 0.52 -> 0.56 warp instructions an element
    // at 1-8 f16 columns on sm_90.)
    if constexpr (Width == 1 && Vec == 1 && Rows::kWritesRow) asm volatile("" : "+r"(packs));
#endif
    typename Rows::First s = rows.first_identity();
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const bool loaded = i < kSurePacks ? active : i < packs;
      if (loaded) {
        load_pack<T, Vec>(ar + i * Width * Vec, sub_array<Vec>(va + i * Vec));
        if constexpr (Rows::kInputs == 2) load_pack<T, Vec>(br + i * Width * Vec, sub_array<Vec>(vb + i * Vec));
      } else if constexpr (Rows::kPadMissing) {
#pragma unroll
        for (int j = 0; j < Vec; ++j) va[i * Vec + j] = Rows::kPad;
      }
      s = rows.first_fold(s, sub_array<Vec>(va + i * Vec), sub_array<Vec>(vb + i * Vec), loaded);
    }
    const typename Rows::Row r = rows.template registers_row<Width>(s, va, vb);
    if constexpr (Rows::kWritesRow) {
      if (active && lane == 0) store_one(static_cast<float*>(p.y) + row, rows.row_value(r));
    } else {
      // Every slot's output, unpredicated (slots past the row end compute garbage that is never
      // stored): predicated arithmetic made ptxas reload the scale from the constant bank once
      // per slot in the log-softmax kernels.
      rows.out_kept(va, vb, r);
#pragma unroll
      for (int i = 0; i < kPacks; ++i) {
        if (i < kSurePacks ? active : i < packs) store_pack<TO, Vec>(outr + i * Width * Vec, sub_array<Vec>(va + i * Vec));
      }
    }
  }
}

}  // namespace cs

// ---- Entry points: made by build.rs from the kernel registry (build/kernel_entries.rs).
