//! A static model of memory-level parallelism: how many bytes of global loads a plan keeps in
//! flight per SM, from the kernel's resources (ptxas registers, shared memory, block size), the
//! plan's grid, and the bytes each thread's steady loop issues before it first uses one (read
//! from the SASS by `sass::bytes_before_first_use`). A pure function next to the planner, so that
//! the gate (tests/sass_gate.rs) and the predicted-performance table share it.
//!
//! Why it matters: by Little's law a GPU streams at bandwidth B only with B x latency bytes in
//! flight. An H100 SXM copies at about 3.0 TB/s over 132 SMs with a DRAM latency near
//! 0.7-1.0 us: 16-23 KB per SM; an H200 (4.0+ TB/s) wants 21-30 KB. A kernel with one 16-byte
//! load per thread before first use and two 512-thread blocks per SM keeps 16 KB: marginal.

use crate::planning::DeviceLimits;

/// Per-SM hardware limits that bound residency (Hopper: H100 and H200 alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmLimits {
    /// Resident threads per SM.
    pub max_threads: u32,
    /// Resident blocks per SM.
    pub max_blocks: u32,
    /// 32-bit registers per SM.
    pub registers: u32,
    /// Shared memory per SM usable by blocks (bytes).
    pub shared_memory: u32,
    /// Shared memory the system reserves per resident block (bytes).
    pub reserved_per_block: u32,
}

impl SmLimits {
    /// Hopper (sm_90): H100 and H200.
    pub const HOPPER: SmLimits = SmLimits {
        max_threads: 2048,
        max_blocks: 32,
        registers: 65536,
        shared_memory: 228 * 1024,
        reserved_per_block: 1024,
    };
}

/// What one kernel asks of an SM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelResources {
    /// Threads per block.
    pub threads: u32,
    /// Registers per thread (ptxas).
    pub registers: u32,
    /// Static shared memory per block (ptxas).
    pub static_smem: u32,
    /// Dynamic shared memory per block (the plan).
    pub dynamic_smem: u32,
}

/// Blocks of this kernel one SM can hold at once (0 when one block does not fit).
pub fn resident_blocks(k: &KernelResources, sm: &SmLimits) -> u32 {
    let threads = k.threads.max(1);
    let by_threads = sm.max_threads / threads;
    // Registers are allocated per warp in units of 256 (8 a thread).
    let per_warp = (k.registers.max(1).next_multiple_of(8) * 32).next_multiple_of(256);
    let by_registers = sm.registers / (per_warp * threads.div_ceil(32));
    // Shared memory is allocated in 128-byte units.
    let smem = (k.static_smem + k.dynamic_smem).next_multiple_of(128) + sm.reserved_per_block;
    let by_smem = sm.shared_memory / smem.max(1);
    by_threads.min(by_registers).min(by_smem).min(sm.max_blocks)
}

/// Bytes of global loads in flight per SM, averaged over the device's SMs: resident blocks
/// (bounded by the grid: a small grid leaves SMs idle) x threads x bytes each thread issues
/// before first use.
pub fn bytes_in_flight_per_sm(
    k: &KernelResources,
    grid_blocks: u64,
    bytes_per_thread: u32,
    device: &DeviceLimits,
    sm: &SmLimits,
) -> f64 {
    let sms = u64::from(device.sm_count.max(1));
    let resident = (u64::from(resident_blocks(k, sm)) * sms).min(grid_blocks);
    (resident * u64::from(k.threads) * u64::from(bytes_per_thread)) as f64 / sms as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_follows_the_tightest_limit() {
        let sm = SmLimits::HOPPER;
        let k = |threads, registers, dynamic_smem| KernelResources {
            threads,
            registers,
            static_smem: 144,
            dynamic_smem,
        };
        // Threads: 2048 / 512.
        assert_eq!(resident_blocks(&k(512, 32, 0), &sm), 4);
        // Registers: 48 a thread -> 1536 a warp, 16 warps a block -> 2 blocks.
        assert_eq!(resident_blocks(&k(512, 48, 0), &sm), 2);
        // Shared memory: a 100 KiB row -> 2 blocks.
        assert_eq!(resident_blocks(&k(128, 32, 100 * 1024), &sm), 2);
        // Blocks: small blocks stop at 32.
        assert_eq!(resident_blocks(&k(32, 16, 0), &sm), 32);
        // Too much shared memory: none.
        assert_eq!(resident_blocks(&k(128, 32, 300 * 1024), &sm), 0);
    }

    #[test]
    fn small_grids_leave_sms_idle() {
        let sm = SmLimits::HOPPER;
        let k = KernelResources {
            threads: 256,
            registers: 32,
            static_smem: 0,
            dynamic_smem: 0,
        };
        let h100 = DeviceLimits::H100;
        // 8 blocks a SM could run; a grid of 132 blocks runs one on each.
        let one = bytes_in_flight_per_sm(&k, 132, 64, &h100, &sm);
        assert_eq!(one, 256.0 * 64.0);
        let full = bytes_in_flight_per_sm(&k, 1 << 20, 64, &h100, &sm);
        assert_eq!(full, 8.0 * 256.0 * 64.0);
    }
}
