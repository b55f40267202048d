//! Checks of the embedded GPU image, when the crate was built with nvcc: every entry point for
//! every dtype, a PTX version a CUDA 13.0 driver loads, and no spills or stack frames in
//! `ptxas -v` for any architecture of the image (sm_80 and sm_90 among them). Without nvcc the tests say they skipped, unless
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

/// One kernel on one architecture, from `ptxas -v`.
struct PtxasRow {
    name: String,
    arch: String,
    registers: u32,
    stack_frame: u32,
    spill_stores: u32,
    spill_loads: u32,
    static_smem: u32,
}

fn ptxas_table(report: &str) -> Vec<PtxasRow> {
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
            let registers: u32 = rest.split(' ').next().unwrap_or("0").parse().unwrap_or(0);
            // "..., 272 bytes smem" (absent when the kernel has no static shared memory)
            let static_smem = rest
                .split(", ")
                .find_map(|part| part.strip_suffix(" bytes smem"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if let (Some((name, arch)), Some((stack_frame, spill_stores, spill_loads))) =
                (current.take(), frame.take())
            {
                rows.push(PtxasRow {
                    name,
                    arch,
                    registers,
                    stack_frame,
                    spill_stores,
                    spill_loads,
                    static_smem,
                });
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
    // The PTX must never be arch-specific (compute_90a is not forward compatible); arch-specific
    // SASS appears only when asked for with CUDA_COMPUTE_CAP=90a.
    let ptx_targets: Vec<&str> = image::ARCHS
        .split(',')
        .filter(|a| a.starts_with("compute_"))
        .collect();
    assert!(
        ptx_targets.iter().all(|a| a
            .trim_start_matches("compute_")
            .bytes()
            .all(|b| b.is_ascii_digit())),
        "arch-specific PTX is not forward compatible: {ptx_targets:?}"
    );
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        assert!(
            !image::ARCHS.contains('a'),
            "the default image holds no arch-specific code: {}",
            image::ARCHS
        );
    }
}

#[test]
fn no_spills_or_stack_frames_on_any_architecture() {
    let Some((_, report)) = image_or_skip("no_spills_or_stack_frames_on_any_architecture") else {
        return;
    };
    let table = ptxas_table(report);
    let sass: Vec<&str> = image::ARCHS
        .split(',')
        .filter(|a| a.starts_with("sm_"))
        .collect();
    // The full image must hold sm_80 and sm_90; one narrowed with CUDA_COMPUTE_CAP holds one
    // architecture. Either way every architecture in it is checked.
    if std::env::var("CS_REQUIRE_CUDA_IMAGE").is_ok_and(|v| v == "1") {
        assert!(
            sass.contains(&"sm_80") && sass.contains(&"sm_90"),
            "image targets {sass:?}"
        );
    }
    for arch in sass {
        let rows: Vec<_> = table.iter().filter(|r| r.arch == arch).collect();
        assert_eq!(
            rows.len(),
            KernelConfig::all().len(),
            "{arch}: kernels in the ptxas report"
        );
        for r in rows {
            println!(
                "{arch} {:<32} {:>3} registers {:>4} bytes static smem",
                r.name, r.registers, r.static_smem
            );
            assert_eq!(
                (r.stack_frame, r.spill_stores, r.spill_loads),
                (0, 0, 0),
                "{} on {arch}: stack frame / spills",
                r.name
            );
            // The planner sizes rows in shared memory around this reserve (and, for the
            // strided family, the warps' partial row states beside it).
            let config = KernelConfig::all()
                .into_iter()
                .find(|k| k.name() == r.name)
                .unwrap_or_else(|| panic!("{} is not in KernelConfig::all()", r.name));
            let partial_states = match config.family {
                cuda_softmax::planner::Family::Strided { slices, vec, .. } => {
                    cuda_softmax::planner::strided_static_smem_bytes(slices, vec)
                }
                _ => 0,
            };
            assert!(
                r.static_smem as usize
                    <= cuda_softmax::planner::STATIC_SMEM_RESERVE + partial_states,
                "{} on {arch}: {} bytes of static shared memory",
                r.name,
                r.static_smem
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
