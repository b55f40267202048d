// The SIMT emulator's runtime: fibers, the per-block scheduler, barriers, warp shuffles, global
// memory checks and counters, and the C entry points the Rust side calls. See emu.h.
#include "emu.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__) || defined(CS_EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace emu {

thread_local uint3 cur_thread_idx;
thread_local uint3 cur_block_idx;
thread_local dim3 cur_block_dim;
thread_local dim3 cur_grid_dim;
thread_local unsigned char* cur_dynamic_smem;
thread_local unsigned cur_linear_tid;

// ---------------------------------------------------------------------------------------------
// Kernel registry: every entry point registers itself (common.cuh's CS_ENTRY) at start-up.
using KernelThunk = void (*)(const void* params);
struct KernelInfo {
  const char* name;
  KernelThunk thunk;
  size_t params_size;
};
static std::vector<KernelInfo>& registry() {
  static std::vector<KernelInfo> kernels;
  return kernels;
}
KernelRegistrar::KernelRegistrar(const char* name, KernelThunk thunk, size_t params_size) {
  registry().push_back(KernelInfo{name, thunk, params_size});
}

// ---------------------------------------------------------------------------------------------
// Context switching. On x86-64 a hand-written switch saves only the callee-saved registers (far
// cheaper than swapcontext, which makes a system call each time); elsewhere, or with
// CS_EMU_UCONTEXT defined, ucontext. The switch resumes with pop + jmp rather than ret: a ret
// into another stack would mispredict in the return-stack buffer and leave it out of step for
// the fiber's next returns.
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
extern "C" void cs_emu_switch(void** save_sp, void* next_sp);
__asm__(
    ".text\n"
    ".globl cs_emu_switch\n"
    ".type cs_emu_switch,@function\n"
    "cs_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  popq %rax\n"
    "  jmpq *%rax\n"
    ".size cs_emu_switch, .-cs_emu_switch\n"
    ".section .note.GNU-stack,\"\",@progbits\n"
    ".text\n");
#endif

constexpr size_t kStackBytes = 64 * 1024;  // per fiber, including its guard page
constexpr size_t kGuardBytes = 4096;       // no-access page below each stack
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr uint64_t kStackCanary = 0x5afe57ac6b0770aaULL;

enum class FiberState : uint8_t { Ready, AtBarrier, AtShuffle, Done };

struct Fiber {
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
  void* sp;
#else
  ucontext_t ctx;
#endif
  unsigned char* stack;  // lowest address of this fiber's stack
  uint3 tidx;
  unsigned linear;
  FiberState state;
};

// An open shuffle group: the lanes named in `mask` that have arrived so far.
struct ShuffleGroup {
  unsigned mask;
  unsigned arrived;
};

struct Warp {
  uint64_t values[32];   // what each arrived lane offered
  int sources[32];       // which lane each arrived lane reads (-1: itself)
  uint64_t results[32];  // filled for the whole group when its last lane arrives
  ShuffleGroup groups[32];
  int open_groups;
  unsigned lanes;  // the lanes that exist (all 32 unless the block size is not a multiple of 32)
};

struct LaunchShared;

// Everything one OS thread needs to run blocks: the fibers, their stacks, the counters.
struct Worker {
  LaunchShared* launch = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<unsigned char> dynamic_smem;
  std::vector<unsigned> order;  // the order in which the scheduler sweeps the block's fibers
  unsigned nthreads = 0;
  unsigned barrier_arrived = 0;
  Fiber* current = nullptr;
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_ctx;
#endif
  bool block_failed = false;
  // Counters (summed into the launch's statistics when the worker finishes).
  uint64_t bytes_read = 0, bytes_written = 0, accesses = 0, accesses16 = 0;
};

static thread_local Worker* tl_worker = nullptr;

struct Region {
  uintptr_t begin, end;
  bool writable;
};

struct LaunchShared {
  KernelThunk thunk;
  const void* params;
  dim3 grid, block;
  size_t dynamic_smem_bytes;
  std::vector<Region> regions;
  int schedule;            // 0: forward, 1: reverse, 2: shuffled (a random order per block)
  uint64_t schedule_seed;  // for the shuffled schedule
  std::atomic<uint64_t> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex error_lock;  // guards `error` and the counters below
  std::string error;
  uint64_t bytes_read = 0, bytes_written = 0, accesses = 0, accesses16 = 0;
};

