//! The CPU SIMT emulator backend: host memory stands in for device memory, and launches run the
//! host-compiled kernels (kernels/emu/) to completion before returning.

use std::alloc::{Layout, alloc, alloc_zeroed, dealloc};
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::planning::{DeviceLimits, KernelConfig};
use crate::runtime::launch::{AccessRange, KernelParams, Launch, entry_point};
use crate::types::error::{Error, Result};

#[repr(C)]
struct CsEmuRegion {
    base: u64,
    bytes: u64,
    writable: i32,
}

#[repr(C)]
#[derive(Default)]
struct CsEmuStats {
    bytes_read: u64,
    bytes_written: u64,
    accesses: u64,
    accesses16: u64,
    threads: u64,
    smem_wavefronts: u64,
    smem_wavefronts_ideal: u64,
}

/// One launch, as kernels/emu/runtime.cpp's `CsEmuLaunch` reads it.
#[repr(C)]
struct CsEmuLaunch {
    name: *const c_char,
    grid: [u32; 3],
    block: [u32; 3],
    dynamic_smem: u64,
    smem_attribute: u64,
    smem_limit: u64,
    params: *const c_void,
    params_size: u64,
    regions: *const CsEmuRegion,
    n_regions: u64,
    schedule: i32,
    schedule_seed: u64,
    workers: u32,
    first_block: u64,
}

/// The C entry points of one build flavour of the emulator (build.rs compiles the kernels as
/// written and, with the `emulator-fma` feature, with FMA contraction under the `cs_emu_fma_`
/// prefix).
macro_rules! emulator_flavour {
    ($module:ident, $launch:ident, $count:ident, $name:ident) => {
        mod $module {
            use super::*;
            unsafe extern "C" {
                pub fn $launch(
                    launch: *const CsEmuLaunch,
                    stats: *mut CsEmuStats,
                    err: *mut c_char,
                    err_len: u64,
                ) -> c_int;
                pub fn $count() -> usize;
                pub fn $name(i: usize) -> *const c_char;
            }
            pub use $count as kernel_count;
            pub use $launch as launch;
            pub use $name as kernel_name;
        }
    };
}
emulator_flavour!(
    plain,
    cs_emu_launch,
    cs_emu_kernel_count,
    cs_emu_kernel_name
);
#[cfg(feature = "emulator-fma")]
emulator_flavour!(
    contracted,
    cs_emu_fma_launch,
    cs_emu_fma_kernel_count,
    cs_emu_fma_kernel_name
);

#[cfg(feature = "tools")]
unsafe extern "C" {
    fn cs_emu_f32_to_f16(f: f32) -> u16;
    fn cs_emu_f16_to_f32(h: u16) -> f32;
    fn cs_emu_f32_to_bf16(f: f32) -> u16;
    fn cs_emu_bf16_to_f32(b: u16) -> f32;
}

/// The order in which the emulator runs the threads of a block between synchronisation points.
/// Running a suite in several orders exposes a missing barrier as a result that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// Thread 0 first.
    Forward,
    /// The last thread first.
    Reverse,
    /// A pseudo-random order, a different one for every block, drawn from `seed`.
    Shuffled {
        /// Seeds the permutations (combined with each block's index).
        seed: u64,
    },
    /// One warp at a time (the last warp first) runs ahead until every lane of it waits at a
    /// barrier or has exited: a warp gets many shuffles ahead of the others between barriers.
    WarpAhead,
}

/// How an emulator device runs kernels: `EmulatorConfig::default()` and the setters, e.g.
/// `EmulatorConfig::default().schedule(Schedule::Reverse).workers(4)` (a struct literal cannot be
/// written outside the crate: fields will be added).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// The thread order between synchronisation points.
    pub schedule: Schedule,
    /// OS threads that run blocks in parallel (0: one per available core, at most 64). The
    /// process runs at most 64 such threads at once over all emulator devices; a launch that
    /// finds them busy runs with fewer.
    pub workers: usize,
    /// Run the build of the kernels in which the host compiler contracts `a * b + c` into fused
    /// multiply-adds, as nvcc does by default (`-ffp-contract=fast`, plus `-mfma` on x86-64
    /// when the build machine has FMA). The default build contracts nothing.
    ///
    /// That second build of every kernel is there only with the crate feature `emulator-fma`
    /// (3.5 MB more in the rlib and a second host compile of the kernels); without it a launch
    /// with this set returns [`Error::Unsupported`] saying so ([`emulator_fma_available`] tells
    /// beforehand). The crate's own tests turn the feature on.
    pub fma_contraction: bool,
}

