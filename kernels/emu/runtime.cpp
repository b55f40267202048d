// The SIMT emulator's runtime: fibers, the per-block scheduler, barriers, warp shuffles, global
// and shared memory checks (with a shared-memory race detector), the bounded pool of fiber
// stacks, and the C entry points the Rust side calls. See emu.h.
//
// The whole file (with the kernels) may be compiled twice into one program, once with FMA
// contraction: CS_EMU_PREFIX renames the C entry points, and the build renames the C++
// namespaces, so the two flavours never share a symbol.
#include "emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cfenv>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__) || defined(CS_EMU_UCONTEXT)
#include <ucontext.h>
#endif

#ifndef CS_EMU_PREFIX
#define CS_EMU_PREFIX cs_emu_
#endif
#define CS_EMU_CAT2(a, b) a##b
#define CS_EMU_CAT(a, b) CS_EMU_CAT2(a, b)
#define CS_EMU_C(name) CS_EMU_CAT(CS_EMU_PREFIX, name)
#define CS_EMU_STR2(x) #x
#define CS_EMU_STR(x) CS_EMU_STR2(x)

namespace emu {

thread_local uint3 cur_thread_idx;
thread_local uint3 cur_block_idx;
thread_local dim3 cur_block_dim;
thread_local dim3 cur_grid_dim;
thread_local unsigned cur_linear_tid;

// ---------------------------------------------------------------------------------------------
// Kernel registry: every entry point registers itself (common.cuh's CS_ENTRY) at start-up.
using KernelThunk = void (*)(const void* params);
struct KernelInfo {
  const char* name;
  KernelThunk thunk;
  size_t params_size;
  unsigned max_threads;  // __launch_bounds__
  // Static shared memory the kernel was seen to use (a GPU knows it from ptxas; the emulator
  // learns it from the first launch and checks later launches before they start).
  std::atomic<size_t>* static_smem;
};
static std::vector<KernelInfo>& registry() {
  static std::vector<KernelInfo> kernels;
  return kernels;
}
KernelRegistrar::KernelRegistrar(const char* name, KernelThunk thunk, size_t params_size, unsigned max_threads) {
  // Runs during static initialisation: an allocation failure must not escape (the kernel is
  // then simply missing, which a launch reports).
  try {
    registry().push_back(KernelInfo{name, thunk, params_size, max_threads, new std::atomic<size_t>(0)});
  } catch (...) {
  }
}

// ---------------------------------------------------------------------------------------------
// Context switching. On x86-64 a hand-written switch saves only the callee-saved registers (far
// cheaper than swapcontext, which makes a system call each time); elsewhere, or with
// CS_EMU_UCONTEXT defined, ucontext. The switch resumes with pop + jmp rather than ret: a ret
// into another stack would mispredict in the return-stack buffer and leave it out of step for
// the fiber's next returns.
#if defined(__x86_64__) && !defined(CS_EMU_UCONTEXT)
extern "C" void CS_EMU_C(switch)(void** save_sp, void* next_sp);
#define CS_EMU_SWITCH_NAME CS_EMU_STR(CS_EMU_C(switch))
__asm__(
    ".text\n"
    ".globl " CS_EMU_SWITCH_NAME "\n"
    ".hidden " CS_EMU_SWITCH_NAME "\n"
    ".type " CS_EMU_SWITCH_NAME ",@function\n" CS_EMU_SWITCH_NAME
    ":\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  popq %rax\n"
    "  jmpq *%rax\n"
    ".size " CS_EMU_SWITCH_NAME ", .-" CS_EMU_SWITCH_NAME
    "\n"
    ".section .note.GNU-stack,\"\",@progbits\n"
    ".text\n");
#define CS_EMU_FAST_SWITCH 1
#endif

constexpr unsigned kMaxThreadsPerBlock = 1024;
// Fiber stacks. The deepest kernel frame chain measured is a few KiB; 32 KiB leaves margin.
// One guard page sits under each arena (not under each stack: a guard page per stack cost two
// memory mappings per fiber, and a process may hold only ~65k mappings); the bottom of every
// stack holds a canary zone that is checked whenever its fiber yields, so an overflow into the
// neighbouring stack is reported as a fault of the kernel that overflowed.
constexpr size_t kStackBytes = 32 * 1024;
constexpr size_t kCanaryBytes = 512;
constexpr size_t kCanaryStride = 8;  // words: one canary every 64 bytes of the zone
constexpr size_t kGuardBytes = 4096;
constexpr uint64_t kStackCanary = 0x5afe57ac6b0770aaULL;
// The process-wide limit on arenas, i.e. on OS threads running emulated blocks at once, however
// many devices, threads or cores there are. Each is one mapping of 32 MiB of address space
// (pages are only committed as stacks are used) plus one guard page.
constexpr unsigned kMaxArenas = 64;
// Largest dynamic shared memory a launch may ask for (the biggest opt-in limit of any GPU).
constexpr size_t kMaxDynamicSmem = 256 * 1024;

enum class FiberState : uint8_t { Ready, AtBarrier, AtShuffle, Done };

struct Fiber {
#ifdef CS_EMU_FAST_SWITCH
  void* sp;
#else
  ucontext_t ctx;
#endif
  unsigned char* stack;  // lowest address of this fiber's stack (its canary zone)
  uint3 tidx;
  unsigned linear;
  FiberState state;
  // How many times this thread has run each shared-memory access site in the current barrier
  // interval (runs_epoch): the k-th run of a site by every lane of a warp in one interval is one
  // warp access (see SharedAccessGroup). Counting per interval keeps lanes in step when some of
  // them ran a loop one time fewer before the barrier.
  std::unordered_map<const void*, uint32_t> site_runs;
  uint64_t runs_epoch = 0;
};

// The lanes of one warp access to shared memory: one static access site, its k-th run by each
// lane. Bank conflicts are counted when every live lane has arrived (or at the block's end).
struct SharedAccessGroup {
  unsigned mask = 0;
  uint32_t bytes = 0;
  uintptr_t address[32];
};
struct SiteRun {
  const void* site;
  uint64_t epoch;
  uint32_t run;
  bool operator==(const SiteRun& o) const { return site == o.site && epoch == o.epoch && run == o.run; }
};
struct SiteRunHash {
  size_t operator()(const SiteRun& k) const {
    return std::hash<const void*>()(k.site) ^ (size_t(k.run) * 0x9e3779b97f4a7c15ULL) ^
           (size_t(k.epoch) * 0xc2b2ae3d27d4eb4fULL);
  }
};

// An open shuffle group: the lanes named in `mask` that have arrived so far.
struct ShuffleGroup {
  unsigned mask;
  unsigned arrived;
  bool is_syncwarp;
};

struct Warp {
  uint64_t values[32];   // what each arrived lane offered
  int sources[32];       // which lane each arrived lane reads (-1: itself)
  uint64_t results[32];  // filled for the whole group when its last lane arrives
  ShuffleGroup groups[32];
  int open_groups;
  unsigned lanes;  // the lanes that exist (all 32 unless the block size is not a multiple of 32)
  // __syncwarp bookkeeping for the race detector: `syncs` counts completed __syncwarp groups;
  // full_sync is the count at the last one over every lane, pair_sync[a][b] at the last one
  // that had both lanes a and b in its mask. Two accesses of lanes a and b in one barrier
  // interval are ordered when such a __syncwarp came after the earlier one.
  uint32_t syncs;
  uint32_t full_sync;
  bool pairs_used;  // pair_sync holds values from this block (reset lazily)
  uint32_t pair_sync[32][32];
  std::unordered_map<SiteRun, SharedAccessGroup, SiteRunHash> open_accesses;
};

// What one OS thread needs to run blocks, kept in a bounded pool and reused across launches:
// fiber stacks (one mapping), the dynamic shared memory and its race-detector shadow.
struct Arena {
  unsigned char* mapping;  // guard page, then kMaxThreadsPerBlock stacks
  std::vector<unsigned char> dynamic_smem;
  std::vector<Granule> dynamic_shadow;
};

enum class FailKind : int { None = 0, Launch = 2, Fault = 3, Host = 4 };

struct LaunchShared;

// One OS thread's state while it runs blocks of a launch.
struct Worker {
  LaunchShared* launch = nullptr;
  Arena* arena = nullptr;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<unsigned> order;  // the order in which the scheduler sweeps the block's fibers
  SharedSpace dynamic_space{};
  unsigned nthreads = 0;
  unsigned barrier_arrived = 0;
  uint64_t epoch = 0;        // the current barrier interval of the running block
  uint64_t block_epoch = 0;  // the first epoch of the running block
  size_t static_smem = 0;    // static shared bytes the running block has touched
  uint32_t poison = 0;       // this block's shared-memory poison word
  Fiber* current = nullptr;
#ifdef CS_EMU_FAST_SWITCH
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler_ctx;
#endif
  bool block_failed = false;
  // Counters (summed into the launch's statistics when the worker finishes).
  uint64_t bytes_read = 0, bytes_written = 0, accesses = 0, accesses16 = 0;
  // Shared-memory wavefronts of warp accesses as the banks serve them, and the fewest the same
  // accesses could take without bank conflicts.
  uint64_t smem_wavefronts = 0, smem_wavefronts_ideal = 0;
};

static thread_local Worker* tl_worker = nullptr;

// Barrier epochs are unique across the process, so a shadow entry written by an earlier block
// (on any worker) is always older than the running block's first epoch: no per-block reset.
static std::atomic<uint64_t> g_epoch{1};
static uint64_t next_epoch() { return g_epoch.fetch_add(1, std::memory_order_relaxed) + 1; }

struct Region {
  uintptr_t begin, end;
  bool writable;
};

struct LaunchShared {
  const KernelInfo* kernel;
  const void* params;
  dim3 grid, block;
  size_t dynamic_smem_bytes;
  size_t smem_attribute;  // the function's max dynamic shared memory attribute (0: never raised)
  size_t smem_limit;      // the device's opt-in limit on static + dynamic shared memory
  std::vector<Region> regions;
  int schedule;            // 0 forward, 1 reverse, 2 shuffled (per block), 3 warp-ahead
  uint64_t schedule_seed;  // for the shuffled schedule
  std::atomic<uint64_t> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex error_lock;  // guards the error and the counters below
  FailKind fail_kind = FailKind::None;
  char error[768] = {0};
  uint64_t bytes_read = 0, bytes_written = 0, accesses = 0, accesses16 = 0;
  uint64_t smem_wavefronts = 0, smem_wavefronts_ideal = 0;
};

// Never allocates, never throws: it may run on a fiber stack or after an allocation failed.
static void record_error(LaunchShared* launch, FailKind kind, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void record_error(LaunchShared* launch, FailKind kind, const char* fmt, ...) {
  std::lock_guard<std::mutex> g(launch->error_lock);
  if (launch->fail_kind == FailKind::None) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(launch->error, sizeof launch->error, fmt, ap);
    va_end(ap);
    launch->fail_kind = kind;
  }
  launch->failed.store(true);
}

// ---------------------------------------------------------------------------------------------
// The arena pool: at most kMaxArenas exist at once in the process. A launch's own thread waits
// for one (launches only ever wait while holding none, so this cannot deadlock); extra workers
// take one only if one is free, so a busy process runs launches with fewer workers instead of
// mapping more memory.
class ArenaPool {
 public:
  // Returns an arena, or nullptr with `why` filled when none can be had (never when `wait` and
  // arenas exist: it then waits for one to be returned).
  Arena* acquire(bool wait, char* why, size_t why_len) {
    std::unique_lock<std::mutex> lk(lock_);
    bool creation_failed = false;
    for (;;) {
      if (!free_.empty()) {
        Arena* a = free_.back();
        free_.pop_back();
        return a;
      }
      if (created_ < kMaxArenas && !creation_failed) {
        ++created_;
        lk.unlock();
        Arena* a = create(why, why_len);
        if (a != nullptr) return a;
        lk.lock();
        --created_;
        // The host is short of memory: use an existing arena when one comes back (one may have
        // come back while the lock was free: the loop looks again before waiting).
        creation_failed = true;
        if (!wait || created_ == 0) return nullptr;
        continue;
      }
      if (!wait) {
        std::snprintf(why, why_len, "all %u emulator worker arenas are busy", kMaxArenas);
        return nullptr;
      }
      returned_.wait(lk, [this] { return !free_.empty(); });
    }
  }

