//! The same correctness suite on a real GPU (device 0). A plain harness (not libtest), so that a
//! machine without a GPU reports the suites as skipped in its summary line ("0 passed, 0 failed,
//! 6 skipped") instead of counting them as passed. CS_REQUIRE_GPU=1 (set by
//! scripts/gpu-check.sh) turns a skip into a failure. Arguments that do not start with `--` select
//! suites by name, like libtest filters.

mod common;

use std::process::ExitCode;

use cuda_softmax::{Device, bf16, f16};

/// Every entry point the planner can pick resolves in the image on this GPU, and one launch per
/// family, dtype and access path (16-byte and scalar) matches the reference.
fn every_entry_point_loads(d: &Device) {
    let n = d.preload_kernels().expect("every entry point resolves");
    println!("{n} entry points resolved");
    let mut rng = common::seeded_rng("gpu_every_entry_point_loads");
    common::family_sweep::<f32>(d, &mut rng);
    common::family_sweep::<f16>(d, &mut rng);
    common::family_sweep::<bf16>(d, &mut rng);
    common::cross_entropy::entry_point_sweep::<f32>(d, &mut rng);
    common::cross_entropy::entry_point_sweep::<f16>(d, &mut rng);
    common::cross_entropy::entry_point_sweep::<bf16>(d, &mut rng);
}

/// The cross-entropy suite (every option, mode, dtype and edge shape; logits near the dtype's
/// maximum and with large offsets) against the f64 reference.
fn cross_entropy(d: &Device) {
    use common::cross_entropy::*;
    suite::<f32>(d, "gpu_cross_entropy_f32");
    suite::<f16>(d, "gpu_cross_entropy_f16");
    suite::<bf16>(d, "gpu_cross_entropy_bf16");
    values_near_the_dtype_maximum(d);
    large_common_offset(d);
}

/// Zero-copy interop on cudarc memory: the image is loaded once per context (two `Device`s on
/// two streams of one context share it), softmax reads a borrowed `CudaView` and writes a
/// borrowed `CudaSlice` in place, overlapping borrows are refused, and memory on another stream
/// or context is refused.
fn interop(d: &Device) {
    use cuda_softmax::{DeviceTensor, Error, softmax_inplace, softmax_into};
    let ctx = d.cuda_stream().expect("a GPU device").context().clone();
    let loads = Device::cuda_module_loads();
    let s1 = ctx.new_stream().unwrap();
    let s2 = ctx.new_stream().unwrap();
    let d1 = Device::cuda_on_stream(s1.clone()).unwrap();
    let d2 = Device::cuda_on_stream(s2.clone()).unwrap();
    assert!(d1.shares_module_with(&d2) && d1.shares_module_with(d));
    assert_eq!(
        Device::cuda_module_loads(),
        loads,
        "no new load for a known context"
    );

    let (rows, cols) = (3usize, 40usize);
    let data: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37) % 23) as f32 * 0.25)
        .collect();
    // Input padded with 5 elements in front: the borrow starts at element offset 5.
    let mut padded = vec![0.0f32; 5];
    padded.extend_from_slice(&data);
    let xs = s1.clone_htod(&padded).unwrap();
    let mut ys = s1.alloc_zeros::<f32>(rows * cols).unwrap();
    let view = xs.slice(5..);
    let x = DeviceTensor::borrow_cuda(&d1, &view, 0, &[rows, cols]).unwrap();
    let mut y = DeviceTensor::borrow_cuda_mut(&d1, &mut ys, 0, &[rows, cols]).unwrap();
    y.with_mut(|y| softmax_into(&x, y)).unwrap();
    let owned = DeviceTensor::from_host(&d1, &data, &[rows, cols]).unwrap();
    let want = cuda_softmax::softmax(&owned).unwrap().to_host().unwrap();
    // The borrow starts 20 bytes into its allocation: another access path than the owned
    // copy's, so the sums may round differently.
    let got = y.to_host().unwrap();
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        worst < 1e-6,
        "borrowed result differs from the owned one by {worst}"
    );
    drop(y);
    assert_eq!(
        s1.clone_dtoh(&ys).unwrap(),
        got,
        "written in the caller's memory"
    );

    // Two borrows of the same memory that partly overlap are refused; identical is in place.
    {
        let mut xm = DeviceTensor::borrow_cuda_mut(&d1, &mut ys, 0, &[rows * cols]).unwrap();
        // SAFETY: the same memory as `xm`, used on d1's stream only, within this block.
        let shifted = unsafe {
            DeviceTensor::<f32>::from_raw_parts(&d1, xm.device_addr() + 4, &[rows * cols - 1])
        }
        .unwrap();
        let mut tail = xm.view_mut(0, &[rows * cols - 1]).unwrap();
        assert_eq!(
            tail.with_mut(|t| softmax_into(&shifted, t)),
            Err(Error::PartialOverlap)
        );
        xm.with_mut(softmax_inplace).unwrap();
    }
    // Another stream of the context is refused by the safe borrow (ordering), another device kind too.
    assert!(matches!(
        DeviceTensor::borrow_cuda(&d2, &xs, 0, &[4]),
        Err(Error::BadBorrow { .. })
    ));
    assert!(matches!(
        DeviceTensor::borrow_cuda(&Device::emulator(), &xs, 0, &[4]),
        Err(Error::BadBorrow { .. })
    ));
    assert!(matches!(
        DeviceTensor::borrow_cuda(&d1, &xs, 3, &[rows * cols + 3]),
        Err(Error::OutOfRange { .. })
    ));
    d1.synchronize().unwrap();
}

type Suite = (&'static str, fn(&Device));

const SUITES: [Suite; 6] = [
    ("gpu_f32", |d| common::full_suite::<f32>(d, "gpu_f32")),
    ("gpu_f16", |d| common::full_suite::<f16>(d, "gpu_f16")),
    ("gpu_bf16", |d| common::full_suite::<bf16>(d, "gpu_bf16")),
    ("gpu_every_entry_point_loads", every_entry_point_loads),
    ("gpu_cross_entropy", cross_entropy),
    ("gpu_interop", interop),
];

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let selected: Vec<&Suite> = SUITES
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let require = std::env::var("CS_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let device = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) if require => {
            println!("CS_REQUIRE_GPU=1 but no GPU could be opened: {e}");
            println!("gpu: 0 passed, {} failed", selected.len());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("SKIPPED: no GPU, the GPU suites did not run ({e})");
            println!("gpu: 0 passed, 0 failed, {} skipped", selected.len());
            return ExitCode::SUCCESS;
        }
    };
    println!("running {} GPU suites on {}", selected.len(), device.name());
    let (mut passed, mut failed) = (0, 0);
    for (name, suite) in selected {
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| suite(&device))).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("gpu: {passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
