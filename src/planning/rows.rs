//! The planner of the ops over the last dimension: which family (warp, block, online, split)
//! and tile configuration a row length and row count get.

use super::limits::DeviceLimits;
use super::op::Op;
use super::plan::{BLOCKS_PER_SM, LaunchPlan, Stage};
use super::registry::{
    Family, KernelConfig, LONG_LANE_COLS, MIN_LANE_COLS, ONLINE_THREADS, SPLIT_THREADS,
    WARP_FAMILY_MAX_COLS, WARP_FAMILY_THREADS,
};
use super::shared_memory::{block_family_max_cols_of, block_smem_bytes};
use crate::types::element::Dtype;

/// One op over the last dimension: `rows` rows of `cols` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxProblem {
    /// What is computed.
    pub op: Op,
    /// Rows (the product of all dimensions but the last).
    pub rows: usize,
    /// Elements per row (the last dimension).
    pub cols: usize,
    /// Storage type.
    pub dtype: Dtype,
    /// Input and output each start on a 16-byte boundary.
    pub aligned16: bool,
}

/// Rows at least this long are split when there are fewer rows than SMs.
pub const SPLIT_MIN_COLS: usize = 16 * 1024;
/// Smallest chunk worth a block (elements); chunks are multiples of SPLIT_CHUNK_ALIGN so that
/// every chunk of an aligned row starts on a 16-byte boundary for every dtype.
pub(crate) const SPLIT_MIN_CHUNK: usize = 2048;
pub(crate) const SPLIT_CHUNK_ALIGN: usize = 8;

/// Picks the kernels and geometry for a softmax. `rows` and `cols` must be non-zero (the
/// operation returns before planning otherwise); the result is clamped to a valid launch anyway.
pub fn plan_softmax(p: &SoftmaxProblem, limits: &DeviceLimits) -> LaunchPlan {
    let rows = p.rows.max(1);
    let cols = p.cols.max(1);
    let v = p.dtype.vector_width();
    let sm_count = limits.sm_count.max(1) as usize;
    let grid_for = |blocks: usize| blocks.clamp(1, sm_count * BLOCKS_PER_SM as usize) as u32;
    let config = |family| KernelConfig {
        op: p.op,
        dtype: p.dtype,
        family,
    };

    if cols <= WARP_FAMILY_MAX_COLS {
        // Elements per lane: MIN_LANE_COLS while a warp covers the row, then the first step of
        // LONG_LANE_COLS that does; lanes per row: as few as cover the row, so short rows pack
        // several rows into a warp.
        let needed = cols.div_ceil(32);
        let per_lane = LONG_LANE_COLS
            .into_iter()
            .map(|c| c as usize)
            .find(|&c| c >= needed)
            .filter(|_| needed > MIN_LANE_COLS as usize)
            .unwrap_or(MIN_LANE_COLS as usize);
        let width = cols.div_ceil(per_lane).next_power_of_two() as u32;
        // Vector packs need every row to start 16-byte aligned: aligned base, cols % v == 0.
        let vec = if p.aligned16 && cols.is_multiple_of(v) {
            v as u32
        } else {
            1
        };
        let cols_per_lane = per_lane as u32;
        let rows_per_block = (WARP_FAMILY_THREADS / 32 * (32 / width)) as usize;
        let family = Family::Warp {
            width,
            cols_per_lane,
            vec,
        };
        return LaunchPlan::single(config(family), grid_for(rows.div_ceil(rows_per_block)), 0);
    }

    if rows < sm_count && cols >= SPLIT_MIN_COLS {
        // About two blocks per SM in all, each chunk at least SPLIT_MIN_CHUNK long.
        let max_chunks = (cols / SPLIT_MIN_CHUNK).max(2);
        let chunks = (2 * sm_count).div_ceil(rows).clamp(2, max_chunks);
        let chunk_cols = cols.div_ceil(chunks).next_multiple_of(SPLIT_CHUNK_ALIGN);
        let chunks = cols.div_ceil(chunk_cols);
        let stage = |family| Stage {
            kernel: config(family),
            grid: (chunks as u32, rows as u32),
            block: SPLIT_THREADS,
            shared_mem_bytes: 0,
        };
        return LaunchPlan {
            stages: vec![
                stage(Family::SplitStats {
                    threads: SPLIT_THREADS,
                }),
                stage(Family::SplitWrite {
                    threads: SPLIT_THREADS,
                }),
            ],
            workspace_floats: 2 * chunks * rows,
            chunk_cols,
        };
    }

    if p.op.has_block_family() && cols <= block_family_max_cols_of(p.op, p.dtype, limits) {
        let row_bytes = p.op.inputs() * block_smem_bytes(p.dtype, cols);
        let threads = match cols.div_ceil(v) {
            0..=1024 => 128,
            1025..=2048 => 256,
            _ => 512,
        };
        return LaunchPlan::single(
            config(Family::Block { threads }),
            grid_for(rows),
            row_bytes as u32,
        );
    }

    let family = Family::Online {
        threads: ONLINE_THREADS,
    };
    LaunchPlan::single(config(family), grid_for(rows), 0)
}
