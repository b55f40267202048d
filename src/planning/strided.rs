//! The strided planner: an op over a dimension other than the last (rows `inner` apart).

use super::limits::DeviceLimits;
use super::op::Op;
use super::plan::{BLOCKS_PER_SM, LaunchPlan};
use super::registry::{Family, KernelConfig, STRIDED_SLICES};
use super::shared_memory::{STATIC_SMEM_RESERVE, strided_on_chip_max_n};
use crate::types::element::Dtype;

/// One op over a dimension other than the last of a contiguous tensor, seen as
/// `[outer, n, inner]` with `inner >= 2`: `outer * inner` rows of `n` elements `inner` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StridedProblem {
    /// What is computed (not logsumexp).
    pub op: Op,
    /// The product of the dimensions before the reduced one.
    pub outer: usize,
    /// The reduced dimension's size (the row length).
    pub n: usize,
    /// The product of the dimensions after it: the distance between a row's elements.
    pub inner: usize,
    /// Storage type.
    pub dtype: Dtype,
    /// Every tensor starts on a boundary of two elements (with `inner` even, two neighbouring
    /// rows then move as one 4- or 8-byte word).
    pub aligned_pairs: bool,
}

/// Elements of a row each warp of the strided family should have at least when the row is
/// split over several warps (a thread folds up to 8 at a time).
pub(crate) const STRIDED_MIN_PER_SLICE: usize = 4;

/// Picks the kernel and geometry for an op over a strided dimension (`inner >= 2`; `outer`, `n`
/// and `inner` non-zero, else the result is still a valid launch).
///
/// - Two rows a lane (`vec` 2: one 4- or 8-byte word moves an element of each) when `inner` is
///   even and every tensor is aligned to two elements; one otherwise.
/// - On chip (traffic 1.0) when a block's rows fit in shared memory in their storage type
///   ([`strided_on_chip_max_n`]); two-pass otherwise. Where only one row a lane fits, it takes
///   one row a lane on chip rather than two read twice.
/// - Warps a block (`slices`): the fewest of 1, 8, 32 that fill the GPU (every SM's 2048
///   threads) and, on chip, keep at least 16 warps an SM despite the shared memory each block
///   holds; at most a quarter of the row length, so a short row is never split across idle
///   warps.
pub fn plan_strided(p: &StridedProblem, limits: &DeviceLimits) -> LaunchPlan {
    let (outer, n, inner) = (p.outer.max(1), p.n.max(1), p.inner.max(1));
    let rows = outer.saturating_mul(inner);
    let sm_count = limits.sm_count.max(1) as usize;
    let inputs = p.op.inputs();
    // Two rows a lane when they can move as one word, unless that alone would push the rows
    // off chip (64 rows a block hold twice the shared memory of 32).
    let pairs = inner.is_multiple_of(2) && p.aligned_pairs;
    let fits = |vec| n <= strided_on_chip_max_n(p.dtype, inputs, vec, limits);
    let vec = if pairs && (fits(2) || !fits(1)) { 2 } else { 1 };
    let on_chip = fits(vec);
    let rows_per_block = 32 * vec as usize;
    let tiles = rows.div_ceil(rows_per_block);
    let block_smem = if on_chip {
        rows_per_block * n * inputs * p.dtype.size_bytes()
    } else {
        0
    };
    // Blocks an SM the shared memory allows (at most BLOCKS_PER_SM).
    let resident_blocks = if block_smem == 0 {
        BLOCKS_PER_SM as usize
    } else {
        (limits.max_shared_mem_per_block as usize / (block_smem + STATIC_SMEM_RESERVE))
            .clamp(1, BLOCKS_PER_SM as usize)
    };
    let most = (n / STRIDED_MIN_PER_SLICE).max(1);
    let allowed: Vec<u32> = STRIDED_SLICES
        .into_iter()
        .filter(|&s| s == 1 || s as usize <= most)
        .collect();
    let fills = |s: u32| tiles * 32 * s as usize >= sm_count * 2048;
    let busy = |s: u32| resident_blocks * s as usize >= 16;
    let slices = allowed
        .iter()
        .copied()
        .find(|&s| fills(s) && busy(s))
        .unwrap_or(*allowed.last().unwrap_or(&1));
    let kernel = KernelConfig {
        op: p.op,
        dtype: p.dtype,
        family: Family::Strided {
            slices,
            on_chip,
            vec,
        },
    };
    let grid = tiles.clamp(1, sm_count * BLOCKS_PER_SM as usize) as u32;
    LaunchPlan::single(kernel, grid, block_smem as u32)
}