impl EmulatorConfig {
    /// This configuration with another thread order.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// This configuration with `workers` OS threads (0: one per available core, at most 64).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// This configuration with or without the FMA-contraction build of the kernels.
    pub fn fma_contraction(mut self, fma_contraction: bool) -> Self {
        self.fma_contraction = fma_contraction;
        self
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            schedule: Schedule::Forward,
            workers: 0,
            fma_contraction: false,
        }
    }
}

/// Global-memory traffic of one emulated operation (all its kernel launches), counted at the
/// kernels' accessors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LaunchStats {
    /// Global-memory bytes the kernels read.
    pub kernel_bytes_read: u64,
    /// Global-memory bytes the kernels wrote.
    pub kernel_bytes_written: u64,
    /// Global accesses of any width.
    pub accesses: u64,
    /// Global accesses that were 16 bytes wide, as the source asks for them (the accessors the
    /// kernels call). The machine code can differ (NVVM splits some 16-byte stores): the SASS
    /// census in tests/sass_gate.rs is the truth for widths.
    pub accesses_16b: u64,
    /// Emulated threads the launch ran (grid x block).
    pub threads: u64,
    /// Shared-memory wavefronts of every warp access, as 32 banks of 4-byte words serve them
    /// (8-byte accesses by half-warps, 16-byte by quarter-warps; a warp access is one access
    /// site's k-th run by each lane).
    pub shared_wavefronts: u64,
    /// The fewest wavefronts the same accesses could take (no bank conflicts): equal to
    /// `shared_wavefronts` when the kernels are conflict-free.
    pub shared_wavefronts_ideal: u64,
    /// The kernel that ran (`a+b` when one operation ran several).
    pub kernel: String,
}

/// Limits the emulator reports to the planner: a mid-size GPU (96 KiB of shared memory per
/// block, so that the online family is reached at realistic row lengths).
pub(crate) const EMULATOR_LIMITS: DeviceLimits = DeviceLimits {
    sm_count: 8,
    max_shared_mem_per_block: 96 * 1024,
};

pub(crate) struct Emulator {
    pub config: EmulatorConfig,
    workers: u32,
    last_stats: Mutex<Option<LaunchStats>>,
    /// The emulator's stream: every operation of the device (launches, copies) holds it while
    /// it runs, so they execute one at a time in one order, as on a GPU stream.
    stream: Mutex<()>,
    /// Each kernel's max dynamic shared memory attribute, raised by the rule the CUDA backend
    /// follows (`kernel::dynamic_smem_to_allow`), one slot per entry point by
    /// `KernelConfig::index` (0: never raised).
    kernel_smem_allowed: Box<[AtomicU32]>,
    /// The same for kernels outside `KernelConfig::all()` (the self-test kernels), by name.
    smem_allowed: Mutex<HashMap<String, u32>>,
    /// Test hook: launches skip the blocks before this linear block index (0: run all).
    pub first_block: AtomicU64,
}

impl Emulator {
    pub fn new(config: EmulatorConfig) -> Emulator {
        let workers = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        Emulator {
            config,
            workers: workers.clamp(1, 64) as u32,
            last_stats: Mutex::new(None),
            stream: Mutex::new(()),
            first_block: AtomicU64::new(0),
            kernel_smem_allowed: (0..KernelConfig::COUNT)
                .map(|_| AtomicU32::new(0))
                .collect(),
            smem_allowed: Mutex::new(HashMap::new()),
        }
    }

    /// Raises `kernel`'s dynamic shared memory attribute as the CUDA backend would before a launch
    /// asking for `requested` bytes; returns the attribute the launch runs under (0: default).
    /// `slot`: the kernel's `KernelConfig::index` (`None` for a self-test kernel).
    fn allow_dynamic_smem(&self, slot: Option<usize>, kernel: &CStr, requested: u32) -> u32 {
        if let Some(allowed) = slot.and_then(|i| self.kernel_smem_allowed.get(i)) {
            // Launches hold the stream, so no other thread raises it meanwhile.
            let current = allowed.load(Ordering::Relaxed);
            let allow = crate::runtime::launch::dynamic_smem_to_allow(current, requested);
            allow.inspect(|&a| allowed.store(a, Ordering::Relaxed));
            return allow.unwrap_or(current);
        }
        let kernel = kernel.to_string_lossy();
        let mut allowed = self.smem_allowed.lock().unwrap_or_else(|e| e.into_inner());
        let current = allowed.get(kernel.as_ref()).copied().unwrap_or(0);
        match crate::runtime::launch::dynamic_smem_to_allow(current, requested) {
            Some(allow) => {
                allowed.insert(kernel.into_owned(), allow);
                allow
            }
            None => current,
        }
    }