  void release(Arena* a) {
    {
      std::lock_guard<std::mutex> g(lock_);
      free_.push_back(a);  // capacity reserved in create(): cannot throw
    }
    returned_.notify_one();
  }

 private:
  Arena* create(char* why, size_t why_len) {
    try {
      {
        std::lock_guard<std::mutex> g(lock_);
        free_.reserve(kMaxArenas);
      }
      const size_t bytes = kGuardBytes + kStackBytes * kMaxThreadsPerBlock;
      void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) {
        std::snprintf(why, why_len, "could not map %zu bytes for emulated thread stacks: %s", bytes,
                      std::strerror(errno));
        return nullptr;
      }
      if (mprotect(p, kGuardBytes, PROT_NONE) != 0) {
        std::snprintf(why, why_len, "could not protect the stack guard page: %s", std::strerror(errno));
        munmap(p, bytes);
        return nullptr;
      }
      Arena* a = new Arena;
      a->mapping = static_cast<unsigned char*>(p);
      return a;
    } catch (...) {
      std::snprintf(why, why_len, "out of host memory for an emulator worker");
      return nullptr;
    }
  }

  std::mutex lock_;
  std::condition_variable returned_;
  std::vector<Arena*> free_;
  unsigned created_ = 0;
};

static ArenaPool& arena_pool() {
  static ArenaPool pool;
  return pool;
}

