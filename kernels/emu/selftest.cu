// Deliberately broken kernels, compiled only into the emulator (never into the GPU image), so
// that tests can show the emulator catches each class of bug. p.y is a float buffer of p.cols
// elements; p.x is unused.
#include "../common.cuh"

namespace cs_selftest {

// Every thread writes its slot of shared memory, then reads its neighbour's. With the barrier
// the result is (t + 1) % n + 1 for thread t; without it, the value depends on thread order.
template <bool WithBarrier>
__device__ void neighbour_exchange(const cs::SoftmaxParams& p) {
  cs::SmemPtr<float> slots = cs::dynamic_smem<float>();
  const unsigned n = blockDim.x;
  slots[threadIdx.x] = static_cast<float>(threadIdx.x + 1);
  if (WithBarrier) __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, slots[(threadIdx.x + 1) % n]);
}

// One shared-memory store per thread at `Stride` times its natural spacing: 4-byte floats, or
// 16-byte packs. Stride 1 is conflict-free; stride 2 puts two distinct words in a bank per pass
// (two wavefronts where one would do). For the wavefront counter's own test.
template <int Stride, bool Pack16>
__device__ void shared_stride(const cs::SoftmaxParams& p) {
  cs::SmemPtr<float> s = cs::dynamic_smem<float>();
  const long long i = static_cast<long long>(threadIdx.x) * Stride * (Pack16 ? 4 : 1);
  if (Pack16) {
    const uint32_t w[4] = {1, 2, 3, 4};
    cs::smem_store16(s, i, w);
  } else {
    s[i] = 1.0f;
  }
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, 1.0f);
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

// A row of lane values through shuffles whose lane operand reaches past the segment: PTX reads
// an earlier segment for bfly, keeps the lane's own value for a later one, and uses only the
// low 5 bits of the operand.
// y[t] = xor(16, width 8) + 100 * xor(4, width 4) + 10000 * down(33, width 32) + 1e6 * up(3, width 8)
__device__ void shuffle_segments(const cs::SoftmaxParams& p) {
  const float lane = static_cast<float>(threadIdx.x % 32);
  float a = __shfl_xor_sync(0xffffffffu, lane, 16, 8);
  float b = __shfl_xor_sync(0xffffffffu, lane, 4, 4);
  float c = __shfl_down_sync(0xffffffffu, lane, 33u, 32);
  float d = __shfl_up_sync(0xffffffffu, lane, 3u, 8);
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, a + 100.0f * b + 10000.0f * c + 1e6f * d);
}

// Reads one element past the block's dynamic shared memory (launched with blockDim.x floats).
__device__ void shared_out_of_bounds(const cs::SoftmaxParams& p) {
  cs::SmemPtr<float> slots = cs::dynamic_smem<float>();
  slots[threadIdx.x] = 1.0f;
  __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, slots[threadIdx.x + 1]);
}

// Reads a static shared slot no thread wrote.
__device__ void shared_uninitialised(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, slots, 64);
  if (threadIdx.x != 5) slots[threadIdx.x] = 2.0f;
  __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, slots[threadIdx.x ^ 5]);
}

// One scratch slot reused by two reductions with the barrier between them dropped: thread 0
// overwrites the slot while other threads may still be reading the first value. Correct in
// some thread orders, a write-after-read race in all.
__device__ void reused_scratch_race(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, slot, 1);
  if (threadIdx.x == 0) slot[0] = 1.0f;
  __syncthreads();
  float first = slot[0];
  if (threadIdx.x == 0) slot[0] = 2.0f;  // needs a __syncthreads() before it
  __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, first + slot[0]);
}

// Lanes of one warp exchange values through shared memory ordered by __syncwarp: correct, and
// must not be reported as a race.
__device__ void warp_exchange_with_syncwarp(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, slots, 1024);
  slots[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncwarp();
  const unsigned partner = (threadIdx.x & ~31u) | ((threadIdx.x + 1) % 32);
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, slots[partner]);
}

// Writes its output normally: launched with more threads than its __launch_bounds__(64).
__device__ void write_thread_index(const cs::SoftmaxParams& p) {
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, static_cast<float>(threadIdx.x));
}

// 2 KiB of static shared memory beside the launch's dynamic shared memory.
__device__ void large_static_shared(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, big, 512);
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, big[threadIdx.x]);
}

// ---- Correct code the race detector must accept (warp-synchronous patterns, odd element sizes).

// The classic warp reduction through shared memory, ordered by __syncwarp (one warp).
__device__ void warp_reduce_syncwarp(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, s, 64);
  const unsigned t = threadIdx.x;
  s[t] = static_cast<float>(t);
  s[t + 32] = 0.0f;
  __syncwarp();
  float v = s[t];
  for (unsigned o = 16; o > 0; o /= 2) {
    v += s[t + o];
    __syncwarp();
    s[t] = v;
    __syncwarp();
  }
  cs::store_one(static_cast<float*>(p.y) + t, v);
}

// Lane 0 broadcasts through one slot, several rounds, each read by every lane.
__device__ void warp_broadcast_rounds(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, slot, 1);
  float sum = 0.0f;
  for (int round = 1; round <= 3; ++round) {
    if (threadIdx.x == 0) slot[0] = static_cast<float>(round);
    __syncwarp();
    sum += slot[0];
    __syncwarp();
  }
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, sum);
}