    /// Holds the device's stream: operations of this device wait until the guard is dropped.
    pub fn stream(&self) -> MutexGuard<'_, ()> {
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn last_stats(&self) -> Option<LaunchStats> {
        self.last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs the stages in order, as one operation on the stream (held by the caller: `stream`);
    /// the recorded statistics are their sum.
    pub fn launch(&self, _stream: &MutexGuard<'_, ()>, launch: &Launch<'_>) -> Result<()> {
        let mut total = LaunchStats::default();
        for s in launch.stages {
            let (slot, name) = entry_point(&s.kernel)?;
            let stats = self.run(
                name,
                Some(slot),
                [s.grid.0, s.grid.1, s.block, s.shared_mem_bytes],
                &launch.params,
                launch.ranges,
            )?;
            total.kernel_bytes_read += stats.kernel_bytes_read;
            total.kernel_bytes_written += stats.kernel_bytes_written;
            total.accesses += stats.accesses;
            total.accesses_16b += stats.accesses_16b;
            total.threads += stats.threads;
            total.shared_wavefronts += stats.shared_wavefronts;
            total.shared_wavefronts_ideal += stats.shared_wavefronts_ideal;
            if !total.kernel.is_empty() {
                total.kernel.push('+');
            }
            total.kernel += &stats.kernel;
        }
        self.record(total);
        Ok(())
    }

    pub fn record(&self, stats: LaunchStats) {
        *self.last_stats.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Runs entry point `name` (`slot`: its `KernelConfig::index`, if any) with `[grid x,
    /// grid y, block, dynamic shared memory bytes]` to completion. (The planted-bug self-test
    /// kernels are launched this way, without a plan.)
    pub fn run(
        &self,
        name: &CStr,
        slot: Option<usize>,
        geometry: [u32; 4],
        params: &KernelParams,
        ranges: &[AccessRange],
    ) -> Result<LaunchStats> {
        let [grid_x, grid_y, block, smem] = geometry;
        let (params_addr, params_size) = params.as_bytes();
        // Writable ranges first, so that a range listed as both is writable.
        let mut ranges = ranges.to_vec();
        ranges.sort_by_key(|r| !r.writable);
        let regions: Vec<CsEmuRegion> = ranges
            .iter()
            .map(|r| CsEmuRegion {
                base: r.addr,
                bytes: r.bytes,
                writable: r.writable as i32,
            })
            .collect();
        let (schedule, seed) = match self.config.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Shuffled { seed } => (2, seed),
            Schedule::WarpAhead => (3, 0),
        };
        let launch = CsEmuLaunch {
            name: name.as_ptr(),
            grid: [grid_x, grid_y, 1],
            block: [block, 1, 1],
            dynamic_smem: smem as u64,
            smem_attribute: self.allow_dynamic_smem(slot, name, smem) as u64,
            smem_limit: EMULATOR_LIMITS.max_shared_mem_per_block as u64,
            params: params_addr,
            params_size: params_size as u64,
            regions: regions.as_ptr(),
            n_regions: regions.len() as u64,
            schedule,
            schedule_seed: seed,
            workers: self.workers,
            first_block: self.first_block.load(Ordering::Relaxed),
        };
        let launch_fn = if self.config.fma_contraction {
            contracted_launch(name)?
        } else {
            plain::launch
        };
        let mut stats = CsEmuStats::default();
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: every pointer refers to live memory for the duration of the call; the
        // emulator checks each global access against `regions` before performing it, and
        // catches every C++ exception before returning.
        let code = unsafe { launch_fn(&launch, &mut stats, err.as_mut_ptr(), err.len() as u64) };
        // SAFETY: the emulator always NUL-terminates within err_len.
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let kernel = name.to_string_lossy().into_owned();
        match code {
            0 => Ok(LaunchStats {
                kernel_bytes_read: stats.bytes_read,
                kernel_bytes_written: stats.bytes_written,
                accesses: stats.accesses,
                accesses_16b: stats.accesses16,
                threads: stats.threads,
                shared_wavefronts: stats.smem_wavefronts,
                shared_wavefronts_ideal: stats.smem_wavefronts_ideal,
                kernel,
            }),
            3 => Err(Error::EmulatorFault {
                kernel,
                detail: message,
            }),
            4 => Err(Error::EmulatorResources {
                kernel,
                detail: message,
            }),
            _ => Err(Error::Launch {
                kernel,
                detail: message,
            }),
        }
    }
}

/// A flavour's C entry point that launches one kernel.
type LaunchFn =
    unsafe extern "C" fn(*const CsEmuLaunch, *mut CsEmuStats, *mut c_char, u64) -> c_int;

/// Whether `EmulatorConfig::fma_contraction` can run here: the crate was built with the feature
/// `emulator-fma` and the CPU has what that build needs (FMA instructions when it uses them).
pub fn emulator_fma_available() -> bool {
    #[cfg(feature = "emulator-fma")]
    return host_has_fma();
    #[cfg(not(feature = "emulator-fma"))]
    false
}

/// The FMA-contraction build's entry point that launches a kernel, or why there is none.
#[cfg(feature = "emulator-fma")]
fn contracted_launch(name: &CStr) -> Result<LaunchFn> {
    if !host_has_fma() {
        return Err(Error::Launch {
            kernel: name.to_string_lossy().into_owned(),
            detail: "the FMA-contraction build of the emulator needs a CPU with FMA instructions; \
                     set EmulatorConfig::fma_contraction to false"
                .into(),
        });
    }
    Ok(contracted::launch)
}

/// The FMA-contraction build's entry point that launches a kernel, or why there is none.
#[cfg(not(feature = "emulator-fma"))]
fn contracted_launch(name: &CStr) -> Result<LaunchFn> {
    Err(Error::Unsupported {
        what: format!(
            "EmulatorConfig::fma_contraction: this build of cuda-softmax has no FMA-contraction \
             build of the emulator's kernels (asked to launch {}); enable the crate feature \
             `emulator-fma`, or set fma_contraction to false",
            name.to_string_lossy()
        ),
    })
}

/// True when the host can run the FMA-contraction flavour (built with `-mfma` on x86-64).
#[cfg(feature = "emulator-fma")]
fn host_has_fma() -> bool {
    #[cfg(all(target_arch = "x86_64", cs_emu_mfma))]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(all(target_arch = "x86_64", cs_emu_mfma)))]
    {
        true
    }
}

#[cfg(feature = "tools")]
/// The emulator's host versions of `__float2half_rn`, `__half2float`, `__float2bfloat16_rn`
/// and `__bfloat162float`, exposed for the emulator's tests.
#[doc(hidden)]
pub mod conversions {
    pub fn f32_to_f16_bits(f: f32) -> u16 {
        // SAFETY: pure functions of their argument.
        unsafe { super::cs_emu_f32_to_f16(f) }
    }
    pub fn f16_bits_to_f32(h: u16) -> f32 {
        // SAFETY: as above.
        unsafe { super::cs_emu_f16_to_f32(h) }
    }
    pub fn f32_to_bf16_bits(f: f32) -> u16 {
        // SAFETY: as above.
        unsafe { super::cs_emu_f32_to_bf16(f) }
    }
    pub fn bf16_bits_to_f32(b: u16) -> f32 {
        // SAFETY: as above.
        unsafe { super::cs_emu_bf16_to_f32(b) }
    }
}

/// Names of every entry point compiled into the emulator.
pub fn emulator_kernel_names() -> Vec<String> {
    kernel_names(plain::kernel_count, plain::kernel_name)
}

#[cfg(feature = "tools")]
/// Names of every entry point in the FMA-contraction build of the emulator (none without the
/// `emulator-fma` feature).
#[doc(hidden)]
pub fn emulator_fma_kernel_names() -> Vec<String> {
    #[cfg(feature = "emulator-fma")]
    return kernel_names(contracted::kernel_count, contracted::kernel_name);
    #[cfg(not(feature = "emulator-fma"))]
    Vec::new()
}

fn kernel_names(
    count: unsafe extern "C" fn() -> usize,
    name: unsafe extern "C" fn(usize) -> *const c_char,
) -> Vec<String> {
    // SAFETY: the table is built at start-up and never changes; names are static C strings.
    unsafe {
        (0..count())
            .filter_map(|i| {
                let p = name(i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .collect()
    }
}

#[cfg(feature = "tools")]
/// What the host C++ compiler said while building the emulator (both flavours), with
/// `-Wall -Wextra -Wconversion`: empty for a clean build. A test requires it to be empty.
#[doc(hidden)]
pub fn emulator_build_warnings() -> &'static str {
    include_str!(env!("CS_EMU_WARNINGS_PATH"))
}

/// Host memory standing in for a device allocation, 256-byte aligned like cudaMalloc: zeroed, or
/// filled with a poison pattern so that an element no kernel wrote never reads as a result.
pub(crate) struct HostBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
    /// Mapped with mmap (large buffers on Linux): pages are zero and cost nothing until touched,
    /// so a huge zeroed tensor of which a test touches one row stays cheap.
    mapped: bool,
}

/// Buffers at least this large are mapped rather than allocated (Linux).
const MAP_THRESHOLD: usize = 1 << 20;

#[cfg(target_os = "linux")]
mod anon {
    unsafe extern "C" {
        fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
        fn munmap(addr: *mut u8, len: usize) -> i32;
    }
    const PROT_READ_WRITE: i32 = 0x1 | 0x2;
    // Not MAP_NORESERVE: the kernel's overcommit check then refuses an impossible size up front
    // (an error) instead of the OOM killer ending the process when the pages are touched.
    const MAP_PRIVATE_ANONYMOUS: i32 = 0x02 | 0x20;

    /// Zeroed, page-aligned memory, or None.
    pub fn map(len: usize) -> Option<*mut u8> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                PROT_READ_WRITE,
                MAP_PRIVATE_ANONYMOUS,
                -1,
                0,
            )
        };
        (p as isize != -1 && !p.is_null()).then_some(p)
    }