// Returns its arena to the pool when it goes out of scope, whatever happens meanwhile.
class ArenaLease {
 public:
  explicit ArenaLease(Arena* a) : arena_(a) {}
  ~ArenaLease() {
    if (arena_ != nullptr) arena_pool().release(arena_);
  }
  ArenaLease(const ArenaLease&) = delete;
  ArenaLease& operator=(const ArenaLease&) = delete;
  Arena* get() const { return arena_; }

 private:
  Arena* arena_;
};

static void where_am_i(char* buf, size_t len) {
  std::snprintf(buf, len, "block (%u,%u,%u) thread (%u,%u,%u)", cur_block_idx.x, cur_block_idx.y, cur_block_idx.z,
                cur_thread_idx.x, cur_thread_idx.y, cur_thread_idx.z);
}

static void switch_to_scheduler(Worker* w) {
  Fiber* f = w->current;
#ifdef CS_EMU_FAST_SWITCH
  CS_EMU_C(switch)(&f->sp, w->scheduler_sp);
#else
  swapcontext(&f->ctx, &w->scheduler_ctx);
#endif
}

static void fault_kind(FailKind kind, const char* what) {
  Worker* w = tl_worker;
  char where[128];
  where_am_i(where, sizeof where);
  record_error(w->launch, kind, "%s (at %s)", what, where);
  w->block_failed = true;
  w->current->state = FiberState::Done;
  switch_to_scheduler(w);
  __builtin_unreachable();  // the scheduler never resumes a failed block
}

[[noreturn]] void fault(const char* what) {
  fault_kind(FailKind::Fault, what);
  __builtin_unreachable();
}

static void fiber_main() {
  Worker* w = tl_worker;
  w->launch->kernel->thunk(w->launch->params);
  w->current->state = FiberState::Done;
  switch_to_scheduler(w);
  __builtin_unreachable();
}

#ifndef CS_EMU_FAST_SWITCH
static void fiber_main_ucontext() { fiber_main(); }
#endif

static bool canary_intact(const Fiber& f) {
  const uint64_t* c = reinterpret_cast<const uint64_t*>(f.stack);
  for (size_t i = 0; i < kCanaryBytes / 8; i += kCanaryStride)
    if (c[i] != kStackCanary) return false;
  return true;
}

// Where the fiber yielded, its stack pointer must be above its canary zone.
static bool stack_pointer_in_bounds(const Fiber& f) {
#ifdef CS_EMU_FAST_SWITCH
  return f.state == FiberState::Done || static_cast<unsigned char*>(f.sp) >= f.stack + kCanaryBytes;
#else
  (void)f;
  return true;
#endif
}

static void start_fiber(Fiber* f) {
  uint64_t* c = reinterpret_cast<uint64_t*>(f->stack);
  for (size_t i = 0; i < kCanaryBytes / 8; i += kCanaryStride) c[i] = kStackCanary;
#ifdef CS_EMU_FAST_SWITCH
  // Lay out the frame the switch pops: six callee-saved registers, then the return address
  // (fiber_main), above it a dummy return address so fiber_main sees an ABI-aligned stack.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f->stack) + kStackBytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--sp = nullptr;
  f->sp = sp;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = f->stack;
  f->ctx.uc_stack.ss_size = kStackBytes;
  f->ctx.uc_link = nullptr;
  makecontext(&f->ctx, fiber_main_ucontext, 0);
#endif
}

static void resume(Worker* w, Fiber* f) {
  w->current = f;
  cur_thread_idx = f->tidx;
  cur_linear_tid = f->linear;
#ifdef CS_EMU_FAST_SWITCH
  CS_EMU_C(switch)(&w->scheduler_sp, f->sp);
#else
  swapcontext(&w->scheduler_ctx, &f->ctx);
#endif
}

