//! `cargo run --release --bin driver-probe`: says in one line whether this machine's NVIDIA driver
//! can run cuda-softmax, and if not, what is wrong and what to do.
//!
//! With `--exercise` it then drives every path of the API that reaches the driver: allocation
//! (plain, zeroed, from host), copies both ways, each kernel family for each dtype (into a new
//! tensor, into a view, in place), preloading, event timing and a device-to-device copy, buffers
//! handed to cudarc and back, a context and stream of the caller's own, and teardown. It checks no values (the main job does): it exists so that
//! `cli/tests/driver_probe.rs` can run the whole API against stand-in driver libraries.
//!
//! Any panic aborts the process, exactly as under `panic = "abort"`: the crate must turn every
//! driver problem into an error without relying on unwinding. Exit status: 0 when the device
//! opened (and the exercise succeeded), 2 when the crate returned an error.

use std::process::ExitCode;

use cudarc::driver::CudaContext;

use cuda_softmax::tools::timing::{median_ms, time_copy};
use cuda_softmax::{
    Device, DeviceTensor, Element, Error, Result, bf16, f16, softmax, softmax_inplace, softmax_into,
};

/// Row shapes that reach every kernel family (as the main job's self-check picks them).
fn shapes(device: &Device) -> Vec<(usize, usize)> {
    let limits = device.limits();
    vec![
        (257, 7),
        (257, 1000),
        (9, 4000),
        (3, 70_000),
        (2, 300_000),
        (
            limits.sm_count as usize,
            limits.max_shared_mem_per_block as usize / 4,
        ),
    ]
}

fn exercise_dtype<T: Element>(device: &Device) -> Result<usize> {
    let mut launches = 0;
    for (rows, cols) in shapes(device) {
        let host = vec![T::from_f64(0.5); rows * cols];
        let x = DeviceTensor::from_host(device, &host, &[rows, cols])?;
        let y = softmax(&x)?;
        let out = DeviceTensor::<T>::zeros(device, &[rows, cols])?;
        softmax_into(&x.rows(0, rows)?, &mut out.rows(0, rows)?)?;
        let mut z = DeviceTensor::<T>::uninit(device, &[rows, cols])?;
        z.copy_from_host(&host)?;
        softmax_inplace(&mut z)?;
        for t in [&y, &out, &z] {
            t.to_host()?;
        }
        launches += 3;
    }
    Ok(launches)
}

fn exercise(device: &Device) -> Result<String> {
    let kernels = device.preload_kernels()?;
    let launches = exercise_dtype::<f32>(device)?
        + exercise_dtype::<f16>(device)?
        + exercise_dtype::<bf16>(device)?;
    let x = DeviceTensor::<f32>::zeros(device, &[64, 1024])?;
    let mut y = DeviceTensor::<f32>::uninit(device, &[64, 1024])?;
    let ms = median_ms(device, 1, 3, 2, |_| softmax_into(&x, &mut y))?;
    let copy_ms = time_copy(device, 1 << 20, 3, 2)?;
    device.synchronize()?;
    // A buffer handed to cudarc and back.
    let t = DeviceTensor::<f32>::from_host(device, &[1.0, 2.0, 3.0], &[1, 3])?;
    let slice = t.into_cuda_slice().map_err(|_| Error::ForeignBuffer)?;
    softmax(&DeviceTensor::from_cuda_slice(device, slice, &[1, 3])?)?.to_host()?;
    // A caller's own context (event tracking on) and stream, released through this crate's
    // handles: the last drop destroys the stream.
    let driver = |e| Error::Driver {
        call: "cudarc",
        detail: format!("{e:?}"),
    };
    let ctx = CudaContext::new(0).map_err(driver)?;
    let stream = ctx.new_stream().map_err(driver)?;
    let slice = stream.alloc_zeros::<f32>(3 * 1024).map_err(driver)?;
    drop(ctx);
    let theirs = Device::cuda_on_stream(stream)?;
    let wrapped = DeviceTensor::from_cuda_slice(&theirs, slice, &[3, 1024])?;
    softmax(&wrapped)?.to_host()?;
    drop((wrapped, theirs));
    Ok(format!(
        "exercised: {kernels} kernels preloaded, {launches} softmax calls, timing {ms:.3} ms, copy {copy_ms:.3} ms"
    ))
}

fn main() -> ExitCode {
    // As under panic = "abort": the default message, then abort (no unwinding to catch).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let exercise_too = std::env::args().any(|a| a == "--exercise");
    // The driver library first: this check needs no GPU image.
    if let Err(e) = cuda_softmax::tools::driver::check() {
        println!("error: {e}");
        return ExitCode::from(2);
    }
    let device = match Device::cuda(0) {
        Ok(device) => device,
        Err(e) => {
            println!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let limits = device.limits();
    println!(
        "device: {} ({} SMs, {} bytes of shared memory per block)",
        device.name(),
        limits.sm_count,
        limits.max_shared_mem_per_block
    );
    if exercise_too {
        match exercise(&device) {
            Ok(summary) => println!("{summary}"),
            Err(e) => {
                println!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
