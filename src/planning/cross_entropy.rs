//! The cross-entropy planner: which stages a launch runs, on what grid, with what workspace.

use super::limits::DeviceLimits;
use super::op::Op;
use super::plan::{BLOCKS_PER_SM, LaunchPlan, Stage};
use super::registry::{CrossEntropyStage, Family, KernelConfig};
use super::rows::{SPLIT_CHUNK_ALIGN, SPLIT_MIN_CHUNK};
use super::shared_memory::{STATIC_SMEM_RESERVE, block_smem_bytes};
use crate::types::element::Dtype;

/// What one cross-entropy launch computes (src/ops/cross_entropy.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossEntropyMode {
    /// The target check alone: the prepare stage, writing the first invalid row.
    CheckTargets,
    /// The loss and lse (`reduce`: Sum or Mean, one value; else a value a row).
    Loss {
        /// Whether the rows' losses are reduced to one.
        reduce: bool,
    },
    /// The loss, lse and the gradient (`forward_backward`).
    LossAndGradient {
        /// Whether the rows' losses are reduced to one.
        reduce: bool,
    },
    /// The gradient from the caller's lse and upstream gradient (`backward`).
    GradientFromLse,
}

/// f32 elements of the cross-entropy workspace before the per-row states: the class weights' sum
/// over V and the two Mean denominators (and one unused), as kernels/cross_entropy.cu lays it out.
pub const CROSS_ENTROPY_GLOBALS: usize = 4;

/// Picks the stages and geometry of a cross-entropy launch over `rows` rows of `cols` classes
/// (both non-zero). A row is cut into chunks, a block each, when there are too few rows to fill
/// the GPU (like split-row softmax): few rows of a huge vocabulary use every SM.
pub fn plan_cross_entropy(
    rows: usize,
    cols: usize,
    dtype: Dtype,
    mode: CrossEntropyMode,
    limits: &DeviceLimits,
) -> LaunchPlan {
    let rows = rows.max(1);
    let cols = cols.max(1);
    let sm_count = limits.sm_count.max(1) as usize;
    // Enough (chunk, row) blocks for about four 256-thread blocks an SM, but no chunk shorter
    // than SPLIT_MIN_CHUNK: a block's reduction and state write amortised over 8 elements a
    // thread at least.
    let wanted_chunks = (4 * sm_count).div_ceil(rows);
    let chunks = wanted_chunks.min(cols.div_ceil(SPLIT_MIN_CHUNK)).max(1);
    // Multiples of SPLIT_CHUNK_ALIGN: every chunk of an aligned row starts 16-byte aligned.
    let chunk_cols = cols.div_ceil(chunks).next_multiple_of(SPLIT_CHUNK_ALIGN);
    let chunks = cols.div_ceil(chunk_cols);
    let row_blocks = rows.min(65535) as u32;
    let stage = |stage: CrossEntropyStage, grid: (u32, u32)| Stage {
        kernel: KernelConfig {
            op: Op::CrossEntropy,
            dtype,
            family: Family::CrossEntropy { stage },
        },
        grid,
        block: stage.threads(),
        shared_mem_bytes: 0,
    };
    let per_chunk = (chunks as u32, row_blocks);
    let grid_cap = sm_count * BLOCKS_PER_SM as usize;
    // The whole row on chip (its storage type, plus a pack of lead-in for alignment), when the
    // row would not be split anyway: forward_backward then reads the logits once.
    let on_chip_bytes = block_smem_bytes(dtype, cols);
    let on_chip = matches!(mode, CrossEntropyMode::LossAndGradient { .. })
        && chunks == 1
        && on_chip_bytes + STATIC_SMEM_RESERVE <= limits.max_shared_mem_per_block as usize;
    let finish_blocks = rows
        .div_ceil(CrossEntropyStage::Finish.threads() as usize)
        .clamp(1, grid_cap) as u32;
    let mut stages = vec![stage(CrossEntropyStage::Prepare, (1, 1))];
    let (loss, grad, reduce) = match mode {
        CrossEntropyMode::CheckTargets => (false, false, false),
        CrossEntropyMode::Loss { reduce } => (true, false, reduce),
        CrossEntropyMode::LossAndGradient { reduce } => (true, true, reduce),
        CrossEntropyMode::GradientFromLse => (false, true, false),
    };
    if on_chip {
        let mut s = stage(CrossEntropyStage::OnChip, (rows.min(grid_cap) as u32, 1));
        s.shared_mem_bytes = on_chip_bytes as u32;
        stages.push(s);
    } else if loss {
        stages.push(stage(CrossEntropyStage::Stats, per_chunk));
        stages.push(stage(CrossEntropyStage::Finish, (finish_blocks, 1)));
    }
    if reduce {
        stages.push(stage(CrossEntropyStage::Reduce, (1, 1)));
    }
    if grad && !on_chip {
        stages.push(stage(CrossEntropyStage::Grad, per_chunk));
    }
    LaunchPlan {
        stages,
        workspace_floats: CROSS_ENTROPY_GLOBALS + 4 * rows + 4 * rows * chunks,
        chunk_cols,
    }
}
