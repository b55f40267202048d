#!/usr/bin/env bash
# Runs a command as if the machine had N CPUs:
#   scripts/fake-cpu-count.sh N command [args...]
# e.g. scripts/fake-cpu-count.sh 64 cargo test --release --test softmax_emulator
#
# Rust's std::thread::available_parallelism() then returns N in the command and its children,
# so libtest runs N test threads (unless RUST_TEST_THREADS is set) and an emulator device with
# `workers: 0` starts N workers (the emulator caps them at 64). The shim (fake-cpu-count.c,
# preloaded with LD_PRELOAD, CS_FAKE_CPUS=N) makes sched_getaffinity() report CPUs 0..N-1 and
# hides /proc/self/cgroup so that no cgroup CPU quota lowers the count. It works for
# dynamically linked glibc programs (Rust's default on Linux), not static or musl binaries.
#
# cargo would see N CPUs too and start N build jobs: unless CARGO_BUILD_JOBS is set, this script
# sets it to the real core count, so that only the count the programs see changes.
#
# The shim is built with gcc (or $CC) into $CARGO_TARGET_DIR, else target/ of this checkout, else
# $TMPDIR, and rebuilt when the source is newer.
set -euo pipefail

usage() {
  echo "usage: $0 N command [args...]   (N: CPUs to report, a positive integer)" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
n=$1
shift
[[ $n =~ ^[1-9][0-9]*$ ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$here/fake-cpu-count.c
real_cpus=$(nproc)

out_dir=${CARGO_TARGET_DIR:-$here/../target}
if ! mkdir -p "$out_dir" 2>/dev/null || [[ ! -w $out_dir ]]; then
  out_dir=${TMPDIR:-/tmp}
fi
lib=$out_dir/libfake-cpu-count.so
if [[ ! -f $lib || $src -nt $lib ]]; then
  tmp=$lib.tmp.$$
  "${CC:-gcc}" -shared -fPIC -O2 -Wall -Wextra -Werror -o "$tmp" "$src" -ldl
  mv -f "$tmp" "$lib"
fi

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-$real_cpus}
export CS_FAKE_CPUS=$n
export LD_PRELOAD=$lib${LD_PRELOAD:+:$LD_PRELOAD}
exec "$@"
