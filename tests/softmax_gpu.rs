//! The same correctness suite on a real GPU (device 0). A plain harness (not libtest), so that a
//! machine without a GPU reports the suites as skipped in its summary line ("0 passed, 0 failed,
//! 5 skipped") instead of counting them as passed. CS_REQUIRE_GPU=1 (set by
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

type Suite = (&'static str, fn(&Device));

const SUITES: [Suite; 5] = [
    ("gpu_f32", |d| common::full_suite::<f32>(d, "gpu_f32")),
    ("gpu_f16", |d| common::full_suite::<f16>(d, "gpu_f16")),
    ("gpu_bf16", |d| common::full_suite::<bf16>(d, "gpu_bf16")),
    ("gpu_every_entry_point_loads", every_entry_point_loads),
    ("gpu_cross_entropy", cross_entropy),
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
