//! The main job: `cargo run --release`.
//! On a GPU: a correctness self-check of every kernel family and dtype against the f64
//! reference, then a bandwidth table (GB/s and the ratio to a device-to-device copy measured in
//! the same run). Without a GPU: the same self-check on the CPU SIMT emulator, the emulator's
//! speed and traffic counts, and a plain statement that no GPU was found.
//!
//! Options: --emulator (skip the GPU even if present), --seed N.
//!
//! `cuda-softmax sweep --out DIR`: the benchmark sweep with plots (cli/src/sweep.rs).

mod plot;
mod sweep;

use std::process::ExitCode;
use std::time::Instant;

use cuda_softmax::tools::check::{Rng, Tolerance, compare};
use cuda_softmax::tools::reference;
use cuda_softmax::tools::timing::{SoftmaxWorkload, gb_per_s, time_copy};
use cuda_softmax::{
    Device, DeviceTensor, Element, EmulatorConfig, Schedule, bf16, f16, softmax, softmax_into,
};

/// Shapes that reach every family on this device: several rows per warp, a warp per row (vector
/// and scalar), a block per row, split-row (few long rows) and online (a long row per SM).
fn check_shapes(device: &Device) -> Vec<(usize, usize)> {
    let limits = device.limits();
    let online_cols = limits.max_shared_mem_per_block as usize / 4;
    vec![
        (257, 7),
        (257, 100),
        (257, 1023),
        (257, 1024),
        (9, 4000),
        (3, 70_000),
        (2, 300_000),
        (limits.sm_count as usize, online_cols),
    ]
}

/// Checks every family for one dtype; returns (shapes checked, worst error/allowance, worst
/// relative error over probabilities above 1e-3).
fn self_check_dtype<T: Element>(
    device: &Device,
    rng: &mut Rng,
) -> Result<(usize, f64, f64), String> {
    let (mut cases, mut worst_ratio, mut worst_rel) = (0, 0.0f64, 0.0f64);
    for (rows, cols) in check_shapes(device) {
        let x: Vec<T> = rng.logits(rows * cols, 8.0);
        let xt = DeviceTensor::from_host(device, &x, &[rows, cols]).map_err(|e| e.to_string())?;
        let mut y = DeviceTensor::from_host(device, &vec![T::poison(); rows * cols], &[rows, cols])
            .map_err(|e| e.to_string())?;
        softmax_into(&xt, &mut y).map_err(|e| e.to_string())?;
        let got = y.to_host().map_err(|e| e.to_string())?;
        let want = reference::softmax_rows(&x.iter().map(|v| v.to_f64()).collect::<Vec<_>>(), cols);
        let c = compare(&got, &want, Tolerance::softmax(T::DTYPE));
        if !c.passed() {
            return Err(format!("{} {rows}x{cols}: {c}", T::DTYPE.name()));
        }
        cases += 1;
        worst_ratio = worst_ratio.max(c.worst_ratio);
        worst_rel = worst_rel.max(c.max_rel_error);
    }
    Ok((cases, worst_ratio, worst_rel))
}

fn self_check(device: &Device, seed: u64) -> bool {
    println!("self-check on {} (seed {seed}):", device.name());
    let mut rng = Rng::new(seed);
    let results = [
        ("f32", self_check_dtype::<f32>(device, &mut rng)),
        ("f16", self_check_dtype::<f16>(device, &mut rng)),
        ("bf16", self_check_dtype::<bf16>(device, &mut rng)),
    ];
    let mut ok = true;
    for (name, r) in results {
        match r {
            Ok((n, ratio, rel)) => println!(
                "  {name:<5} {n} shapes match the f64 reference (worst error {:.2} of the allowance, max relative error {rel:.1e})",
                ratio
            ),
            Err(e) => {
                println!("  {name:<5} FAILED: {e}");
                ok = false;
            }
        }
    }
    ok
}