    /// # Safety
    /// `p` and `len` come from one successful `map`.
    pub unsafe fn unmap(p: *mut u8, len: usize) {
        // SAFETY: per the caller.
        unsafe { munmap(p, len) };
    }
}

#[cfg(not(target_os = "linux"))]
mod anon {
    pub fn map(_len: usize) -> Option<*mut u8> {
        None
    }
    pub unsafe fn unmap(_p: *mut u8, _len: usize) {}
}

// SAFETY: the buffer is plain bytes owned by this value; it is only touched through raw
// pointers (by the emulator during a launch and by explicit copies, both under the device's
// stream lock), never through references that could alias.
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// `bytes` of zeroed memory.
    pub fn zeroed(bytes: usize) -> Result<HostBuffer> {
        Self::new(bytes, true)
    }

    /// `len` elements, each set to `value` (the poison of uninitialised tensors).
    pub fn filled<T: Copy>(len: usize, value: T) -> Result<HostBuffer> {
        let bytes = len
            .checked_mul(size_of::<T>())
            .ok_or(Error::OutOfMemory { bytes: usize::MAX })?;
        let buffer = Self::new(bytes, false)?;
        // SAFETY: the allocation holds at least `bytes` bytes, 256-byte aligned, and nothing
        // else refers to it yet; any bit pattern of T is written whole.
        unsafe { std::slice::from_raw_parts_mut(buffer.ptr.as_ptr() as *mut T, len) }.fill(value);
        Ok(buffer)
    }

    fn new(bytes: usize, zeroed: bool) -> Result<HostBuffer> {
        let layout = Layout::from_size_align(bytes.max(256), 256)
            .map_err(|_| Error::OutOfMemory { bytes })?;
        let mapped = (layout.size() >= MAP_THRESHOLD)
            .then(|| anon::map(layout.size()))
            .flatten();
        // SAFETY: the layout has a non-zero size.
        let ptr = match mapped {
            Some(p) => p,
            None if zeroed => unsafe { alloc_zeroed(layout) },
            None => unsafe { alloc(layout) },
        };
        let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory { bytes })?;
        Ok(HostBuffer {
            ptr,
            layout,
            mapped: mapped.is_some(),
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Copies `bytes` bytes from `src` to `offset`. The caller keeps offset + bytes in range.
    pub unsafe fn write(&self, offset: usize, src: *const u8, bytes: usize) {
        debug_assert!(offset + bytes <= self.layout.size());
        // SAFETY: in range per the caller; `src` does not overlap a private allocation.
        unsafe { std::ptr::copy_nonoverlapping(src, self.ptr.as_ptr().add(offset), bytes) }
    }

    /// Copies `bytes` bytes at `offset` to `dst`. The caller keeps offset + bytes in range.
    pub unsafe fn read(&self, offset: usize, dst: *mut u8, bytes: usize) {
        debug_assert!(offset + bytes <= self.layout.size());
        // SAFETY: as for `write`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst, bytes) }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated (or mapped) in `new` with this layout.
        unsafe {
            if self.mapped {
                anon::unmap(self.ptr.as_ptr(), self.layout.size())
            } else {
                dealloc(self.ptr.as_ptr(), self.layout)
            }
        }
    }
}
