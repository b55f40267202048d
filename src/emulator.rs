//! The CPU SIMT emulator backend: host memory stands in for device memory, and launches run the
//! host-compiled kernels (kernels/emu/) to completion before returning.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::kernel::{AccessRange, Launch, SoftmaxParams};
use crate::planner::DeviceLimits;

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
}

unsafe extern "C" {
    fn cs_emu_f32_to_f16(f: f32) -> u16;
    fn cs_emu_f16_to_f32(h: u16) -> f32;
    fn cs_emu_f32_to_bf16(f: f32) -> u16;
    fn cs_emu_bf16_to_f32(b: u16) -> f32;
    fn cs_emu_kernel_count() -> usize;
    fn cs_emu_kernel_name(i: usize) -> *const c_char;
    #[allow(clippy::too_many_arguments)]
    fn cs_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        dynamic_smem: u64,
        params: *const c_void,
        params_size: u64,
        regions: *const CsEmuRegion,
        n_regions: u64,
        schedule: i32,
        schedule_seed: u64,
        workers: u32,
        stats: *mut CsEmuStats,
        err: *mut c_char,
        err_len: u64,
    ) -> c_int;
}

/// The order in which the emulator runs the threads of a block between synchronisation points.
/// Running a suite in several orders exposes a missing barrier as a result that changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// How an emulator device runs kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// The thread order between synchronisation points.
    pub schedule: Schedule,
    /// OS threads that run blocks in parallel (0: one per available core).
    pub workers: usize,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            schedule: Schedule::Forward,
            workers: 0,
        }
    }
}

/// Global-memory traffic of one emulated operation (all its kernel launches), counted at the
/// kernels' accessors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LaunchStats {
    /// Global-memory bytes the kernels read.
    pub kernel_bytes_read: u64,
    /// Global-memory bytes the kernels wrote.
    pub kernel_bytes_written: u64,
    /// Global accesses of any width.
    pub accesses: u64,
    /// Global accesses that were 16 bytes wide.
    pub accesses_16b: u64,
    /// Emulated threads the launch ran (grid x block).
    pub threads: u64,
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
            workers: workers.min(64) as u32,
            last_stats: Mutex::new(None),
        }
    }

    pub fn last_stats(&self) -> Option<LaunchStats> {
        self.last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs the launches in order; the recorded statistics are their sum.
    pub fn launch(&self, launches: &[Launch]) -> Result<()> {
        let mut total = LaunchStats::default();
        for l in launches {
            let s = &l.stage;
            let stats = self.run(
                &s.kernel.name(),
                [s.grid.0, s.grid.1, s.block, s.shared_mem_bytes],
                &l.params,
                &l.ranges,
            )?;
            total.kernel_bytes_read += stats.kernel_bytes_read;
            total.kernel_bytes_written += stats.kernel_bytes_written;
            total.accesses += stats.accesses;
            total.accesses_16b += stats.accesses_16b;
            total.threads += stats.threads;
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

    /// Runs entry point `name` with `[grid x, grid y, block, dynamic shared memory bytes]` to
    /// completion. (The planted-bug self-test kernels are launched this way, without a plan.)
    pub fn run(
        &self,
        name: &str,
        geometry: [u32; 4],
        params: &SoftmaxParams,
        ranges: &[AccessRange],
    ) -> Result<LaunchStats> {
        let [grid_x, grid_y, block, smem] = geometry;
        let c_name = CString::new(name).map_err(|_| Error::Launch {
            kernel: name.to_string(),
            detail: "kernel name contains a NUL byte".into(),
        })?;
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
        let grid3 = [grid_x, grid_y, 1];
        let (schedule, seed) = match self.config.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Shuffled { seed } => (2, seed),
        };
        let block3 = [block, 1, 1];
        let mut stats = CsEmuStats::default();
        let mut err = vec![0 as c_char; 1024];
        // SAFETY: every pointer refers to live memory for the duration of the call; the
        // emulator checks each global access against `regions` before performing it.
        let code = unsafe {
            cs_emu_launch(
                c_name.as_ptr(),
                grid3.as_ptr(),
                block3.as_ptr(),
                smem as u64,
                params as *const SoftmaxParams as *const c_void,
                size_of::<SoftmaxParams>() as u64,
                regions.as_ptr(),
                regions.len() as u64,
                schedule,
                seed,
                self.workers,
                &mut stats,
                err.as_mut_ptr(),
                err.len() as u64,
            )
        };
        // SAFETY: the emulator always NUL-terminates within err_len.
        let message = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let kernel = name.to_string();
        match code {
            0 => Ok(LaunchStats {
                kernel_bytes_read: stats.bytes_read,
                kernel_bytes_written: stats.bytes_written,
                accesses: stats.accesses,
                accesses_16b: stats.accesses16,
                threads: stats.threads,
                kernel,
            }),
            3 => Err(Error::EmulatorFault {
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
    // SAFETY: the table is built at start-up and never changes; names are static C strings.
    unsafe {
        (0..cs_emu_kernel_count())
            .filter_map(|i| {
                let p = cs_emu_kernel_name(i);
                (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
            })
            .collect()
    }
}

/// Host memory standing in for a device allocation: zeroed, 256-byte aligned like cudaMalloc.
pub(crate) struct HostBuffer {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain bytes owned by this value; it is only touched through raw
// pointers (by the emulator during a launch and by explicit copies), never through references
// that could alias.
unsafe impl Send for HostBuffer {}
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    pub fn new(bytes: usize) -> Result<HostBuffer> {
        let layout = Layout::from_size_align(bytes.max(256), 256)
            .map_err(|_| Error::OutOfMemory { bytes })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(Error::OutOfMemory { bytes })?;
        Ok(HostBuffer { ptr, layout })
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
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
