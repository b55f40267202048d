//! Hand-written CUDA softmax kernels for Rust, compiled at build time, loaded with cudarc, behind
//! a typed device-tensor API, with a CPU SIMT emulator that runs the very same kernel sources.
//!
//! ```no_run
//! use cuda_softmax::{Device, DeviceTensor, softmax};
//! # fn main() -> cuda_softmax::Result<()> {
//! let device = Device::cuda(0).unwrap_or_else(|_| Device::emulator());
//! let x = DeviceTensor::<f32>::from_host(&device, &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0], &[2, 3])?;
//! let y = softmax(&x)?;
//! let probabilities = y.to_host()?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod borrow;
pub mod check;
mod cross_entropy;
mod cuda;
mod device;
pub mod driver;
mod element;
mod emulator;
mod error;
pub mod image;
mod jit;
// (shared with build.rs: the user cache folder and the cache-key hash)
#[path = "../build/cache_paths.rs"]
mod cache_paths;
mod kernel;
pub mod occupancy;
mod op;
pub mod planner;
pub mod reference;
pub mod sass;
mod softmax;
mod tensor;
pub mod timing;

pub use borrow::{TensorMut, TensorRef};
pub use cross_entropy::{CrossEntropy, CrossEntropyOutput, Reduction};
pub use device::Device;
pub use element::{Dtype, Element, Index, TensorElement};
pub use emulator::{
    EmulatorConfig, LaunchStats, Schedule, conversions as emulator_conversions,
    emulator_build_warnings, emulator_fma_available, emulator_fma_kernel_names,
    emulator_kernel_names,
};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use op::Softmax;
pub use softmax::{
    SCALE_MAX, SCALE_MIN, log_softmax, log_softmax_backward, log_softmax_into, logsumexp, softmax,
    softmax_backward, softmax_inplace, softmax_into,
};
pub use tensor::DeviceTensor;

/// The README's example, compiled and run as a doctest so that it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeExample;

#[cfg(test)]
mod tests {
    fn send_and_sync<T: Send + Sync>() {}

    /// Devices and tensors can move to and be shared with other threads.
    #[test]
    fn handles_are_send_and_sync() {
        send_and_sync::<crate::Device>();
        send_and_sync::<crate::DeviceTensor<f32>>();
        send_and_sync::<crate::DeviceTensor<crate::bf16>>();
    }
}
