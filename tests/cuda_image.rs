//! Checks of the embedded GPU image, when the crate was built with nvcc: every entry point for
//! every dtype, a PTX version a CUDA 13.0 driver loads, and no spills or stack frames in
//! `ptxas -v` for sm_80 and sm_90. Without nvcc the tests say they skipped, unless
//! CS_REQUIRE_CUDA_IMAGE=1 (set by .ci/run, which installs the pinned toolkit first).

use cuda_softmax::image;
use cuda_softmax::planner::KernelConfig;

fn image_or_skip(test: &str) -> Option<(&'static str, &'static str)> {
    match (image::PTX, image::PTXAS_REPORT) {
        (Some(ptx), Some(report)) => Some((ptx, report)),
        _ => {
            if std::env::var("CS_REQUIRE_CUDA_IMAGE").is_ok_and(|v| v == "1") {
                panic!("{test}: CS_REQUIRE_CUDA_IMAGE=1 but the crate was built without nvcc");
            }
            skip_notice(&format!(
                "{test}: SKIPPED, the crate was built without nvcc (run scripts/install-nvcc.sh)"
            ));
            None
        }
    }
}

/// (kernel, arch) -> (registers, stack frame bytes, spill store bytes, spill load bytes)
fn ptxas_table(report: &str) -> Vec<(String, String, u32, u32, u32, u32)> {
    let mut rows = Vec::new();
    let mut current: Option<(String, String)> = None;
    let mut frame = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let name = parts.next().unwrap_or_default().to_string();
            let arch = parts.nth(1).unwrap_or_default().to_string();
            current = Some((name, arch));
        } else if line.contains("bytes stack frame") {
            let nums: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|s| s.parse().ok())
                .collect();
            frame = Some((nums[0], nums[1], nums[2]));
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs: u32 = rest.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
            if let (Some((name, arch)), Some((stack, st, ld))) = (current.take(), frame.take()) {
                rows.push((name, arch, regs, stack, st, ld));
            }
        }
    }
    rows
}

#[test]
fn every_entry_point_is_in_the_ptx() {
    let Some((ptx, _)) = image_or_skip("every_entry_point_is_in_the_ptx") else {
        return;
    };
    for k in KernelConfig::all() {
        let needle = format!(".entry {}(", k.name());
        assert!(ptx.contains(&needle), "{} missing from the PTX", k.name());
    }
    // And nothing the planner cannot reach: the image and the planner agree exactly.
    let entries = ptx.matches(".entry ").count();
    assert_eq!(entries, KernelConfig::all().len());
}

#[test]
fn ptx_version_is_one_a_cuda_13_0_driver_loads() {
    let Some(_) = image_or_skip("ptx_version_is_one_a_cuda_13_0_driver_loads") else {
        return;
    };
    let (major, minor) = image::PTX_VERSION
        .split_once('.')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .expect("PTX .version is major.minor");
    println!(
        "toolkit {} -> PTX ISA {major}.{minor}; image targets {}",
        image::TOOLKIT_VERSION,
        image::ARCHS
    );
    assert!(
        (major, minor) <= (9, 0),
        "PTX ISA {major}.{minor} needs a driver newer than CUDA 13.0"
    );
    assert!(
        image::ARCHS.contains("compute_"),
        "the image carries no PTX fallback"
    );
    assert!(
        !image::ARCHS.contains("90a"),
        "arch-specific (sm_90a) code is not forward compatible"
    );
}

#[test]
fn no_spills_or_stack_frames_on_sm80_and_sm90() {
    let Some((_, report)) = image_or_skip("no_spills_or_stack_frames_on_sm80_and_sm90") else {
        return;
    };
    let table = ptxas_table(report);
    if std::env::var("CUDA_COMPUTE_CAP").is_ok() {
        println!("CUDA_COMPUTE_CAP narrows the image; checking what was built");
    }
    for arch in ["sm_80", "sm_90"] {
        let rows: Vec<_> = table.iter().filter(|r| r.1 == arch).collect();
        if rows.is_empty() && std::env::var("CUDA_COMPUTE_CAP").is_ok() {
            continue;
        }
        assert_eq!(
            rows.len(),
            KernelConfig::all().len(),
            "{arch}: kernels in the ptxas report"
        );
        for (name, _, regs, stack, st, ld) in rows {
            println!("{arch} {name:<32} {regs:>3} registers");
            assert_eq!(
                (*stack, *st, *ld),
                (0, 0, 0),
                "{name} on {arch}: stack frame / spills"
            );
        }
    }
}

/// Written to stderr directly, not through println!, so that it shows even when the test
/// harness captures output of passing tests.
fn skip_notice(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}
