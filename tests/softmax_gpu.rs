//! The same correctness suite on a real GPU (device 0). Without one, each test says plainly that
//! it skipped, unless CS_REQUIRE_GPU=1 (set by scripts/gpu-check.sh), which turns a skip into a
//! failure.

mod common;

use cuda_softmax::{Device, bf16, f16};

fn gpu(test: &str) -> Option<Device> {
    match Device::cuda(0) {
        Ok(d) => {
            println!("{test}: running on {}", d.name());
            Some(d)
        }
        Err(e) => {
            if std::env::var("CS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: CS_REQUIRE_GPU=1 but no GPU could be opened: {e}");
            }
            skip_notice(&format!("{test}: SKIPPED, no GPU: {e}"));
            None
        }
    }
}

#[test]
fn gpu_f32() {
    if let Some(d) = gpu("gpu_f32") {
        common::full_suite::<f32>(&d, "gpu_f32");
    }
}

#[test]
fn gpu_f16() {
    if let Some(d) = gpu("gpu_f16") {
        common::full_suite::<f16>(&d, "gpu_f16");
    }
}

#[test]
fn gpu_bf16() {
    if let Some(d) = gpu("gpu_bf16") {
        common::full_suite::<bf16>(&d, "gpu_bf16");
    }
}

/// Every entry point the planner can pick resolves in the image on this GPU, and one launch per
/// family, dtype and access path (16-byte and scalar) matches the reference.
#[test]
fn gpu_every_entry_point_loads() {
    if let Some(d) = gpu("gpu_every_entry_point_loads") {
        let n = d.preload_kernels().expect("every entry point resolves");
        println!("{n} entry points resolved");
        let mut rng = common::seeded_rng("gpu_every_entry_point_loads");
        common::family_sweep::<f32>(&d, &mut rng);
        common::family_sweep::<f16>(&d, &mut rng);
        common::family_sweep::<bf16>(&d, &mut rng);
    }
}
/// Written to stderr directly, not through println!, so that it shows even when the test
/// harness captures output of passing tests.
fn skip_notice(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