// Stacks are reused across launches: mapping and first-touching 64 MiB per launch would
// dominate the cost of small launches.
static std::mutex arena_lock;
static std::vector<unsigned char*> free_arenas;

static unsigned char* take_arena() {
  {
    std::lock_guard<std::mutex> g(arena_lock);
    if (!free_arenas.empty()) {
      unsigned char* b = free_arenas.back();
      free_arenas.pop_back();
      return b;
    }
  }
  void* p = mmap(nullptr, kStackBytes * kMaxThreadsPerBlock, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  // A guard page under every stack: a deep overflow stops at once instead of overwriting the
  // neighbouring fiber's frames (a shallow one trips the canary just above the guard).
  unsigned char* base = static_cast<unsigned char*>(p);
  for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i) mprotect(base + size_t(i) * kStackBytes, kGuardBytes, PROT_NONE);
  return base;
}
static void give_arena(unsigned char* base) {
  std::lock_guard<std::mutex> g(arena_lock);
  free_arenas.push_back(base);
}

static void record_error(LaunchShared* launch, const std::string& what) {
  std::lock_guard<std::mutex> g(launch->error_lock);
  if (launch->error.empty()) launch->error = what;
  launch->failed.store(true);
}

static std::string where_am_i() {
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", cur_block_idx.x, cur_block_idx.y,
                cur_block_idx.z, cur_thread_idx.x, cur_thread_idx.y, cur_thread_idx.z);
  return buf;
}

static void switch_to_scheduler(Worker* w) {
  Fiber* f = w->current;
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
  cs_emu_switch(&f->sp, w->scheduler_sp);
#else
  swapcontext(&f->ctx, &w->scheduler_ctx);
#endif
}

[[noreturn]] void fault(const char* what) {
  Worker* w = tl_worker;
  record_error(w->launch, std::string(what) + " (at " + where_am_i() + ")");
  w->block_failed = true;
  w->current->state = FiberState::Done;
  switch_to_scheduler(w);
  __builtin_unreachable();  // the scheduler never resumes a failed block
}

static void fiber_main() {
  Worker* w = tl_worker;
  w->launch->thunk(w->launch->params);
  w->current->state = FiberState::Done;
  switch_to_scheduler(w);
  __builtin_unreachable();
}

#if !defined(__x86_64__) || defined(CS_EMU_UCONTEXT)
static void fiber_main_ucontext() { fiber_main(); }
#endif

static void start_fiber(Fiber* f) {
  *reinterpret_cast<uint64_t*>(f->stack) = kStackCanary;
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
  // Lay out the frame cs_emu_switch pops: six callee-saved registers, then the return address
  // (fiber_main), above it a dummy return address so fiber_main sees an ABI-aligned stack.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + kStackBytes - kGuardBytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  f->sp = sp;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = f->stack;
  f->ctx.uc_stack.ss_size = kStackBytes - kGuardBytes;
  f->ctx.uc_link = nullptr;
  makecontext(&f->ctx, fiber_main_ucontext, 0);
#endif
}

static void resume(Worker* w, Fiber* f) {
  w->current = f;
  cur_thread_idx = f->tidx;
  cur_linear_tid = f->linear;
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
  cs_emu_switch(&w->scheduler_sp, f->sp);
#else
  swapcontext(&w->scheduler_ctx, &f->ctx);
#endif
}

// Explains why no fiber of the block can move: the caller knows the block is stuck.
static std::string describe_deadlock(Worker* w) {
  unsigned at_barrier = 0, at_shuffle = 0, done = 0;
  for (unsigned i = 0; i < w->nthreads; ++i) {
    switch (w->fibers[i].state) {
      case FiberState::AtBarrier: ++at_barrier; break;
      case FiberState::AtShuffle: ++at_shuffle; break;
      case FiberState::Done: ++done; break;
      default: break;
    }
  }
  char buf[512];
  if (at_barrier > 0) {
    std::snprintf(buf, sizeof buf,
                  "__syncthreads() not reached by every thread of block (%u,%u,%u): %u waiting at the barrier, "
                  "%u exited, %u waiting in a warp shuffle",
                  cur_block_idx.x, cur_block_idx.y, cur_block_idx.z, at_barrier, done, at_shuffle);
    return buf;
  }
  for (unsigned wi = 0; wi < w->warps.size(); ++wi) {
    Warp& warp = w->warps[wi];
    if (warp.open_groups > 0) {
      std::snprintf(buf, sizeof buf,
                    "warp shuffle not reached by every lane in its mask: block (%u,%u,%u) warp %u mask 0x%08x, "
                    "lanes arrived 0x%08x",
                    cur_block_idx.x, cur_block_idx.y, cur_block_idx.z, wi, warp.groups[0].mask,
                    warp.groups[0].arrived);
      return buf;
    }
  }
  return "block made no progress";
}

