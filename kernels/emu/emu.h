// Host emulation of the CUDA execution model, so that kernels/*.cu compile with the system C++
// compiler and run on a CPU.
//
// What is emulated (and how):
// - A block's threads are cooperatively scheduled fibers on one OS thread; blocks of a grid are
//   spread over several OS threads. A fiber runs until it waits on __syncthreads() or on a warp
//   shuffle, then the next ready fiber runs. The order is chosen per launch (forward, reverse, a
//   seeded shuffle per block, or one warp at a time running ahead until all its lanes block) so
//   that a missing barrier shows up as a result that depends on the order.
// - __syncthreads() is a generation-counted barrier over every thread of the block; each barrier
//   starts a new "epoch" (a process-wide counter), which the shared-memory race detector uses.
// - Warp shuffles follow PTX shfl.sync: every lane named in the mask must arrive with the same
//   mask; `width` splits the warp into segments (PTX's segmask/clamp): a bfly or down source past
//   the end of the caller's segment, or an up source before its start, gives the caller its own
//   value, and a bfly source in an EARLIER segment is read (as the hardware does).
// - Global memory is only touched through the accessors in common.cuh, which call
//   emu::global_access(): it checks the address against the launch's tensors (and their
//   read/write rights and 16-byte alignment for vector accesses) and counts the traffic.
// - Shared memory is only touched through SharedArray (static, CS_SHARED_ARRAY in common.cuh) and
//   SharedPtr (dynamic, cs::dynamic_smem): every access is bounds-checked, every read must see a
//   value written by this block (shared memory is poisoned per block), and a read/write race
//   between two threads with no barrier (or __syncwarp, for lanes of one warp) between them is a
//   fault, in the spirit of compute-sanitizer's racecheck. A plain `__shared__` does not compile.
// - A fault (out-of-bounds access, race, a barrier or shuffle not reached by all threads,
//   mismatched masks) aborts the launch and comes back as an error string, never as a crash.
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
// Shared memory must go through the checked accessors: a bare __shared__ is a compile error.
#define __shared__ use_CS_SHARED_ARRAY_so_that_the_emulator_checks_shared_memory
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

// Adds an entry point to the emulator's kernel table (common.cuh's CS_ENTRY makes one each);
// `max_threads` is the entry's __launch_bounds__, enforced at launch as a GPU does.
struct KernelRegistrar {
  KernelRegistrar(const char* name, void (*thunk)(const void* params), size_t params_size, unsigned max_threads);
};

// ---- Shared memory. One SharedSpace describes one shared object of the running block (the
// dynamic segment, or one static array): its bytes and the race detector's shadow, one Granule
// per 2 bytes (per byte for arrays of 1-byte elements), so that 16-bit elements written by
// neighbouring threads do not alias.
struct Granule {
  uint64_t write_epoch;  // barrier epoch of the last write (older than the block: never written)
  uint64_t read_epoch;   // barrier epoch of the reads summarised below
  uint32_t write_sync;   // the writer's warp __syncwarp count at the write
  uint32_t read_sync;    // the readers' warp __syncwarp count at the latest read
  uint16_t writer;       // linear thread index of the last write
  uint16_t read_warp;    // the warp of every read in read_epoch, or kManyWarps
  uint32_t read_lanes;   // the lanes of read_warp that read in read_epoch
};
constexpr uint16_t kManyWarps = 0xffff;

struct SharedSpace {
  unsigned char* data;
  size_t bytes;
  Granule* shadow;
  unsigned granule_shift;  // log2 of the bytes per granule: 1, or 0 for 1-byte elements
  bool is_static;
};

// Checks one access of `bytes` bytes (an element of alignment `align`) at byte `offset`
// (possibly negative or past the end) of `space` for the calling thread, and records it; never
// returns when the access is illegal.
void shared_access(SharedSpace* space, long long offset, size_t bytes, size_t align, bool is_write);
// The running block's dynamic shared memory.
SharedSpace* dynamic_shared_space();
// A static array seen by the running block: returns true the first time in each block, after
// checking that the block's static + dynamic shared memory fits the launch's limit and
// poisoning `data` (the caller then resets its shadow).
bool enter_static_shared(uint64_t* block_serial, unsigned char* data, size_t bytes);
// The running block's current barrier epoch.
uint64_t current_epoch();
// A shared-memory reference made in one barrier interval and read or written in a later one.
[[noreturn]] void stale_shared_reference();

// Accessors are forced inline so that shared_access's return address is the access site in the
// kernel: the wavefront counter groups the lanes of one warp access by it.
#define CS_EMU_SITE __attribute__((always_inline)) inline

