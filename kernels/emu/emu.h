// Host emulation of the CUDA execution model, so that kernels/*.cu compile with the system C++
// compiler and run on a CPU.
//
// What is emulated (and how):
// - A block's threads are cooperatively scheduled fibers on one OS thread; blocks of a grid are
//   spread over several OS threads. A fiber runs until it waits on __syncthreads() or on a warp
//   shuffle, then the next ready fiber runs, in forward or reverse thread order (chosen per
//   launch) so that a missing barrier shows up as a result that depends on the order.
// - __syncthreads() is a generation-counted barrier over every thread of the block.
// - Warp shuffles follow PTX shfl.sync: every lane named in the mask must arrive with the same
//   mask; `width` splits the warp into segments; a source lane outside the caller's segment
//   gives the caller its own value.
// - Global memory is only touched through the accessors in common.cuh, which call
//   emu::global_access(): it checks the address against the launch's tensors (and their
//   read/write rights and 16-byte alignment for vector accesses) and counts the traffic.
// - A fault (out-of-bounds access, a barrier or shuffle not reached by all threads, mismatched
//   masks) aborts the launch and comes back as an error string, never as a crash.
//
// Static __shared__ variables become thread_local statics: every fiber of a block runs on the
// same OS thread, and an OS thread runs one block at a time, so they are per block.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __restrict__ __restrict

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
};

namespace emu {

// Per-OS-thread view of "who am I", refreshed by the scheduler on every switch into a fiber.
extern thread_local uint3 cur_thread_idx;
extern thread_local uint3 cur_block_idx;
extern thread_local dim3 cur_block_dim;
extern thread_local dim3 cur_grid_dim;
extern thread_local unsigned char* cur_dynamic_smem;
extern thread_local unsigned cur_linear_tid;  // threadIdx flattened (x fastest), as warps count

void syncthreads();
// Exchanges `bits` (a 4- or 8-byte value) within the calling lane's shuffle group and returns
// the bits of lane `src_lane`, or the caller's own bits when `src_lane` is negative.
uint64_t shuffle_bits(unsigned mask, uint64_t bits, int src_lane);
void syncwarp(unsigned mask);
// Checks and counts one global-memory access; never returns when the access is illegal.
void global_access(const void* ptr, size_t bytes, bool is_write);
// Records a fault in the current launch and leaves the calling fiber for good.
[[noreturn]] void fault(const char* what);

// Adds an entry point to the emulator's kernel table (common.cuh's CS_ENTRY makes one each).
struct KernelRegistrar {
  KernelRegistrar(const char* name, void (*thunk)(const void* params), size_t params_size);
};

}  // namespace emu

#define threadIdx (::emu::cur_thread_idx)
#define blockIdx (::emu::cur_block_idx)
#define blockDim (::emu::cur_block_dim)
#define gridDim (::emu::cur_grid_dim)
#define warpSize 32

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::syncwarp(mask); }

namespace emu {
inline unsigned lane_id() { return cur_linear_tid % 32; }

template <typename T>
T shuffle_value(unsigned mask, T v, int src_lane) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 4- or 8-byte values");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle_bits(mask, bits, src_lane);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// The first lane of the caller's `width`-lane segment, after checking `width` as PTX requires.
inline int segment_base(int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fault("shuffle width must be a power of two in 1..32");
  return static_cast<int>(lane_id()) & ~(width - 1);
}
}  // namespace emu

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  int base = ::emu::segment_base(width);
  return ::emu::shuffle_value(mask, v, base + (src & (width - 1)));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  int base = ::emu::segment_base(width);
  int src = static_cast<int>(::emu::lane_id()) ^ lane_mask;
  return ::emu::shuffle_value(mask, v, (src >= base && src < base + width) ? src : -1);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int base = ::emu::segment_base(width);
  int src = static_cast<int>(::emu::lane_id()) + static_cast<int>(delta);
  return ::emu::shuffle_value(mask, v, src < base + width ? src : -1);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  int base = ::emu::segment_base(width);
  int src = static_cast<int>(::emu::lane_id()) - static_cast<int>(delta);
  return ::emu::shuffle_value(mask, v, src >= base ? src : -1);
}

// ---- Storage types: bit-exact host twins of cuda_fp16.h / cuda_bf16.h, round to nearest even.
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

namespace emu {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace emu

inline float __half2float(__half h) {
  uint32_t sign = (h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1f;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return ::emu::f32_from_bits(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp != 0) return ::emu::f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: exact in f32.
  float mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24
  return sign ? -mag : mag;
}

inline __half __float2half_rn(float f) {
  uint32_t u = ::emu::f32_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN (keep NaN quiet and non-zero)
    return __half{static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0))};
  }
  if (abs >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): value = abs_f * 2^24 rounded to an integer, ties to even.
    float scaled = ::emu::f32_from_bits(abs) * 16777216.0f;  // exact: power-of-two scaling
    float r = std::nearbyint(scaled);                        // default rounding mode: to nearest even
    return __half{static_cast<uint16_t>(sign | static_cast<uint16_t>(r))};
  }
  // Normal: rebias exponent, round the 13 dropped mantissa bits to nearest even.
  uint32_t rebased = abs - (112u << 23);
  uint32_t lsb = (rebased >> 13) & 1u;
  rebased += 0xfffu + lsb;
  return __half{static_cast<uint16_t>(sign | (rebased >> 13))};
}

inline float __bfloat162float(__nv_bfloat16 b) { return ::emu::f32_from_bits(static_cast<uint32_t>(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = ::emu::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
