// Deliberately broken kernels, compiled only into the emulator (never into the GPU image), so
// that tests can show the emulator catches each class of bug. p.y is a float buffer of p.cols
// elements; p.x is unused.
#include "../common.cuh"

namespace cs_selftest {

// Every thread writes its slot of shared memory, then reads its neighbour's. With the barrier
// the result is (t + 1) % n + 1 for thread t; without it, the value depends on thread order.
template <bool WithBarrier>
__device__ void neighbour_exchange(const cs::SoftmaxParams& p) {
  float* slots = cs::dynamic_smem<float>();
  const unsigned n = blockDim.x;
  slots[threadIdx.x] = static_cast<float>(threadIdx.x + 1);
  if (WithBarrier) __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, slots[(threadIdx.x + 1) % n]);
}

// Writes one element past the end of the output.
__device__ void out_of_bounds_write(const cs::SoftmaxParams& p) {
  cs::store_one(static_cast<float*>(p.y) + p.cols, 1.0f);
}

// A 16-byte access one element past a 16-byte boundary (a misaligned-address fault on a GPU).
__device__ void misaligned_vector_store(const cs::SoftmaxParams& p) {
  float v[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  if (threadIdx.x == 0) cs::store_pack<float, 4>(static_cast<float*>(p.y) + 1, v);
}

// Only the first half of the block reaches the barrier.
__device__ void divergent_barrier(const cs::SoftmaxParams& p) {
  if (threadIdx.x < blockDim.x / 2) __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, 1.0f);
}

// A full-mask shuffle reached by only half of the warp.
__device__ void partial_shuffle(const cs::SoftmaxParams& p) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, v);
}

// Correct warp shuffles of every kind, for checking the emulator's shuffle semantics:
// y[t] = xor(1, width 32) + 100 * down(1, width 8) + 10000 * up(2, width 16) + 1e6 * idx(3, width 4)
__device__ void shuffle_semantics(const cs::SoftmaxParams& p) {
  const float lane = static_cast<float>(threadIdx.x % 32);
  float a = __shfl_xor_sync(0xffffffffu, lane, 1);
  float b = __shfl_down_sync(0xffffffffu, lane, 1, 8);
  float c = __shfl_up_sync(0xffffffffu, lane, 2, 16);
  float d = __shfl_sync(0xffffffffu, lane, 3, 4);
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, a + 100.0f * b + 10000.0f * c + 1e6f * d);
}

}  // namespace cs_selftest

CS_ENTRY(emu_selftest_barrier_ok, 1024, (cs_selftest::neighbour_exchange<true>(p)))
CS_ENTRY(emu_selftest_missing_barrier, 1024, (cs_selftest::neighbour_exchange<false>(p)))
CS_ENTRY(emu_selftest_out_of_bounds, 1024, (cs_selftest::out_of_bounds_write(p)))
CS_ENTRY(emu_selftest_misaligned_vector, 1024, (cs_selftest::misaligned_vector_store(p)))
CS_ENTRY(emu_selftest_divergent_barrier, 1024, (cs_selftest::divergent_barrier(p)))
CS_ENTRY(emu_selftest_partial_shuffle, 1024, (cs_selftest::partial_shuffle(p)))
CS_ENTRY(emu_selftest_shuffle_semantics, 1024, (cs_selftest::shuffle_semantics(p)))
