//! A launch plan: the stages one call runs, in order, and the invariant every plan keeps.

use super::limits::DeviceLimits;
use super::registry::KernelConfig;
use super::shared_memory::static_smem_bound;

/// One kernel launch of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The entry point.
    pub kernel: KernelConfig,
    /// (x, y) blocks: x over row groups or chunks, y over rows (split-row only; else 1).
    pub grid: (u32, u32),
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory per block.
    pub shared_mem_bytes: u32,
}

/// Kernels and geometry for one call: stages run in order on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The launches, in order.
    pub stages: Vec<Stage>,
    /// f32 elements of scratch the stages share (split-row: 2 per chunk per row); 0 if none.
    pub workspace_floats: usize,
    /// Columns per chunk for split-row plans; 0 otherwise.
    pub chunk_cols: usize,
}

/// Grids are capped at this many blocks per SM; kernels loop over the remaining rows.
pub(crate) const BLOCKS_PER_SM: u32 = 32;

impl Stage {
    /// The most shared memory one block of this stage uses: dynamic plus static.
    pub fn shared_mem_bound(&self) -> usize {
        self.shared_mem_bytes as usize + static_smem_bound(&self.kernel)
    }
}

impl LaunchPlan {
    #[cfg(feature = "tools")]
    /// The planners' invariant: every stage's blocks fit the device's shared memory, static and
    /// dynamic together (the per-block limit covers both). Every plan must pass; the runtime
    /// checks it before it launches anything, so a planner bug is an error, not a launch that
    /// fails (or, on a GPU, an `cudaErrorInvalidValue` far from its cause).
    pub fn check_shared_memory(&self, limits: &DeviceLimits) -> Result<(), String> {
        check_shared_memory(&self.stages, limits).map_err(|(_, detail)| detail)
    }

    pub(crate) fn single(kernel: KernelConfig, grid: u32, shared_mem_bytes: u32) -> LaunchPlan {
        LaunchPlan {
            stages: vec![Stage {
                kernel,
                grid: (grid, 1),
                block: kernel.threads_per_block(),
                shared_mem_bytes,
            }],
            workspace_floats: 0,
            chunk_cols: 0,
        }
    }
}

/// [`LaunchPlan::check_shared_memory`] for the stages of a plan: the first stage whose blocks do
/// not fit the device's shared memory, and why in words.
pub fn check_shared_memory(
    stages: &[Stage],
    limits: &DeviceLimits,
) -> Result<(), (KernelConfig, String)> {
    let limit = limits.max_shared_mem_per_block as usize;
    match stages.iter().find(|s| s.shared_mem_bound() > limit) {
        None => Ok(()),
        Some(s) => Err((
            s.kernel,
            format!(
                "{} would use up to {} bytes of shared memory a block ({} dynamic + {} static), more than the \
             device's {limit}",
                s.kernel.name(),
                s.shared_mem_bound(),
                s.shared_mem_bytes,
                static_smem_bound(&s.kernel)
            ),
        )),
    }
}
