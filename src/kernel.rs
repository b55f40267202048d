//! The parameter block every softmax entry point takes (mirrors `cs::SoftmaxParams` in
//! kernels/common.cuh), and the description of one launch that both backends execute.

use crate::planner::LaunchPlan;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SoftmaxParams {
    /// Device address of the first input element.
    pub x: u64,
    /// Device address of the first output element.
    pub y: u64,
    pub rows: i64,
    pub cols: i64,
}

// SAFETY: plain #[repr(C)] data with the same layout as the CUDA struct (two pointers, two
// 64-bit integers), passed by value as the kernel's only parameter.
unsafe impl cudarc::driver::DeviceRepr for SoftmaxParams {}

/// A memory range a launch may touch; the emulator rejects accesses outside every range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessRange {
    pub addr: u64,
    pub bytes: u64,
    pub writable: bool,
}

/// One kernel launch: the plan, the parameters and the ranges it may touch.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub plan: LaunchPlan,
    pub params: SoftmaxParams,
    pub ranges: Vec<AccessRange>,
}
