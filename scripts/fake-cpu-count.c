// LD_PRELOAD shim: makes a process believe it may run on CS_FAKE_CPUS CPUs, so that Rust's
// std::thread::available_parallelism() (and with it libtest's thread count and the emulator's
// default worker count) reports that number on a machine with fewer (or more) cores.
// Used through scripts/fake-cpu-count.sh.
//
// available_parallelism() on Linux is min(CPUs in sched_getaffinity's mask, cgroup CPU quota),
// so the shim covers both:
// - sched_getaffinity() reports CPUs 0..N-1 (for any pid);
// - opening /proc/self/cgroup fails with ENOENT, so that std finds no cgroup and assumes no
//   quota (it reads /proc/self/cgroup, then cpu.max or cpu.cfs_quota_us of that cgroup).
// Without CS_FAKE_CPUS (or with a value that is not a positive integer) everything passes
// through unchanged. sysconf(_SC_NPROCESSORS_*) and get_nprocs() are left alone: they report
// the machine's CPUs, as they do inside a container with a smaller affinity mask or quota.
#define _GNU_SOURCE
// Fortified headers define open() and friends as inline wrappers, which this file replaces.
#undef _FORTIFY_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

// The faked CPU count, or 0 when not faking.
static long fake_cpus(void) {
  const char* s = getenv("CS_FAKE_CPUS");
  if (s == NULL || *s == '\0') return 0;
  char* end = NULL;
  errno = 0;
  long n = strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || n <= 0 || n > INT_MAX) return 0;
  return n;
}

static void* next_symbol(const char* name) { return dlsym(RTLD_NEXT, name); }

int sched_getaffinity(pid_t pid, size_t cpusetsize, cpu_set_t* mask) {
  long n = fake_cpus();
  if (n == 0) {
    int (*real)(pid_t, size_t, cpu_set_t*) = (int (*)(pid_t, size_t, cpu_set_t*))next_symbol("sched_getaffinity");
    if (real == NULL) {
      errno = ENOSYS;
      return -1;
    }
    return real(pid, cpusetsize, mask);
  }
  // Like the kernel: a mask too small for the CPUs to report is an error.
  if (mask == NULL || cpusetsize == 0 || (size_t)n > cpusetsize * CHAR_BIT) {
    errno = EINVAL;
    return -1;
  }
  memset(mask, 0, cpusetsize);
  for (long cpu = 0; cpu < n; ++cpu) CPU_SET_S((size_t)cpu, cpusetsize, mask);
  return 0;
}

// ---- Hiding /proc/self/cgroup (only while faking).
static int hidden(const char* path) {
  return path != NULL && fake_cpus() != 0 &&
         (strcmp(path, "/proc/self/cgroup") == 0 || strcmp(path, "/proc/thread-self/cgroup") == 0);
}

// The mode argument exists only when a file may be created.
static mode_t mode_arg(int flags, va_list ap) {
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) return (mode_t)va_arg(ap, int);
  return 0;
}

// The body both shims share: read the optional mode, refuse a hidden path, else find the real
// function NAME of type TYPE and call it with ARGS (which may use `mode`).
#define CS_SHIM_BODY(name, type, args)                                      \
  va_list ap;                                                               \
  va_start(ap, flags);                                                      \
  mode_t mode = mode_arg(flags, ap);                                        \
  va_end(ap);                                                               \
  if (hidden(path)) {                                                       \
    errno = ENOENT;                                                         \
    return -1;                                                              \
  }                                                                         \
  type real = (type)next_symbol(#name);                                     \
  if (real == NULL) {                                                       \
    errno = ENOSYS;                                                         \
    return -1;                                                              \
  }                                                                         \
  return real args;

typedef int (*open_fn)(const char*, int, ...);
typedef int (*openat_fn)(int, const char*, int, ...);

#define CS_OPEN_SHIM(name) \
  int name(const char* path, int flags, ...) { CS_SHIM_BODY(name, open_fn, (path, flags, mode)) }

#define CS_OPENAT_SHIM(name) \
  int name(int dirfd, const char* path, int flags, ...) { CS_SHIM_BODY(name, openat_fn, (dirfd, path, flags, mode)) }

CS_OPEN_SHIM(open)
CS_OPEN_SHIM(open64)
CS_OPENAT_SHIM(openat)
CS_OPENAT_SHIM(openat64)