// Explains why no fiber of the block can move: the caller knows the block is stuck.
static void describe_deadlock(Worker* w) {
  unsigned at_barrier = 0, at_shuffle = 0, done = 0;
  for (unsigned i = 0; i < w->nthreads; ++i) {
    switch (w->fibers[i].state) {
      case FiberState::AtBarrier: ++at_barrier; break;
      case FiberState::AtShuffle: ++at_shuffle; break;
      case FiberState::Done: ++done; break;
      default: break;
    }
  }
  if (at_barrier > 0) {
    record_error(w->launch, FailKind::Fault,
                 "__syncthreads() not reached by every thread of block (%u,%u,%u): %u waiting at the barrier, "
                 "%u exited, %u waiting in a warp shuffle",
                 cur_block_idx.x, cur_block_idx.y, cur_block_idx.z, at_barrier, done, at_shuffle);
    return;
  }
  for (unsigned wi = 0; wi < w->warps.size(); ++wi) {
    Warp& warp = w->warps[wi];
    if (warp.open_groups > 0) {
      record_error(w->launch, FailKind::Fault,
                   "warp shuffle not reached by every lane in its mask: block (%u,%u,%u) warp %u mask 0x%08x, "
                   "lanes arrived 0x%08x",
                   cur_block_idx.x, cur_block_idx.y, cur_block_idx.z, wi, warp.groups[0].mask,
                   warp.groups[0].arrived);
      return;
    }
  }
  record_error(w->launch, FailKind::Fault, "block (%u,%u,%u) made no progress", cur_block_idx.x, cur_block_idx.y,
               cur_block_idx.z);
}

