//! Planning: pure functions from (problem, device limits) to (kernels, geometry).
//! No backend is involved, so every dispatch decision is unit-tested here.
//!
//! Families, by row length (elements per row = `cols`):
//! - `cols <= 2048`: the warp family, the row in registers: `width` lanes per row (several rows
//!   per warp below 256 columns), at least 8 elements per lane (16-byte packs when rows are
//!   aligned);
//! - row fits in shared memory as f32: a block per row, the row on chip (global traffic 1.0x);
//! - longer: a block per row, online (max, sum) pass then a write pass (traffic 1.5x);
//! - few long rows (fewer rows than SMs, at least SPLIT_MIN_COLS): split-row, two kernels over
//!   a (chunks x rows) grid with a small workspace of per-chunk (max, sum) states.
//!
//! One module a job: [`op`] (what is computed), [`registry`] (every entry point), [`rows`],
//! [`strided`] and [`cross_entropy`] (the planners), [`plan`] (what they return and its
//! invariant), [`shared_memory`] (on-chip sizing) and [`limits`] (what a device allows).

// (The re-exports are the crate's internal paths and, with `tools`, the tools' planner module.)
#![cfg_attr(not(feature = "tools"), allow(unused_imports))]
// (What op.rs and registry.rs take from their parent: build.rs compiles them too, beside its own.)
use crate::types::dtype::Dtype;

pub mod cross_entropy;
pub mod limits;
pub mod op;
pub mod plan;
pub mod registry;
pub mod rows;
pub mod shared_memory;
pub mod strided;

pub use cross_entropy::*;
pub use limits::*;
pub use op::*;
pub use plan::*;
pub use registry::*;
pub use rows::*;
pub use shared_memory::*;
pub use strided::*;

#[cfg(test)]
mod tests;
