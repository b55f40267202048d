//! The parameter block every softmax entry point takes (mirrors `cs::SoftmaxParams` in
//! kernels/common.cuh), and the description of one launch that both backends execute.

use crate::planner::Stage;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SoftmaxParams {
    /// Device address of the first input element.
    pub x: u64,
    /// Device address of the first output element.
    pub y: u64,
    pub rows: i64,
    pub cols: i64,
    /// Device address of the split-row workspace (0 for other kernels).
    pub workspace: u64,
    /// Columns per chunk for split-row kernels (0 for others).
    pub chunk_cols: i64,
}

// SAFETY: plain #[repr(C)] data with the same layout as the CUDA struct (pointers and 64-bit
// integers, no padding), passed by value as the kernel's only parameter.
unsafe impl cudarc::driver::DeviceRepr for SoftmaxParams {}

/// A memory range a launch may touch; the emulator rejects accesses outside every range.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AccessRange {
    pub addr: u64,
    pub bytes: u64,
    pub writable: bool,
}

/// One kernel launch: the stage of a plan, the parameters and the ranges it may touch.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub stage: Stage,
    pub params: SoftmaxParams,
    pub ranges: Vec<AccessRange>,
}

/// The dynamic shared memory a kernel function must be allowed
/// (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) before a launch asking for `requested`
/// bytes, when it allows `allowed` now; `None` when it allows enough. Both backends follow this
/// one rule: the CUDA backend sets the attribute, the emulator checks launches against it as a
/// GPU does (without a raised attribute a block gets 48 KiB of static + dynamic shared memory).
pub(crate) fn dynamic_smem_to_allow(allowed: u32, requested: u32) -> Option<u32> {
    (requested > allowed).then_some(requested)
}