static bool run_block(Worker* w, uint64_t linear_block) {
  LaunchShared* L = w->launch;
  cur_block_idx = uint3{static_cast<unsigned>(linear_block % L->grid.x),
                        static_cast<unsigned>((linear_block / L->grid.x) % L->grid.y),
                        static_cast<unsigned>(linear_block / (uint64_t(L->grid.x) * L->grid.y))};
  w->barrier_arrived = 0;
  w->block_failed = false;
  for (unsigned i = 0; i < w->warps.size(); ++i) {
    unsigned count = std::min(32u, w->nthreads - 32 * i);
    w->warps[i].open_groups = 0;
    w->warps[i].lanes = count == 32 ? 0xffffffffu : ((1u << count) - 1);
  }
  // Poison dynamic shared memory (all-ones bytes: NaN for floats) so that reading what no
  // thread wrote shows in the results.
  std::memset(w->dynamic_smem.data(), 0xff, w->dynamic_smem.size());
  cur_dynamic_smem = w->dynamic_smem.data();
  for (unsigned i = 0; i < w->nthreads; ++i) {
    Fiber& f = w->fibers[i];
    f.state = FiberState::Ready;
    start_fiber(&f);
  }
  // The sweep order: fixed for forward and reverse, a fresh permutation per block when shuffled.
  const unsigned n = w->nthreads;
  for (unsigned i = 0; i < n; ++i) w->order[i] = L->schedule == 1 ? n - 1 - i : i;
  if (L->schedule == 2) {
    uint64_t state = L->schedule_seed ^ (linear_block * 0x9e3779b97f4a7c15ULL);
    for (unsigned i = n - 1; i > 0; --i) {  // Fisher-Yates with SplitMix64
      state += 0x9e3779b97f4a7c15ULL;
      uint64_t z = state;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      z ^= z >> 31;
      std::swap(w->order[i], w->order[z % (i + 1)]);
    }
  }
  unsigned done = 0;
  while (done < n) {
    bool progressed = false;
    for (unsigned k = 0; k < n; ++k) {
      Fiber& f = w->fibers[w->order[k]];
      if (f.state != FiberState::Ready) continue;
      progressed = true;
      resume(w, &f);
      if (w->block_failed) return false;
      if (f.state == FiberState::Done) {
        ++done;
        if (*reinterpret_cast<uint64_t*>(f.stack) != kStackCanary) {
          record_error(L, "emulated thread overflowed its 60 KiB stack in " + where_am_i());
          return false;
        }
      }
    }
    if (!progressed && done < n) {
      record_error(L, describe_deadlock(w));
      return false;
    }
  }
  return true;
}

