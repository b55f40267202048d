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

// The layers, bottom up: types (elements, tensors, errors), planning (pure: which kernels and
// geometry), runtime (devices, the CUDA and emulator backends), ops (the public operations).
// docs/architecture.md describes them.
mod ops;
mod planning;
mod runtime;
mod types;

#[cfg(feature = "tools")]
#[doc(hidden)]
pub mod tools;

pub use half::{bf16, f16};
pub use ops::cross_entropy::{CrossEntropy, CrossEntropyOutput, Reduction};
pub use ops::softmax::{
    SCALE_MAX, SCALE_MIN, log_softmax, log_softmax_backward, log_softmax_into, logsumexp, softmax,
    softmax_backward, softmax_inplace, softmax_into,
};
pub use ops::softmax_op::Softmax;
pub use runtime::device::Device;
pub use runtime::emulator::{EmulatorConfig, LaunchStats, Schedule, emulator_fma_available};
pub use types::borrow::{TensorMut, TensorRef};
pub use types::element::{Dtype, Element, Index, TensorElement};
pub use types::error::{Error, Result};
pub use types::tensor::DeviceTensor;

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
