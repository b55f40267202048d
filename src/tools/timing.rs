//! GPU timing with CUDA events on the device's stream, shared by the main job and the benches.
//! Bandwidth is the bytes that must move (input read once + output written once) over time.
//! Following the project's measuring method: warm up first, take the median of several timed
//! batches, and rotate among enough buffers that the working set cannot sit in L2.

use cudarc::driver::sys::CUevent_flags;

use crate::ops::softmax::softmax_into;
use crate::runtime::device::Device;
use crate::types::element::Element;
use crate::types::error::{Error, Result};
use crate::types::tensor::DeviceTensor;

/// Rotated buffers add up to at least this many bytes (several times any current L2).
pub const ROTATION_BYTES: usize = 256 << 20;

fn needs_gpu(what: &str) -> Error {
    Error::Launch {
        kernel: what.into(),
        detail: "CUDA-event timing needs a GPU device".into(),
    }
}

/// Median over `reps` batches of the mean milliseconds per call of `f(i)` (i counts calls, for
/// rotating inputs), after `warmup` calls; each batch is timed by two events on the stream.
pub fn median_ms(
    device: &Device,
    warmup: usize,
    reps: usize,
    iters: usize,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<f64> {
    let stream = device.cuda_stream().ok_or_else(|| needs_gpu("timing"))?;
    let ctx = stream.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| Error::driver("cuEventCreate", e))
    };
    let (start, end) = (event()?, event()?);
    let mut call = 0;
    for _ in 0..warmup {
        f(call)?;
        call += 1;
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        start
            .record(stream)
            .map_err(|e| Error::driver("cuEventRecord", e))?;
        for _ in 0..iters.max(1) {
            f(call)?;
            call += 1;
        }
        end.record(stream)
            .map_err(|e| Error::driver("cuEventRecord", e))?;
        end.synchronize()
            .map_err(|e| Error::driver("cuEventSynchronize", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| Error::driver("cuEventElapsedTime", e))?;
        samples.push(ms as f64 / iters.max(1) as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// How many input/output pairs of `bytes_moved` bytes each make at least ROTATION_BYTES (at most
/// 64: past that, launch overheads are measured, not caches).
pub fn rotation_count(bytes_moved: usize) -> usize {
    ROTATION_BYTES.div_ceil(bytes_moved.max(1)).clamp(1, 64)
}

/// Input/output pairs of one shape, enough of them to exceed ROTATION_BYTES together, filled with
/// random logits (never zeros).
pub struct SoftmaxWorkload<T: Element> {
    pairs: Vec<(DeviceTensor<T>, DeviceTensor<T>)>,
    /// Bytes one softmax must move: input read once plus output written once.
    pub bytes_moved: usize,
}

impl<T: Element> SoftmaxWorkload<T> {
    /// Allocates and fills the pairs for `rows` x `cols` on `device`.
    pub fn new(device: &Device, rows: usize, cols: usize, seed: u64) -> Result<Self> {
        let too_large = || Error::ShapeTooLarge {
            shape: vec![rows, cols],
        };
        let n = rows.checked_mul(cols).ok_or_else(too_large)?;
        let bytes_moved = n.checked_mul(2 * size_of::<T>()).ok_or_else(too_large)?;
        let count = rotation_count(bytes_moved);
        let mut rng = crate::tools::check::Rng::new(seed);
        let pairs = (0..count)
            .map(|_| {
                let x = DeviceTensor::from_host(device, &rng.logits::<T>(n, 4.0), &[rows, cols])?;
                let y = DeviceTensor::uninit(device, &[rows, cols])?;
                Ok((x, y))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SoftmaxWorkload { pairs, bytes_moved })
    }

    /// How many input/output pairs the workload rotates over.
    pub fn pairs(&self) -> usize {
        self.pairs.len()
    }

    /// Runs softmax on pair `i` (modulo the number of pairs).
    pub fn run(&mut self, i: usize) -> Result<()> {
        let k = i % self.pairs.len();
        let (x, y) = &mut self.pairs[k];
        softmax_into(x, y)
    }

    /// Median milliseconds per softmax.
    pub fn time_ms(&mut self, reps: usize, iters: usize) -> Result<f64> {
        let device = self.pairs[0].0.device().clone();
        median_ms(&device, 3, reps, iters, |i| self.run(i))
    }
}

/// Median milliseconds per device-to-device copy of `bytes` bytes: the bandwidth yardstick.
pub fn time_copy(device: &Device, bytes: usize, reps: usize, iters: usize) -> Result<f64> {
    let stream = device.cuda_stream().ok_or_else(|| needs_gpu("copy"))?;
    let src = stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| Error::driver("cuMemAlloc", e))?;
    let mut dst = stream
        .alloc_zeros::<u8>(bytes)
        .map_err(|e| Error::driver("cuMemAlloc", e))?;
    median_ms(device, 3, reps, iters, |_| {
        stream
            .memcpy_dtod(&src, &mut dst)
            .map_err(|e| Error::driver("cuMemcpyDtoDAsync", e))
    })
}

/// GB/s for moving `bytes_moved` bytes in `ms` milliseconds.
pub fn gb_per_s(bytes_moved: usize, ms: f64) -> f64 {
    bytes_moved as f64 / (ms * 1e-3) / 1e9
}