static uint64_t splitmix(uint64_t* state) {
  *state += 0x9e3779b97f4a7c15ULL;
  uint64_t z = *state;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The shared-memory poison of one block: all-ones (NaN) in the forward schedule, the others in
// the other schedules (the shuffled one varies it per block), so that a consumer blind to one
// poison (fmaxf ignores NaN) sees another.
static uint32_t poison_word(const LaunchShared* L, uint64_t linear_block) {
  static const uint32_t kPoisons[4] = {0xffffffffu /* NaN */, 0xff800000u /* -inf */, 0x7f800000u /* +inf */,
                                       0x7f7fffffu /* largest finite float */};
  switch (L->schedule) {
    case 0: return kPoisons[0];
    case 1: return kPoisons[1];
    case 3: return kPoisons[2];
    default: {
      uint64_t state = L->schedule_seed ^ (linear_block * 0xd1b54a32d192ed03ULL);
      return kPoisons[splitmix(&state) % 4];
    }
  }
}

static void fill_poison(unsigned char* p, size_t bytes, uint32_t word) {
  size_t i = 0;
  for (; i + 4 <= bytes; i += 4) std::memcpy(p + i, &word, 4);
  for (; i < bytes; ++i) p[i] = static_cast<unsigned char>(word >> (8 * (i % 4)));
}

// Runs fibers until none is ready. With `warp` >= 0, only that warp's lanes.
static bool sweep(Worker* w, int warp, unsigned* done) {
  const unsigned n = w->nthreads;
  bool any = false;
  for (bool progressed = true; progressed;) {
    progressed = false;
    for (unsigned k = 0; k < n; ++k) {
      const unsigned t = w->order[k];
      if (warp >= 0 && t / 32 != static_cast<unsigned>(warp)) continue;
      Fiber& f = w->fibers[t];
      if (f.state != FiberState::Ready) continue;
      progressed = any = true;
      resume(w, &f);
      if (w->block_failed) return any;
      if (!stack_pointer_in_bounds(f) || !canary_intact(f)) {
        char where[128];
        where_am_i(where, sizeof where);
        record_error(w->launch, FailKind::Fault, "emulated thread overflowed its %zu KiB stack (at %s)",
                     kStackBytes / 1024, where);
        w->block_failed = true;
        return any;
      }
      if (f.state == FiberState::Done) ++*done;
    }
    // Forward, reverse and shuffled sweeps give each ready fiber one turn, then look again; the
    // warp-ahead schedule keeps running its one warp until all its lanes block.
    if (warp < 0) break;
  }
  return any;
}

static void flush_warp_accesses(Worker* w);

static bool run_block(Worker* w, uint64_t linear_block) {
  LaunchShared* L = w->launch;
  cur_block_idx = uint3{static_cast<unsigned>(linear_block % L->grid.x),
                        static_cast<unsigned>((linear_block / L->grid.x) % L->grid.y),
                        static_cast<unsigned>(linear_block / (uint64_t(L->grid.x) * L->grid.y))};
  w->barrier_arrived = 0;
  w->block_failed = false;
  w->block_epoch = w->epoch = next_epoch();
  w->static_smem = 0;
  w->poison = poison_word(L, linear_block);
  for (unsigned i = 0; i < w->warps.size(); ++i) {
    unsigned count = std::min(32u, w->nthreads - 32 * i);
    w->warps[i].open_groups = 0;
    w->warps[i].syncs = 0;
    w->warps[i].full_sync = 0;
    if (w->warps[i].pairs_used) {
      std::memset(w->warps[i].pair_sync, 0, sizeof w->warps[i].pair_sync);
      w->warps[i].pairs_used = false;
    }
    w->warps[i].lanes = count == 32 ? 0xffffffffu : ((1u << count) - 1);
    w->warps[i].open_accesses.clear();
  }
  // Poison dynamic shared memory so that what no thread wrote can never pass for a value (the
  // race detector also faults on such a read).
  fill_poison(w->dynamic_space.data, w->dynamic_space.bytes, w->poison);
  for (unsigned i = 0; i < w->nthreads; ++i) {
    Fiber& f = w->fibers[i];
    f.state = FiberState::Ready;
    f.site_runs.clear();
    f.runs_epoch = 0;
    start_fiber(&f);
  }
  // The sweep order: fixed for forward, reverse and warp-ahead, a fresh permutation per block
  // when shuffled.
  const unsigned n = w->nthreads;
  for (unsigned i = 0; i < n; ++i) w->order[i] = L->schedule == 1 ? n - 1 - i : i;
  if (L->schedule == 2) {
    uint64_t state = L->schedule_seed ^ (linear_block * 0x9e3779b97f4a7c15ULL);
    for (unsigned i = n - 1; i > 0; --i) std::swap(w->order[i], w->order[splitmix(&state) % (i + 1)]);
  }
  unsigned done = 0;
  const int nwarps = static_cast<int>(w->warps.size());
  while (done < n) {
    bool progressed = false;
    if (L->schedule == 3) {
      // Warp-ahead: the last warp first, each running until all its lanes wait or exit.
      for (int wi = nwarps - 1; wi >= 0 && !w->block_failed; --wi) progressed |= sweep(w, wi, &done);
    } else {
      progressed = sweep(w, -1, &done);
    }
    if (w->block_failed) return false;
    if (!progressed && done < n) {
      describe_deadlock(w);
      return false;
    }
  }
  flush_warp_accesses(w);
  return true;
}

// Runs blocks of the launch until none is left (or one failed), on `arena`.
static void worker_main(LaunchShared* L, Arena* arena) noexcept {
  // Emulated threads compute as a GPU does whatever the caller set: round to nearest, no
  // flush-to-zero, no trapping exceptions.
  std::fenv_t saved_env;
  std::fegetenv(&saved_env);
  std::fesetenv(FE_DFL_ENV);
  try {
    Worker w;
    w.launch = L;
    w.arena = arena;
    tl_worker = &w;
    w.nthreads = L->block.x * L->block.y * L->block.z;
    w.fibers.resize(w.nthreads);
    w.warps.resize((w.nthreads + 31) / 32);
    w.order.resize(w.nthreads);
    // The dynamic shadow only grows; its entries stay valid across launches (epochs are unique).
    const size_t granules = (L->dynamic_smem_bytes + 1) / 2;
    if (arena->dynamic_shadow.size() < granules) arena->dynamic_shadow.resize(granules, Granule{});
    if (arena->dynamic_smem.size() < L->dynamic_smem_bytes + 16) arena->dynamic_smem.resize(L->dynamic_smem_bytes + 16);
    // 16-byte aligned, like the GPU's dynamic segment.
    uintptr_t base = (reinterpret_cast<uintptr_t>(arena->dynamic_smem.data()) + 15) & ~uintptr_t(15);
    w.dynamic_space = SharedSpace{reinterpret_cast<unsigned char*>(base), L->dynamic_smem_bytes,
                                  arena->dynamic_shadow.data(), 1, false};
    unsigned char* stacks = arena->mapping + kGuardBytes;
    for (unsigned i = 0; i < w.nthreads; ++i) {
      Fiber& f = w.fibers[i];
      f.stack = stacks + size_t(i) * kStackBytes;
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
    std::lock_guard<std::mutex> g(L->error_lock);
    L->bytes_read += w.bytes_read;
    L->bytes_written += w.bytes_written;
    L->accesses += w.accesses;
    L->accesses16 += w.accesses16;
    L->smem_wavefronts += w.smem_wavefronts;
    L->smem_wavefronts_ideal += w.smem_wavefronts_ideal;
  } catch (const std::bad_alloc&) {
    record_error(L, FailKind::Host, "out of host memory for an emulator worker");
  } catch (...) {
    record_error(L, FailKind::Host, "an emulator worker failed on the host");
  }
  tl_worker = nullptr;
  std::fesetenv(&saved_env);
}

// ---------------------------------------------------------------------------------------------
// Barrier, shuffles and memory checks, called from inside fibers.

void syncthreads() {
  Worker* w = tl_worker;
  if (++w->barrier_arrived == w->nthreads) {
    w->barrier_arrived = 0;
    w->epoch = next_epoch();  // accesses after the barrier are ordered after those before it
    for (unsigned i = 0; i < w->nthreads; ++i)
      if (w->fibers[i].state == FiberState::AtBarrier) w->fibers[i].state = FiberState::Ready;
    return;
  }
  w->current->state = FiberState::AtBarrier;
  switch_to_scheduler(w);
}

// Joins the lane's shuffle group (creating it if needed) and waits for the whole group.
static void join_shuffle_group(unsigned mask, uint64_t bits, int src_lane, bool is_syncwarp, Warp** out_warp,
                               unsigned* out_lane) {
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
      if (warp.groups[i].is_syncwarp != is_syncwarp) fault("lanes of one mask meet in a shuffle and a __syncwarp");
      gi = i;
      break;
    }
    if (warp.groups[i].mask & mask) fault("warp shuffle/sync with a mask that overlaps another lane group's mask");
  }
  if (gi < 0) {
    gi = warp.open_groups++;
    warp.groups[gi] = ShuffleGroup{mask, 0, is_syncwarp};
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
    warp.results[l] = warp.values[s < 0 ? l : static_cast<unsigned>(s)];
    warp_fibers[l].state = FiberState::Ready;
  }
  if (is_syncwarp) {
    const uint32_t id = ++warp.syncs;
    if (mask == warp.lanes) {
      warp.full_sync = id;
    } else {
      warp.pairs_used = true;
      for (unsigned a = mask; a != 0; a &= a - 1)
        for (unsigned b = mask; b != 0; b &= b - 1)
          warp.pair_sync[__builtin_ctz(a)][__builtin_ctz(b)] = id;
    }
  }
  f->state = FiberState::Ready;
  warp.groups[gi] = warp.groups[--warp.open_groups];
}

uint64_t shuffle_bits(unsigned mask, uint64_t bits, int src_lane) {
  Warp* warp;
  unsigned lane;
  join_shuffle_group(mask, bits, src_lane, false, &warp, &lane);
  return warp->results[lane];
}