fn bandwidth_row<T: Element>(
    device: &Device,
    rows: usize,
    cols: usize,
    copy_gbs: f64,
) -> Result<(), String> {
    let mut work = SoftmaxWorkload::<T>::new(device, rows, cols, 7).map_err(|e| e.to_string())?;
    let ms = work.time_ms(7, 10).map_err(|e| e.to_string())?;
    let gbs = gb_per_s(work.bytes_moved, ms);
    println!(
        "  {:>6} x {:<7} {:<5} {:>9.4} ms {:>8.1} GB/s {:>6.2} of copy",
        rows,
        cols,
        T::DTYPE.name(),
        ms,
        gbs,
        gbs / copy_gbs
    );
    Ok(())
}

fn bandwidth_table(device: &Device) -> Result<(), String> {
    // The copy yardstick: 256 MiB each way, long enough to reach the sustained rate.
    let bytes = 256 << 20;
    let copy_ms = time_copy(device, bytes, 7, 10).map_err(|e| e.to_string())?;
    let copy_gbs = gb_per_s(2 * bytes, copy_ms);
    println!(
        "bandwidth on {} (device-to-device copy: {copy_gbs:.1} GB/s read+write):",
        device.name()
    );
    let shapes = [
        (65536, 128),
        (16384, 1024),
        (16384, 1152),
        (8192, 4096),
        (2048, 32768),
        (32, 131072),
        (8, 262144),
    ];
    for (rows, cols) in shapes {
        bandwidth_row::<f32>(device, rows, cols, copy_gbs)?;
        bandwidth_row::<f16>(device, rows, cols, copy_gbs)?;
        bandwidth_row::<bf16>(device, rows, cols, copy_gbs)?;
    }
    Ok(())
}

/// Emulated threads per second on one core, and the traffic each family moves.
fn emulator_report() -> Result<(), String> {
    let device = Device::emulator_with(
        EmulatorConfig::default()
            .schedule(Schedule::Forward)
            .workers(1),
    );
    println!("emulator (one core):");
    for (rows, cols) in [
        (1024, 128),
        (4096, 1024),
        (64, 4000),
        (4, 70_000),
        (8, 70_000),
    ] {
        let x = DeviceTensor::<f32>::from_host(
            &device,
            &Rng::new(1).logits(rows * cols, 4.0),
            &[rows, cols],
        )
        .map_err(|e| e.to_string())?;
        let start = Instant::now();
        softmax(&x).map_err(|e| e.to_string())?;
        let secs = start.elapsed().as_secs_f64();
        let s = device
            .last_launch_stats()
            .expect("emulator launches record statistics");
        let min = (2 * rows * cols * 4) as f64;
        println!(
            "  {rows:>5} x {cols:<6} {:<58} {:>9.0} threads/s  traffic {:.2}x of minimum, {:>3.0}% of accesses 16 B in the source",
            s.kernel,
            s.threads as f64 / secs,
            (s.kernel_bytes_read + s.kernel_bytes_written) as f64 / min,
            100.0 * s.accesses_16b as f64 / s.accesses.max(1) as f64
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "sweep") {
        return match sweep::parse(&args[2..]) {
            Ok(opts) => sweep::run(&opts),
            Err(e) => {
                eprintln!("{e}\n{}", sweep::USAGE);
                ExitCode::from(2)
            }
        };
    }
    let force_emulator = args.iter().any(|a| a == "--emulator");
    let seed = args
        .iter()
        .position(|a| a == "--seed")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(Rng::seed_from_env);

    let gpu = if force_emulator {
        None
    } else {
        Some(Device::cuda(0))
    };
    match gpu {
        Some(Ok(device)) => {
            let ok = self_check(&device, seed);
            if !ok {
                return ExitCode::FAILURE;
            }
            if let Err(e) = bandwidth_table(&device) {
                println!("bandwidth table failed: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) if std::env::var("CS_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            println!("CS_REQUIRE_GPU=1 but no GPU could be opened: {e}");
            ExitCode::FAILURE
        }
        other => {
            match other {
                Some(Err(e)) => {
                    println!("No GPU found: {e}\nRunning on the CPU SIMT emulator instead.\n")
                }
                _ => println!("--emulator: running on the CPU SIMT emulator.\n"),
            }
            let ok = self_check(&Device::emulator(), seed);
            if let Err(e) = emulator_report() {
                println!("emulator report failed: {e}");
                return ExitCode::FAILURE;
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
