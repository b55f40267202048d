//! Shared-memory sizing: what each family's blocks hold on chip, the longest rows that fit,
//! and the static scratch every kernel keeps within a reserve.

use super::limits::DeviceLimits;
use super::op::Op;
use super::registry::{Family, KernelConfig};
use crate::types::element::Dtype;

/// Shared memory kept free for the kernels' static `__shared__` reduction scratch: the device's
/// per-block limit covers static and dynamic shared memory together.
pub const STATIC_SMEM_RESERVE: usize = 1024;

/// The most static `__shared__` memory a kernel declares: the reduction scratch every family
/// keeps within STATIC_SMEM_RESERVE, plus the strided family's per-warp partial row states.
/// (tests/cuda_image.rs holds every kernel of the GPU image to this bound, from `ptxas -v`; the
/// emulator faults a block whose static plus dynamic shared memory passes the device's limit.)
pub fn static_smem_bound(kernel: &KernelConfig) -> usize {
    match kernel.family {
        Family::Strided { slices, vec, .. } => {
            STATIC_SMEM_RESERVE + strided_static_smem_bytes(slices, vec)
        }
        _ => STATIC_SMEM_RESERVE,
    }
}

/// Static shared memory of a strided kernel: the warps' partial row states (8 bytes a row).
pub fn strided_static_smem_bytes(slices: u32, vec: u32) -> usize {
    if slices > 1 {
        8 * 32 * (slices * vec) as usize
    } else {
        0
    }
}

/// The longest row the strided family keeps on chip: 32 lanes' `vec` rows of `inputs` tensors
/// in their storage type, beside the largest block's static shared memory and
/// STATIC_SMEM_RESERVE.
pub fn strided_on_chip_max_n(
    dtype: Dtype,
    inputs: usize,
    vec: u32,
    limits: &DeviceLimits,
) -> usize {
    let room = (limits.max_shared_mem_per_block as usize)
        .saturating_sub(STATIC_SMEM_RESERVE + strided_static_smem_bytes(32, vec));
    room / (32 * vec as usize * inputs.max(1) * dtype.size_bytes())
}

/// Dynamic shared memory of the block family for rows of `cols`: the row in its storage type,
/// plus one pack of lead-in so that x's 16-byte packs sit on 16-byte boundaries of shared memory.
pub fn block_smem_bytes(dtype: Dtype, cols: usize) -> usize {
    ((cols + dtype.vector_width()) * dtype.size_bytes()).next_multiple_of(16)
}

#[cfg(feature = "tools")]
/// The longest row the forward ops' block family holds on this device (leaving
/// STATIC_SMEM_RESERVE).
pub fn block_family_max_cols(dtype: Dtype, limits: &DeviceLimits) -> usize {
    block_family_max_cols_of(Op::Softmax, dtype, limits)
}

/// The longest row `op`'s block family holds on this device: its inputs' rows (y and dy for
/// backward), each in its storage type with one pack of lead-in, beside STATIC_SMEM_RESERVE.
pub fn block_family_max_cols_of(op: Op, dtype: Dtype, limits: &DeviceLimits) -> usize {
    let room = (limits.max_shared_mem_per_block as usize).saturating_sub(STATIC_SMEM_RESERVE);
    let per_input = room / op.inputs() / 16 * 16;
    (per_input / dtype.size_bytes()).saturating_sub(dtype.vector_width())
}