static void worker_main(LaunchShared* L) {
  Worker w;
  w.launch = L;
  tl_worker = &w;
  unsigned char* arena = take_arena();
  if (arena == nullptr) {
    record_error(L, "could not map stack memory for the emulated threads");
    return;
  }
  w.nthreads = L->block.x * L->block.y * L->block.z;
  w.fibers.resize(w.nthreads);
  w.warps.resize((w.nthreads + 31) / 32);
  w.dynamic_smem.resize(L->dynamic_smem_bytes);
  w.order.resize(w.nthreads);
  for (unsigned i = 0; i < w.nthreads; ++i) {
    Fiber& f = w.fibers[i];
    f.stack = arena + size_t(i) * kStackBytes + kGuardBytes;  // usable stack starts above the guard
    f.linear = i;
    f.tidx = uint3{i % L->block.x, (i / L->block.x) % L->block.y, i / (L->block.x * L->block.y)};
  }
  cur_block_dim = L->block;
  cur_grid_dim = L->grid;
  const uint64_t total = uint64_t(L->grid.x) * L->grid.y * L->grid.z;
  while (!L->failed.load(std::memory_order_relaxed)) {
    uint64_t b = L->next_block.fetch_add(1);
    if (b >= total) break;
    if (!run_block(&w, b)) break;
  }
  give_arena(arena);
  std::lock_guard<std::mutex> g(L->error_lock);
  L->bytes_read += w.bytes_read;
  L->bytes_written += w.bytes_written;
  L->accesses += w.accesses;
  L->accesses16 += w.accesses16;
  tl_worker = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Barrier, shuffles and memory checks, called from inside fibers.

void syncthreads() {
  Worker* w = tl_worker;
  if (++w->barrier_arrived == w->nthreads) {
    w->barrier_arrived = 0;
    for (unsigned i = 0; i < w->nthreads; ++i)
      if (w->fibers[i].state == FiberState::AtBarrier) w->fibers[i].state = FiberState::Ready;
    return;
  }
  w->current->state = FiberState::AtBarrier;
  switch_to_scheduler(w);
}

// Joins the lane's shuffle group (creating it if needed) and waits for the whole group.
static void join_shuffle_group(unsigned mask, uint64_t bits, int src_lane, Warp** out_warp, unsigned* out_lane) {
  Worker* w = tl_worker;
  Fiber* f = w->current;
  unsigned lane = f->linear % 32;
  Warp& warp = w->warps[f->linear / 32];
  const unsigned valid = warp.lanes;
  if (!(mask & (1u << lane))) fault("warp shuffle/sync called by a lane that is not in its own mask");
  if (mask & ~valid) fault("warp shuffle/sync mask names lanes that do not exist in this warp");
  if (src_lane >= 0 && !(mask & (1u << src_lane))) fault("warp shuffle reads a lane that is not in the mask");
  int gi = -1;
  for (int i = 0; i < warp.open_groups; ++i) {
    if (warp.groups[i].mask == mask) {
      gi = i;
      break;
    }
    if (warp.groups[i].mask & mask) fault("warp shuffle/sync with a mask that overlaps another lane group's mask");
  }
  if (gi < 0) {
    gi = warp.open_groups++;
    warp.groups[gi] = ShuffleGroup{mask, 0};
  }
  ShuffleGroup& g = warp.groups[gi];
  warp.values[lane] = bits;
  warp.sources[lane] = src_lane;
  g.arrived |= 1u << lane;
  *out_warp = &warp;
  *out_lane = lane;
  if (g.arrived != g.mask) {
    f->state = FiberState::AtShuffle;
    switch_to_scheduler(w);
    return;
  }
  // Last lane in: compute every lane's result now, so later groups may reuse `values` freely,
  // and wake the others.
  Fiber* warp_fibers = &w->fibers[(f->linear / 32) * 32];
  for (unsigned rest = mask; rest != 0; rest &= rest - 1) {
    unsigned l = static_cast<unsigned>(__builtin_ctz(rest));
    int s = warp.sources[l];
    warp.results[l] = warp.values[s < 0 ? l : s];
    warp_fibers[l].state = FiberState::Ready;
  }
  f->state = FiberState::Ready;
  warp.groups[gi] = warp.groups[--warp.open_groups];
}

uint64_t shuffle_bits(unsigned mask, uint64_t bits, int src_lane) {
  Warp* warp;
  unsigned lane;
  join_shuffle_group(mask, bits, src_lane, &warp, &lane);
  return warp->results[lane];
}

void syncwarp(unsigned mask) {
  Warp* warp;
  unsigned lane;
  join_shuffle_group(mask, 0, -1, &warp, &lane);
}

void global_access(const void* ptr, size_t bytes, bool is_write) {
  Worker* w = tl_worker;
  uintptr_t a = reinterpret_cast<uintptr_t>(ptr);
  if (a % bytes != 0) fault("misaligned global memory access");
  for (const Region& r : w->launch->regions) {
    if (a >= r.begin && a + bytes <= r.end) {
      if (is_write && !r.writable) fault("global write to a read-only tensor");
      (is_write ? w->bytes_written : w->bytes_read) += bytes;
      ++w->accesses;
      if (bytes == 16) ++w->accesses16;
      return;
    }
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "global %s of %zu bytes at 0x%zx is outside every tensor of the launch",
                is_write ? "write" : "read", bytes, static_cast<size_t>(a));
  fault(buf);
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// C interface for the Rust backend (src/emulator.rs mirrors these structs).
extern "C" {

struct CsEmuRegion {
  uint64_t base;
  uint64_t bytes;
  int32_t writable;
};

struct CsEmuStats {
  uint64_t bytes_read, bytes_written, accesses, accesses16, threads;
};

}  // extern "C"


extern "C" {

size_t cs_emu_kernel_count() { return emu::registry().size(); }
const char* cs_emu_kernel_name(size_t i) { return i < emu::registry().size() ? emu::registry()[i].name : nullptr; }

// Runs one grid to completion. Returns 0 on success, 1 for an unknown kernel, 2 for a bad launch
// configuration, 3 for a fault inside the kernel; `err` then holds a message.
int cs_emu_launch(const char* name, const uint32_t grid[3], const uint32_t block[3], uint64_t dynamic_smem,
                  const void* params, uint64_t params_size, const CsEmuRegion* regions, uint64_t n_regions,
                  int32_t schedule, uint64_t schedule_seed, uint32_t workers, CsEmuStats* stats, char* err,
                  uint64_t err_len) {
  auto fail = [&](int code, const std::string& what) {
    if (err_len > 0) {
      std::snprintf(err, err_len, "%s", what.c_str());
    }
    return code;
  };
  const emu::KernelInfo* k = nullptr;
  for (const emu::KernelInfo& info : emu::registry())
    if (std::strcmp(info.name, name) == 0) k = &info;
  if (k == nullptr) return fail(1, std::string("no kernel named ") + name + " in the emulator image");
  if (k->params_size != params_size) return fail(2, "kernel parameter block has the wrong size");
  uint64_t threads = uint64_t(block[0]) * block[1] * block[2];
  if (threads == 0 || threads > emu::kMaxThreadsPerBlock) return fail(2, "block must have 1..1024 threads");
  if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535 || grid[0] > 0x7fffffffu)
    return fail(2, "grid dimensions out of range (x: 1..2^31-1, y and z: 1..65535)");

  emu::LaunchShared L;
  L.thunk = k->thunk;
  L.params = params;
  L.grid = dim3{grid[0], grid[1], grid[2]};
  L.block = dim3{block[0], block[1], block[2]};
  L.dynamic_smem_bytes = dynamic_smem;
  if (schedule < 0 || schedule > 2) return fail(2, "schedule must be 0 (forward), 1 (reverse) or 2 (shuffled)");
  L.schedule = schedule;
  L.schedule_seed = schedule_seed;
  for (uint64_t i = 0; i < n_regions; ++i)
    L.regions.push_back(emu::Region{static_cast<uintptr_t>(regions[i].base),
                                    static_cast<uintptr_t>(regions[i].base + regions[i].bytes), regions[i].writable != 0});
  uint64_t total_blocks = uint64_t(grid[0]) * grid[1] * grid[2];
  unsigned n_workers = static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(workers, total_blocks)));

  std::vector<std::thread> pool;
  for (unsigned i = 1; i < n_workers; ++i) pool.emplace_back(emu::worker_main, &L);
  emu::worker_main(&L);
  for (std::thread& t : pool) t.join();
  *stats = CsEmuStats{L.bytes_read, L.bytes_written, L.accesses, L.accesses16, 0};
  stats->threads = total_blocks * threads;
  if (L.failed.load()) return fail(3, L.error);
  return 0;
}

}  // extern "C"

// The emulator's storage-type conversions, for tests against a reference implementation.
extern "C" {
uint16_t cs_emu_f32_to_f16(float f) { return __float2half_rn(f).bits; }
float cs_emu_f16_to_f32(uint16_t h) { return __half2float(__half{h}); }
uint16_t cs_emu_f32_to_bf16(float f) { return __float2bfloat16_rn(f).bits; }
float cs_emu_bf16_to_f32(uint16_t b) { return __bfloat162float(__nv_bfloat16{b}); }
}
