//! The project's own tools, for its CLI (cli/), tests and benches: not the supported API (hidden
//! from the docs, no semver promise), and only with the crate feature `tools`.
//!
//! - [`check`]: seeded random inputs and the tolerance comparison every test uses;
//! - [`mod@reference`]: the f64 CPU reference of every op;
//! - [`sass`]: the SASS census (instruction classes, access widths, loops);
//! - [`timing`]: workloads and GB/s for the main job and the sweep;
//! - [`occupancy`]: the occupancy model the SASS gate checks plans against;
//! - [`planner`], [`image`], [`driver`]: the library's internals that tests check.

pub mod check;
pub mod occupancy;
pub mod reference;
pub mod sass;
pub mod timing;

/// The planners and the kernel registry (crate::planning).
pub mod planner {
    pub use crate::planning::*;
}

/// The embedded GPU image.
pub mod image {
    pub use crate::runtime::image::*;
}

/// The driver checks made before cudarc calls into the driver.
pub mod driver {
    pub use crate::runtime::driver::*;
}

pub use crate::runtime::emulator::{
    conversions as emulator_conversions, emulator_build_warnings, emulator_fma_kernel_names,
    emulator_kernel_names,
};