// A reference to one element of shared memory: reads and writes go through shared_access. It
// remembers the barrier interval it was made in: `auto v = smem[i]; __syncthreads(); use(v)`
// would read after the barrier on the emulator but before it on a GPU, so it is a fault.
template <typename T>
class SharedRef {
 public:
  SharedRef(SharedSpace* s, long long offset) : s_(s), off_(offset), epoch_(current_epoch()) {}
  CS_EMU_SITE operator T() const {
    check_fresh();
    shared_access(s_, off_, sizeof(T), alignof(T), false);
    T v;
    std::memcpy(&v, s_->data + off_, sizeof(T));
    return v;
  }
  CS_EMU_SITE SharedRef& operator=(const T& v) {
    check_fresh();
    shared_access(s_, off_, sizeof(T), alignof(T), true);
    std::memcpy(s_->data + off_, &v, sizeof(T));
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }
  template <typename U>
  SharedRef& operator+=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) + v); }
  template <typename U>
  SharedRef& operator-=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) - v); }
  template <typename U>
  SharedRef& operator*=(const U& v) { return *this = static_cast<T>(static_cast<T>(*this) * v); }

 private:
  void check_fresh() const {
    if (epoch_ != current_epoch()) stale_shared_reference();
  }
  SharedSpace* s_;
  long long off_;
  uint64_t epoch_;
};

// A typed pointer into the dynamic shared memory segment (what `extern __shared__` gives).
template <typename T>
class SharedPtr {
 public:
  SharedPtr(SharedSpace* s, long long byte_offset) : s_(s), off_(byte_offset) {}
  SharedRef<T> operator[](long long i) const { return SharedRef<T>(s_, off_ + i * static_cast<long long>(sizeof(T))); }
  SharedPtr operator+(long long i) const { return SharedPtr(s_, off_ + i * static_cast<long long>(sizeof(T))); }
  // 16 bytes from element i on (16-byte aligned): one st.shared.v4 / ld.shared.v4 on the GPU.
  CS_EMU_SITE void store16(long long i, const uint32_t (&w)[4]) const {
    const long long at = off_ + i * static_cast<long long>(sizeof(T));
    shared_access(s_, at, 16, 16, true);
    std::memcpy(s_->data + at, w, 16);
  }
  CS_EMU_SITE void load16(long long i, uint32_t (&w)[4]) const {
    const long long at = off_ + i * static_cast<long long>(sizeof(T));
    shared_access(s_, at, 16, 16, false);
    std::memcpy(w, s_->data + at, 16);
  }

 private:
  SharedSpace* s_;
  long long off_;
};

// A static __shared__ array of N elements: per OS thread (one block at a time runs on it),
// poisoned at each block's first touch, with its own race-detector shadow.
template <typename T, size_t N>
struct SharedArray {
  static constexpr size_t kBytes = N * sizeof(T);
  static constexpr unsigned kGranuleShift = sizeof(T) == 1 ? 0 : 1;
  alignas(16) unsigned char data[kBytes];
  Granule shadow[(kBytes + (1u << kGranuleShift) - 1) >> kGranuleShift];
  SharedSpace space;
  uint64_t serial;

  SharedRef<T> operator[](long long i) {
    if (enter_static_shared(&serial, data, kBytes)) {
      std::memset(shadow, 0, sizeof shadow);
      space = SharedSpace{data, kBytes, shadow, kGranuleShift, true};
    }
    return SharedRef<T>(&space, i * static_cast<long long>(sizeof(T)));
  }
};

// Zeroed host memory of `bytes` bytes (16-byte aligned) for one SharedArray; a fault (a host
// resource failure) when there is none. free_static_shared(nullptr) does nothing.
void* allocate_static_shared(size_t bytes);
void free_static_shared(void* storage);

// What CS_SHARED_ARRAY declares on the emulator: a `static thread_local` handle of one pointer,
// whose SharedArray lives on the heap from the OS thread's first use of it to the thread's exit.
// Not the array itself: static thread-local storage is the executable's, so every thread of a
// user's process (not only the emulator's) would carry every kernel's arrays (3.5 MB of
// zeroed pages each, once the strided kernels came) and a 2 MiB thread stack could overflow.
template <typename T, size_t N>
class StaticShared {
 public:
  StaticShared() = default;
  StaticShared(const StaticShared&) = delete;
  StaticShared& operator=(const StaticShared&) = delete;
  ~StaticShared() {
    free_static_shared(storage_);
    storage_ = nullptr;  // a launch from a later thread-exit destructor allocates afresh
  }

  SharedRef<T> operator[](long long i) {
    if (storage_ == nullptr)
      storage_ = static_cast<SharedArray<T, N>*>(allocate_static_shared(sizeof(SharedArray<T, N>)));
    return (*storage_)[i];
  }

 private:
  static_assert(std::is_trivially_copyable<SharedArray<T, N>>::value, "zeroed memory is a valid SharedArray");
  SharedArray<T, N>* storage_ = nullptr;
};

}  // namespace emu

#define threadIdx (::emu::cur_thread_idx)
#define blockIdx (::emu::cur_block_idx)
#define blockDim (::emu::cur_block_dim)
#define gridDim (::emu::cur_grid_dim)
#define warpSize 32

