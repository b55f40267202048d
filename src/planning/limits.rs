//! What the planners know about a device.

/// What the planner needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (the emulator reports a nominal number).
    pub sm_count: u32,
    /// Dynamic shared memory one block may use, opt-in limit included.
    pub max_shared_mem_per_block: u32,
}

impl DeviceLimits {
    #[cfg(feature = "tools")]
    /// An H100 SXM (132 SMs, 227 KiB opt-in shared memory): handy for tests and docs.
    pub const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_shared_mem_per_block: 227 * 1024,
    };
}
