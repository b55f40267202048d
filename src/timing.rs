//! GPU timing with CUDA events on the device's stream, shared by the main job and the benches.
//! Bandwidth is bytes that must move (input read once + output written once) over time.

use cudarc::driver::sys::CUevent_flags;

use crate::device::Device;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::softmax::softmax_into;
use crate::tensor::DeviceTensor;

/// Mean milliseconds per call of `f` over `iters` calls (after `warmup` calls), measured
/// between two events on the device's stream. GPU devices only.
pub fn time_on_stream(
    device: &Device,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<f64> {
    let stream = device.cuda_stream().ok_or(Error::Launch {
        kernel: "timing".into(),
        detail: "CUDA-event timing needs a GPU device".into(),
    })?;
    let ctx = stream.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| Error::driver("cuEventCreate", e))
    };
    let (start, end) = (event()?, event()?);
    for _ in 0..warmup {
        f()?;
    }
    start
        .record(stream)
        .map_err(|e| Error::driver("cuEventRecord", e))?;
    for _ in 0..iters {
        f()?;
    }
    end.record(stream)
        .map_err(|e| Error::driver("cuEventRecord", e))?;
    end.synchronize()
        .map_err(|e| Error::driver("cuEventSynchronize", e))?;
    let ms = start
        .elapsed_ms(&end)
        .map_err(|e| Error::driver("cuEventElapsedTime", e))?;
    Ok(ms as f64 / iters.max(1) as f64)
}

/// Milliseconds per softmax of `x` into `y`.
pub fn time_softmax<T: Element>(
    x: &DeviceTensor<T>,
    y: &mut DeviceTensor<T>,
    iters: usize,
) -> Result<f64> {
    let device = x.device().clone();
    time_on_stream(&device, 3, iters, || softmax_into(x, y))
}

/// Milliseconds per device-to-device copy of `bytes` bytes: the bandwidth yardstick.
pub fn time_copy(device: &Device, bytes: usize, iters: usize) -> Result<f64> {
    let stream = device.cuda_stream().ok_or(Error::Launch {
        kernel: "copy".into(),
        detail: "needs a GPU device".into(),
    })?;
    let src = stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| Error::driver("cuMemAlloc", e))?;
    let mut dst = stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| Error::driver("cuMemAlloc", e))?;
    time_on_stream(device, 3, iters, || {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| Error::driver("cuMemcpyDtoDAsync", e))
    })
}

/// GB/s for moving `bytes_moved` bytes in `ms` milliseconds.
pub fn gb_per_s(bytes_moved: usize, ms: f64) -> f64 {
    bytes_moved as f64 / (ms * 1e-3) / 1e9
}