// CUDA's global-namespace intrinsics are macros for functions in namespace emu, so that a
// second build of the emulator (the FMA flavour, with `emu` renamed) shares no symbol with this one.
namespace emu {
inline void syncwarp_all(unsigned mask = 0xffffffffu) { syncwarp(mask); }
}  // namespace emu
#define __syncthreads ::emu::syncthreads
#define __syncwarp ::emu::syncwarp_all

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

// PTX shfl.sync's lane arithmetic. `width` becomes segmask = 32 - width and the clamp value;
// minLane is the caller's segment start, maxLane its end (for up: its start). Returns the source
// lane, or -1 when the predicate is false (the caller keeps its own value). Only the low 5 bits
// of the lane operand count, as in PTX (b[4:0]).
enum class ShuffleMode { Idx, Up, Down, Bfly };
inline int ptx_shuffle_source(ShuffleMode mode, int b, int width) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fault("shuffle width must be a power of two in 1..32");
  const int lane = static_cast<int>(lane_id());
  const int segmask = 32 - width;  // the lane bits that name the segment
  const int bval = b & 31;
  const int min_lane = lane & segmask;
  const int clamp = mode == ShuffleMode::Up ? 0 : 31;
  const int max_lane = min_lane | (clamp & ~segmask);
  int j = 0;
  bool ok = false;
  switch (mode) {
    case ShuffleMode::Up: j = lane - bval; ok = j >= max_lane; break;
    case ShuffleMode::Down: j = lane + bval; ok = j <= max_lane; break;
    case ShuffleMode::Bfly: j = lane ^ bval; ok = j <= max_lane; break;
    case ShuffleMode::Idx: j = min_lane | (bval & ~segmask); ok = j <= max_lane; break;
  }
  return ok ? j : -1;
}
}  // namespace emu

namespace emu {
template <typename T>
T shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return shuffle_value(mask, v, ptx_shuffle_source(ShuffleMode::Idx, src, width));
}
template <typename T>
T shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return shuffle_value(mask, v, ptx_shuffle_source(ShuffleMode::Bfly, lane_mask, width));
}
template <typename T>
T shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return shuffle_value(mask, v, ptx_shuffle_source(ShuffleMode::Down, static_cast<int>(delta & 31u), width));
}
template <typename T>
T shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return shuffle_value(mask, v, ptx_shuffle_source(ShuffleMode::Up, static_cast<int>(delta & 31u), width));
}
}  // namespace emu
#define __shfl_sync ::emu::shfl_sync
#define __shfl_xor_sync ::emu::shfl_xor_sync
#define __shfl_down_sync ::emu::shfl_down_sync
#define __shfl_up_sync ::emu::shfl_up_sync

// ---- Storage types: bit-exact host twins of cuda_fp16.h / cuda_bf16.h, round to nearest even.
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
#define __half2float ::emu::half2float
#define __float2half_rn ::emu::float2half_rn
#define __bfloat162float ::emu::bfloat162float
#define __float2bfloat16_rn ::emu::float2bfloat16_rn

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

// Flush-to-zero as the GPU's .ftz instructions do: a subnormal becomes a zero of its sign. Done
// on the bits (no float select, so the compiler still sees plain arithmetic around it and the
// FMA flavour can contract it as nvcc would).
inline float flush_subnormal(float f) {
  uint32_t u = f32_bits(f);
  u &= (u & 0x7f800000u) != 0 ? 0xffffffffu : 0x80000000u;
  return f32_from_bits(u);
}

inline float half2float(__half h) {
  uint32_t sign = (h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1f;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: exact in f32.
  float mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24
  return sign ? -mag : mag;
}

inline __half float2half_rn(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN (keep NaN quiet and non-zero)
    return __half{static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u | ((abs >> 13) & 0x3ffu) : 0))};
  }
  if (abs >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds past 65504
  if (abs < 0x38800000u) {
    // Subnormal half (or zero): abs * 2^24 rounded to an integer, ties to even, in integer
    // arithmetic so that the caller's floating-point rounding mode cannot change it.
    const uint32_t e = abs >> 23;
    if (e < 102) return __half{sign};  // below half of the smallest subnormal: rounds to zero
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
    return __half{static_cast<uint16_t>(sign | q)};
  }
  // Normal: rebias exponent, round the 13 dropped mantissa bits to nearest even.
  uint32_t rebased = abs - (112u << 23);
  uint32_t lsb = (rebased >> 13) & 1u;
  rebased += 0xfffu + lsb;
  return __half{static_cast<uint16_t>(sign | (rebased >> 13))};
}

inline float bfloat162float(__nv_bfloat16 b) { return f32_from_bits(static_cast<uint32_t>(b.bits) << 16); }

inline __nv_bfloat16 float2bfloat16_rn(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return __nv_bfloat16{static_cast<uint16_t>(u >> 16)};
}
}  // namespace emu
