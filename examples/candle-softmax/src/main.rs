//! cuda-softmax's softmax as a candle `CustomOp1`: the kernels read candle's CUDA memory in
//! place (honouring the layout's start offset) and write a new candle buffer, all on candle's
//! own stream, with no copy. candle-core 0.11 uses cudarc 0.19 like cuda-softmax, so candle's
//! `CudaSlice` is borrowed directly (`DeviceTensor::borrow_cuda`); a framework on another cudarc
//! version would pass its device pointer to the unsafe `DeviceTensor::from_raw_parts` instead.
//!
//! `cargo run --release` (in this folder) runs it on a small tensor when a GPU is present and
//! compares with a softmax made of candle's own ops; without a GPU it says so and exits 0 (candle
//! links the driver library, so the program needs one installed to start at all). It needs
//! cuda-softmax built with nvcc (its GPU image); CI only type-checks it (`cargo check`).

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::{CudaDType, CudaStorage, CudaStorageSlice};
use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Result, Shape, Tensor};
use cuda_softmax::{DeviceTensor, Element, bf16, f16};

/// Softmax over the last dimension with cuda-softmax's kernels. Contiguous inputs only (any
/// start offset); other layouts are an error that says to call `.contiguous()` first.
#[derive(Default)]
pub struct Softmax {
    /// The cuda-softmax device on candle's stream, made on first use and kept while candle
    /// uses the same stream (making one is cheap, the GPU image being loaded once per context,
    /// but not free: it queries the device's attributes).
    device: Mutex<Option<(usize, cuda_softmax::Device)>>,
}

fn err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::msg(format!("cuda-softmax: {e}"))
}

impl Softmax {
    fn device_for(&self, stream: Arc<cudarc::driver::CudaStream>) -> Result<cuda_softmax::Device> {
        let key = Arc::as_ptr(&stream) as usize;
        let mut cached = self.device.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, device)) = &*cached
            && *k == key
        {
            return Ok(device.clone());
        }
        let device = cuda_softmax::Device::cuda_on_stream(stream).map_err(err)?;
        *cached = Some((key, device.clone()));
        Ok(device)
    }

    /// softmax of `input` (contiguous from `layout.start_offset()`, `layout.dims()`) into a new
    /// candle buffer on the same stream.
    fn run<T: Element + CudaDType + cudarc::driver::DeviceRepr>(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> Result<CudaStorage> {
        let dev = &storage.device;
        let device = self.device_for(dev.cuda_stream())?;
        let input = storage.as_cuda_slice::<T>()?;
        let dims = layout.dims();
        let x =
            DeviceTensor::borrow_cuda(&device, input, layout.start_offset(), dims).map_err(err)?;
        // SAFETY: every element is written by the softmax below before anyone reads it.
        let mut output = unsafe { dev.alloc::<T>(layout.shape().elem_count()) }?;
        DeviceTensor::borrow_cuda_mut(&device, &mut output, 0, dims)
            .map_err(err)?
            .with_mut(|y| cuda_softmax::softmax_into(&x, y))
            .map_err(err)?;
        Ok(CudaStorage::wrap_cuda_slice(output, dev.clone()))
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "cuda-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        Err(candle_core::Error::msg(
            "cuda-softmax runs on CUDA tensors only; use candle_nn::ops::softmax_last_dim on the CPU",
        ))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        if !layout.is_contiguous() {
            return Err(candle_core::Error::msg(
                "cuda-softmax needs a contiguous tensor (any start offset); call .contiguous() first",
            ));
        }
        let out = match &storage.slice {
            CudaStorageSlice::F32(_) => self.run::<f32>(storage, layout)?,
            CudaStorageSlice::F16(_) => self.run::<f16>(storage, layout)?,
            CudaStorageSlice::BF16(_) => self.run::<bf16>(storage, layout)?,
            _ => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    storage.dtype(),
                    "cuda-softmax (f32, f16, bf16)",
                ));
            }
        };
        Ok((out, layout.shape().clone()))
    }
}

/// Softmax over the last dimension from candle's own ops, in f32 (the reference).
fn reference(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn main() -> Result<()> {
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!(
                "no CUDA device, nothing to run ({e}); the example builds, which is what CI checks"
            );
            return Ok(());
        }
    };
    let op = Softmax::default();
    let all = Tensor::arange(0f32, 4.0 * 50.0, &gpu)?
        .reshape((4, 50))?
        .affine(0.37, -20.0)?
        .sin()?
        .affine(6.0, 0.0)?;
    let mut worst = 0f32;
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Rows 1..3: a contiguous layout with a start offset of 50 elements.
        let x = all.to_dtype(dtype)?.narrow(0, 1, 2)?;
        assert_eq!(x.layout().start_offset(), 50);
        let y = x.apply_op1_no_bwd(&op)?.to_dtype(DType::F32)?;
        let want = reference(&x)?;
        let diff = (y - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let tolerance = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
        println!("{dtype:?}: largest difference from candle's ops {diff:e}");
        if diff > tolerance {
            return Err(candle_core::Error::msg(format!(
                "{dtype:?}: softmax differs from the reference by {diff} (more than {tolerance})"
            )));
        }
        worst = worst.max(diff);
    }
    // A non-contiguous layout is an error, not a wrong answer.
    match all.t()?.apply_op1_no_bwd(&op) {
        Err(e) => println!("transposed input refused: {e}"),
        Ok(_) => return Err(candle_core::Error::msg("a transposed input was accepted")),
    }
    println!("ok: cuda-softmax matches candle (worst difference {worst:e})");
    Ok(())
}