// A 24-byte struct per thread (8-byte alignment) and one byte flag per thread.
struct Welford {
  double mean, m2;
  long long n;
};
__device__ void odd_sized_elements(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(Welford, stats, 64);
  CS_SHARED_ARRAY(unsigned char, flags, 64);
  const unsigned t = threadIdx.x;
  stats[t] = Welford{static_cast<double>(t), 0.0, 1};
  flags[t] = static_cast<unsigned char>(t % 2);
  __syncthreads();
  const Welford other = stats[(t + 1) % blockDim.x];
  const unsigned char flag = flags[t ^ 1u];
  cs::store_one(static_cast<float*>(p.y) + t, static_cast<float>(other.mean) + 100.0f * flag);
}

// ---- Races the detector must report.

// Lane 0 writes; only lanes 0-15 meet in a __syncwarp; lane 20 reads: not ordered.
__device__ void partial_syncwarp_race(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, slot, 1);
  const unsigned lane = threadIdx.x % 32;
  if (threadIdx.x == 0) slot[0] = 1.0f;
  if (threadIdx.x < 16) __syncwarp(0xffffu);
  float v = 0.0f;
  if (threadIdx.x == 20) v = slot[0];
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, v + static_cast<float>(lane));
}

// Lane 1 reads, __syncwarp, reads again; lane 0 then writes with no __syncwarp after the second
// read.
__device__ void reread_race(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, slot, 1);
  if (threadIdx.x == 0) slot[0] = 1.0f;
  __syncthreads();
  float v = 0.0f;
  if (threadIdx.x == 1) v = slot[0];
  __syncwarp();
  if (threadIdx.x == 1) v += slot[0];
  if (threadIdx.x == 0) slot[0] = 2.0f;
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, v);
}

// A reference kept across a barrier: the GPU reads before the barrier, the emulator would after.
__device__ void stale_reference(const cs::SoftmaxParams& p) {
  CS_SHARED_ARRAY(float, s, 1024);
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  auto v = s[threadIdx.x];
  __syncthreads();
  s[threadIdx.x] = 2.0f;
  cs::store_one(static_cast<float*>(p.y) + threadIdx.x, static_cast<float>(v));
}

}  // namespace cs_selftest

CS_ENTRY(emu_selftest_barrier_ok, 1024, 1, (cs_selftest::neighbour_exchange<true>(p)))
CS_ENTRY(emu_selftest_missing_barrier, 1024, 1, (cs_selftest::neighbour_exchange<false>(p)))
CS_ENTRY(emu_selftest_out_of_bounds, 1024, 1, (cs_selftest::out_of_bounds_write(p)))
CS_ENTRY(emu_selftest_misaligned_vector, 1024, 1, (cs_selftest::misaligned_vector_store(p)))
CS_ENTRY(emu_selftest_divergent_barrier, 1024, 1, (cs_selftest::divergent_barrier(p)))
CS_ENTRY(emu_selftest_partial_shuffle, 1024, 1, (cs_selftest::partial_shuffle(p)))
CS_ENTRY(emu_selftest_shuffle_semantics, 1024, 1, (cs_selftest::shuffle_semantics(p)))
CS_ENTRY(emu_selftest_shuffle_segments, 1024, 1, (cs_selftest::shuffle_segments(p)))
CS_ENTRY(emu_selftest_shared_out_of_bounds, 1024, 1, (cs_selftest::shared_out_of_bounds(p)))
CS_ENTRY(emu_selftest_shared_uninitialised, 64, 1, (cs_selftest::shared_uninitialised(p)))
CS_ENTRY(emu_selftest_reused_scratch_race, 1024, 1, (cs_selftest::reused_scratch_race(p)))
CS_ENTRY(emu_selftest_warp_exchange, 1024, 1, (cs_selftest::warp_exchange_with_syncwarp(p)))
CS_ENTRY(emu_selftest_bounded_64, 64, 1, (cs_selftest::write_thread_index(p)))
CS_ENTRY(emu_selftest_large_static_shared, 512, 1, (cs_selftest::large_static_shared(p)))
CS_ENTRY(emu_selftest_warp_reduce_syncwarp, 32, 1, (cs_selftest::warp_reduce_syncwarp(p)))
CS_ENTRY(emu_selftest_warp_broadcast_rounds, 1024, 1, (cs_selftest::warp_broadcast_rounds(p)))
CS_ENTRY(emu_selftest_odd_sized_elements, 64, 1, (cs_selftest::odd_sized_elements(p)))
CS_ENTRY(emu_selftest_partial_syncwarp_race, 1024, 1, (cs_selftest::partial_syncwarp_race(p)))
CS_ENTRY(emu_selftest_reread_race, 1024, 1, (cs_selftest::reread_race(p)))
CS_ENTRY(emu_selftest_stale_reference, 1024, 1, (cs_selftest::stale_reference(p)))
CS_ENTRY(emu_selftest_smem_stride1, 1024, 1, (cs_selftest::shared_stride<1, false>(p)))
CS_ENTRY(emu_selftest_smem_stride2, 1024, 1, (cs_selftest::shared_stride<2, false>(p)))
CS_ENTRY(emu_selftest_smem_pack16_stride1, 1024, 1, (cs_selftest::shared_stride<1, true>(p)))
CS_ENTRY(emu_selftest_smem_pack16_stride2, 1024, 1, (cs_selftest::shared_stride<2, true>(p)))