void syncwarp(unsigned mask) {
  Warp* warp;
  unsigned lane;
  join_shuffle_group(mask, 0, -1, true, &warp, &lane);
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

// ---- Shared memory checks and the race detector.

SharedSpace* dynamic_shared_space() { return &tl_worker->dynamic_space; }

// The GPU's shared-memory rules for a launch: without a raised attribute a block may use 48 KiB
// of static + dynamic shared memory; with the attribute raised to A, dynamic <= A and
// static + A <= the device's opt-in limit (cuFuncSetAttribute refuses more). Writes why not.
constexpr size_t kDefaultSmemLimit = 48 * 1024;
static bool smem_fits(const LaunchShared* L, size_t static_bytes, char* why, size_t why_len) {
  const size_t dyn = L->dynamic_smem_bytes;
  if (L->smem_attribute == 0) {
    if (static_bytes + dyn <= kDefaultSmemLimit) return true;
    std::snprintf(why, why_len,
                  "too many resources requested for launch: %zu bytes of static plus %zu bytes of dynamic shared "
                  "memory exceed the default 48 KiB, and the kernel's max dynamic shared memory attribute was not "
                  "raised",
                  static_bytes, dyn);
    return false;
  }
  if (dyn > L->smem_attribute) {
    std::snprintf(why, why_len,
                  "too many resources requested for launch: %zu bytes of dynamic shared memory exceed the kernel's "
                  "max dynamic shared memory attribute (%zu bytes)",
                  dyn, L->smem_attribute);
    return false;
  }
  if (static_bytes + L->smem_attribute > L->smem_limit) {
    std::snprintf(why, why_len,
                  "too many resources requested for launch: %zu bytes of static plus %zu bytes of dynamic shared "
                  "memory (the raised attribute) exceed the %zu bytes a block may use",
                  static_bytes, L->smem_attribute, L->smem_limit);
    return false;
  }
  return true;
}

void* allocate_static_shared(size_t bytes) {
  const size_t rounded = (bytes + 15) & ~size_t(15);
  void* storage = std::aligned_alloc(16, rounded);
  if (storage == nullptr) fault_kind(FailKind::Host, "the emulator ran out of host memory for a static __shared__ array");
  std::memset(storage, 0, rounded);
  return storage;
}

void free_static_shared(void* storage) { std::free(storage); }

bool enter_static_shared(uint64_t* block_serial, unsigned char* data, size_t bytes) {
  Worker* w = tl_worker;
  if (*block_serial == w->block_epoch) return false;
  *block_serial = w->block_epoch;
  w->static_smem += bytes;
  LaunchShared* L = w->launch;
  // Remember the kernel's static footprint, so that later launches are checked up front.
  std::atomic<size_t>& seen = *L->kernel->static_smem;
  size_t prev = seen.load(std::memory_order_relaxed);
  while (w->static_smem > prev && !seen.compare_exchange_weak(prev, w->static_smem)) {
  }
  char why[320];
  if (!smem_fits(L, w->static_smem, why, sizeof why)) fault_kind(FailKind::Launch, why);
  fill_poison(data, bytes, w->poison);
  return true;
}

static const char* space_name(const SharedSpace* s) {
  return s->is_static ? "a static __shared__ array" : "dynamic shared memory";
}

constexpr unsigned kSeveralThreads = ~0u;  // for shared_fault: threads of several warps

// `other`: the thread whose access conflicts (kSeveralThreads: readers in several warps).
[[noreturn]] static void shared_fault(const SharedSpace* s, const char* what, long long offset, size_t bytes,
                                      unsigned other) {
  const Worker* w = tl_worker;
  const dim3 b = w->launch->block;
  char who[64];
  if (other == kSeveralThreads)
    std::snprintf(who, sizeof who, "threads of several warps");
  else
    std::snprintf(who, sizeof who, "thread (%u,%u,%u)", other % b.x, (other / b.x) % b.y, other / (b.x * b.y));
  char buf[320];
  std::snprintf(buf, sizeof buf, "%s: %zu bytes at byte offset %lld of %s (%zu bytes); other access by %s", what,
                bytes, offset, space_name(s), s->bytes, who);
  fault(buf);
}

uint64_t current_epoch() { return tl_worker->epoch; }

[[noreturn]] void stale_shared_reference() {
  fault(
      "a shared-memory reference made before a barrier was used after it (auto v = smem[i]; "
      "__syncthreads(); use(v)): on a GPU the read happens where v is made; copy the value instead");
}

// The last __syncwarp that had both lanes a and b of warp `warp` in its mask.
static uint32_t last_common_sync(const Warp& warp, unsigned a, unsigned b) {
  return std::max(warp.full_sync, warp.pair_sync[a][b]);
}

// An earlier access by `earlier_thread` (its warp's __syncwarp count then: `earlier_sync`) and
// one by the calling thread in the same barrier interval are ordered only when both are lanes of
// one warp and a __syncwarp over both came after the earlier access.
static bool ordered_by_syncwarp(const Worker* w, unsigned earlier_thread, uint32_t earlier_sync) {
  const unsigned me = w->current->linear;
  if (earlier_thread / 32 != me / 32) return false;
  return last_common_sync(w->warps[me / 32], earlier_thread % 32, me % 32) > earlier_sync;
}

// Every lane of `lanes` (other than the caller) read before a __syncwarp over it and the caller.
static bool reads_ordered_by_syncwarp(const Worker* w, unsigned lanes, uint32_t read_sync) {
  const unsigned me = w->current->linear;
  const Warp& warp = w->warps[me / 32];
  for (unsigned rest = lanes & ~(1u << (me % 32)); rest != 0; rest &= rest - 1)
    if (last_common_sync(warp, static_cast<unsigned>(__builtin_ctz(rest)), me % 32) <= read_sync) return false;
  return true;
}

// Bank conflicts of one warp access, as the hardware serves shared memory: 32 banks of 4-byte
// words; an access of 4 bytes or less per lane in one pass over the warp, of 8 bytes in two
// (half-warps), of 16 bytes in four (quarter-warps). In each pass, lanes reading the same word
// share it; distinct words in one bank take one wavefront each. Ideal: the distinct words of the
// pass over 32, rounded up.
static void count_wavefronts(Worker* w, const SharedAccessGroup& g) {
  const unsigned per_pass = g.bytes >= 16 ? 8 : g.bytes == 8 ? 16 : 32;
  const unsigned words_per_lane = g.bytes >= 4 ? g.bytes / 4 : 1;
  for (unsigned first = 0; first < 32; first += per_pass) {
    uintptr_t words[32 * 4];
    unsigned n = 0;
    for (unsigned lane = first; lane < first + per_pass; ++lane) {
      if (!(g.mask & (1u << lane))) continue;
      for (unsigned k = 0; k < words_per_lane; ++k) words[n++] = g.address[lane] / 4 + k;
    }
    if (n == 0) continue;
    std::sort(words, words + n);
    n = static_cast<unsigned>(std::unique(words, words + n) - words);
    unsigned per_bank[32] = {0};
    unsigned worst = 0;
    for (unsigned i = 0; i < n; ++i) worst = std::max(worst, ++per_bank[words[i] % 32]);
    w->smem_wavefronts += worst;
    w->smem_wavefronts_ideal += (n + 31) / 32;
  }
}

// Adds the calling lane's access at `site` to its warp access; counts it once every live lane of
// the warp has made it.
static void record_warp_access(Worker* w, const void* site, const unsigned char* address, size_t bytes) {
  Fiber* f = w->current;
  Warp& warp = w->warps[f->linear / 32];
  if (f->runs_epoch != w->epoch) {
    f->site_runs.clear();
    f->runs_epoch = w->epoch;
  }
  const SiteRun key{site, w->epoch, f->site_runs[site]++};
  SharedAccessGroup& g = warp.open_accesses[key];
  g.mask |= 1u << (f->linear % 32);
  g.bytes = static_cast<uint32_t>(bytes);
  g.address[f->linear % 32] = reinterpret_cast<uintptr_t>(address);
  if (g.mask == warp.lanes) {
    count_wavefronts(w, g);
    warp.open_accesses.erase(key);
  }
}

// At a block's end: the accesses some lanes never made (divergent code) are counted as they are.
static void flush_warp_accesses(Worker* w) {
  for (Warp& warp : w->warps) {
    for (const auto& entry : warp.open_accesses) count_wavefronts(w, entry.second);
    warp.open_accesses.clear();
  }
}

__attribute__((noinline)) void shared_access(SharedSpace* s, long long offset, size_t bytes, size_t align,
                                             bool is_write) {
  Worker* w = tl_worker;
  if (offset < 0 || static_cast<size_t>(offset) + bytes > s->bytes) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "shared memory %s of %zu bytes at byte offset %lld is outside %s of %zu bytes",
                  is_write ? "write" : "read", bytes, offset, space_name(s), s->bytes);
    fault(buf);
  }
  if (offset % static_cast<long long>(align) != 0) fault("misaligned shared memory access");
  record_warp_access(w, __builtin_return_address(0), s->data + offset, bytes);
  const unsigned me = w->current->linear;
  const uint16_t my_warp = static_cast<uint16_t>(me / 32);
  const uint32_t my_lane_bit = 1u << (me % 32);
  const uint32_t my_sync = w->warps[my_warp].syncs;
  const uint64_t epoch = w->epoch;
  const unsigned shift = s->granule_shift;
  Granule* g = s->shadow + (static_cast<size_t>(offset) >> shift);
  Granule* end = s->shadow + ((static_cast<size_t>(offset) + bytes + (1u << shift) - 1) >> shift);
  for (; g != end; ++g) {
    if (is_write) {
      if (g->write_epoch == epoch && g->writer != me && !ordered_by_syncwarp(w, g->writer, g->write_sync))
        shared_fault(s, "shared-memory race (write after another thread's write, no barrier between)", offset,
                     bytes, g->writer);
      if (g->read_epoch == epoch) {
        const bool only_me = g->read_warp == my_warp && (g->read_lanes & ~my_lane_bit) == 0;
        if (!only_me && (g->read_warp != my_warp || !reads_ordered_by_syncwarp(w, g->read_lanes, g->read_sync))) {
          const unsigned other_lanes = g->read_warp == my_warp ? (g->read_lanes & ~my_lane_bit) : g->read_lanes;
          const unsigned other = g->read_warp == kManyWarps
                                     ? kSeveralThreads
                                     : g->read_warp * 32u + static_cast<unsigned>(__builtin_ctz(other_lanes));
          shared_fault(s, "shared-memory race (write after another thread's read, no barrier between)", offset, bytes,
                       other);
        }
      }
      g->write_epoch = epoch;
      g->writer = static_cast<uint16_t>(me);
      g->write_sync = my_sync;
    } else {
      if (g->write_epoch < w->block_epoch)
        shared_fault(s, "read of shared memory that no thread of this block has written", offset, bytes, me);
      if (g->write_epoch == epoch && g->writer != me && !ordered_by_syncwarp(w, g->writer, g->write_sync))
        shared_fault(s, "shared-memory race (read after another thread's write, no barrier between)", offset, bytes,
                     g->writer);
      if (g->read_epoch != epoch) {
        g->read_epoch = epoch;
        g->read_warp = my_warp;
        g->read_lanes = my_lane_bit;
      } else if (g->read_warp == my_warp) {
        g->read_lanes |= my_lane_bit;
      } else {
        g->read_warp = kManyWarps;
      }
      g->read_sync = my_sync;  // the latest read of the warp (syncs only grow within a block)
    }
  }
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// C interface for the Rust backend (src/runtime/emulator.rs mirrors these structs).
extern "C" {

struct CsEmuRegion {
  uint64_t base;
  uint64_t bytes;
  int32_t writable;
};

struct CsEmuStats {
  uint64_t bytes_read, bytes_written, accesses, accesses16, threads;
  uint64_t smem_wavefronts, smem_wavefronts_ideal;
};

struct CsEmuLaunch {
  const char* name;
  uint32_t grid[3];
  uint32_t block[3];
  uint64_t dynamic_smem;
  uint64_t smem_attribute;  // the kernel's max dynamic shared memory attribute (0: never raised)
  uint64_t smem_limit;      // static + dynamic shared memory a block may use (the device's limit)
  const void* params;
  uint64_t params_size;
  const CsEmuRegion* regions;
  uint64_t n_regions;
  int32_t schedule;
  uint64_t schedule_seed;
  uint32_t workers;
  uint64_t first_block;  // a test hook: blocks with a smaller linear index are not run
};

size_t CS_EMU_C(kernel_count)() { return emu::registry().size(); }
const char* CS_EMU_C(kernel_name)(size_t i) { return i < emu::registry().size() ? emu::registry()[i].name : nullptr; }

// Runs one grid to completion. Returns 0 on success, 1 for an unknown kernel, 2 for a launch a
// GPU would refuse, 3 for a fault inside the kernel, 4 when the host could not provide the
// resources (memory, threads); `err` then holds a message. Never throws.
int CS_EMU_C(launch)(const CsEmuLaunch* in, CsEmuStats* stats, char* err, uint64_t err_len) noexcept {
  auto fail = [&](int code, const char* fmt, auto... args) {
    if (err_len > 0) std::snprintf(err, err_len, fmt, args...);
    return code;
  };
  if (err_len > 0) err[0] = 0;
  const emu::KernelInfo* k = nullptr;
  for (const emu::KernelInfo& info : emu::registry())
    if (std::strcmp(info.name, in->name) == 0) k = &info;
  if (k == nullptr) return fail(1, "no kernel named %s in the emulator image", in->name);
  // Each op's kernels take its own parameter block: the host must pass exactly that one (a
  // block of another op's layout would be read as the wrong fields on a GPU).
  if (in->params_size != k->params_size)
    return fail(2, "kernel parameter block of %llu bytes, but %s declares %llu", (unsigned long long)in->params_size,
                in->name, (unsigned long long)k->params_size);
  const uint64_t threads = uint64_t(in->block[0]) * in->block[1] * in->block[2];
  if (threads == 0 || threads > emu::kMaxThreadsPerBlock) return fail(2, "%s", "block must have 1..1024 threads");
  if (threads > k->max_threads)
    return fail(2,
                "too many resources requested for launch: %llu threads per block, but the kernel is compiled with "
                "__launch_bounds__(%u) (a GPU refuses this launch)",
                static_cast<unsigned long long>(threads), k->max_threads);
  const uint32_t* grid = in->grid;
  if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535 || grid[0] > 0x7fffffffu)
    return fail(2, "%s", "grid dimensions out of range (x: 1..2^31-1, y and z: 1..65535)");
  if (in->schedule < 0 || in->schedule > 3)
    return fail(2, "%s", "schedule must be 0 (forward), 1 (reverse), 2 (shuffled) or 3 (warp-ahead)");
  if (in->dynamic_smem > emu::kMaxDynamicSmem)
    return fail(2, "too many resources requested for launch: %llu bytes of dynamic shared memory",
                static_cast<unsigned long long>(in->dynamic_smem));

  try {
    emu::LaunchShared L;
    L.kernel = k;
    L.params = in->params;
    L.grid = dim3{grid[0], grid[1], grid[2]};
    L.block = dim3{in->block[0], in->block[1], in->block[2]};
    L.dynamic_smem_bytes = in->dynamic_smem;
    L.smem_attribute = in->smem_attribute;
    L.smem_limit = in->smem_limit;
    // The kernel's static footprint, once a launch has seen it, is checked before anything runs.
    char why[320] = {0};
    if (!emu::smem_fits(&L, k->static_smem->load(), why, sizeof why)) return fail(2, "%s", why);
    L.schedule = in->schedule;
    L.schedule_seed = in->schedule_seed;
    L.next_block.store(in->first_block);
    for (uint64_t i = 0; i < in->n_regions; ++i) {
      const CsEmuRegion& r = in->regions[i];
      L.regions.push_back(emu::Region{static_cast<uintptr_t>(r.base), static_cast<uintptr_t>(r.base + r.bytes),
                                      r.writable != 0});
    }
    const uint64_t total_blocks = uint64_t(grid[0]) * grid[1] * grid[2];
    const unsigned wanted = static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(in->workers, total_blocks)));

    emu::ArenaPool& pool = emu::arena_pool();
    std::vector<std::thread> helpers;
    helpers.reserve(wanted - 1);  // before any arena is taken: nothing to give back if it throws
    emu::ArenaLease own(pool.acquire(true, why, sizeof why));
    if (own.get() == nullptr) return fail(4, "the emulator could not get host resources: %s", why);
    // Helper workers: as many as asked for and available; fewer (down to none) when arenas or
    // threads run short, which only makes the launch slower.
    for (unsigned i = 1; i < wanted; ++i) {
      emu::Arena* a = pool.acquire(false, why, sizeof why);
      if (a == nullptr) break;
      try {
        helpers.emplace_back([&L, a] {
          emu::ArenaLease lease(a);
          emu::worker_main(&L, a);
        });
      } catch (...) {
        pool.release(a);
        break;
      }
    }
    emu::worker_main(&L, own.get());
    for (std::thread& t : helpers) t.join();
    *stats = CsEmuStats{L.bytes_read,      L.bytes_written, L.accesses,
                        L.accesses16,      total_blocks * threads, L.smem_wavefronts,
                        L.smem_wavefronts_ideal};
    if (L.failed.load()) return fail(static_cast<int>(L.fail_kind), "%s", L.error);
    return 0;
  } catch (const std::bad_alloc&) {
    return fail(4, "%s", "the emulator ran out of host memory");
  } catch (...) {
    return fail(4, "%s", "the emulator failed on the host");
  }
}

// The emulator's storage-type conversions, for tests against a reference implementation.
uint16_t CS_EMU_C(f32_to_f16)(float f) { return __float2half_rn(f).bits; }
float CS_EMU_C(f16_to_f32)(uint16_t h) { return __half2float(__half{h}); }
uint16_t CS_EMU_C(f32_to_bf16)(float f) { return __float2bfloat16_rn(f).bits; }
float CS_EMU_C(bf16_to_f32)(uint16_t b) { return __bfloat162float(__nv_bfloat16{b}); }

}  // extern "C"
