//! Checks of the embedded GPU image, when the crate was built with a CUDA compiler: every
//! entry point for every dtype, a PTX ISA and driver floor that match what built it (ISA <= 8.0,
//! drivers >= 525, for the pinned CUDA 12 toolchain), the SASS targets really in the fatbin,
//! and no spills or stack frames in `ptxas -v` for any architecture of the image. Without a
//! compiler the tests say they skipped, unless CS_REQUIRE_CUDA_IMAGE=1 (set by .ci/run, which
//! installs the pinned toolchains first). CS_REQUIRE_IMAGE_DRIVER=525 (also set by .ci/run)
//! requires the image to load on that driver.

use cuda_softmax::tools::image;
use cuda_softmax::tools::planner::{Family, KernelConfig};

#[path = "../build/ptx_variants.rs"]
#[allow(dead_code)]
mod ptx_variants;

fn image_or_skip(test: &str) -> Option<(String, String)> {
    let required = std::env::var("CS_REQUIRE_CUDA_IMAGE").is_ok_and(|v| v == "1");
    if !image::has_image() {
        assert!(
            !required,
            "{test}: CS_REQUIRE_CUDA_IMAGE=1 but the crate was built without a CUDA compiler"
        );
        skip_notice(&format!(
            "{test}: SKIPPED, the crate was built without a CUDA compiler (run scripts/install-nvcc.sh)"
        ));
        return None;
    }
    match (image::ptx(), image::ptxas_report()) {
        (Some(ptx), Some(report)) => Some((ptx, report)),
        _ => {
            // The image is embedded, but its build folder (PTX text, ptxas report) is gone.
            assert!(!required, "{test}: the image's build folder is gone");
            skip_notice(&format!(
                "{test}: SKIPPED, the image's build folder is gone"
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
    assert_eq!(entries, KernelConfig::entry_names().len());
}

/// Every entry point of the PTX carries the launch bounds the registry gives it
/// (`threads_per_block`, `min_blocks_per_sm`; the backward block kernels three quarters of that
/// in PTX for sm_120 or newer, as an nvcc build for those GPUs ships): build.rs makes the
/// entries from the registry, and the planner launches by it.
#[test]
fn every_entry_point_has_the_registry_launch_bounds() {
    let Some((ptx, _)) = image_or_skip("every_entry_point_has_the_registry_launch_bounds") else {
        return;
    };
    let target: u32 = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".target sm_"))
        .and_then(|t| {
            t.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .expect("the PTX names its target");
    for k in KernelConfig::all() {
        let own_sm120_budget =
            target >= 120 && matches!(k.family, Family::Block { .. }) && k.op.is_backward();
        let min_blocks = if own_sm120_budget {
            ptx_variants::sm120_min_blocks(k.min_blocks_per_sm())
        } else {
            k.min_blocks_per_sm()
        };
        let start = ptx
            .find(&format!(".entry {}(", k.name()))
            .unwrap_or_else(|| panic!("{} missing from the PTX", k.name()));
        let header = &ptx[start..start + ptx[start..].find('{').expect("an entry has a body")];
        let directive = |name: &str| {
            header
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .unwrap_or_else(|| panic!("{}: no {name} directive", k.name()))
                .trim()
                .to_string()
        };
        assert_eq!(
            directive(".maxntid"),
            format!("{}, 1, 1", k.threads_per_block()),
            "{}",
            k.name()
        );
        assert_eq!(
            directive(".minnctapersm"),
            min_blocks.to_string(),
            "{}",
            k.name()
        );
    }
}

#[test]
fn ptx_version_and_driver_floor_match_the_compiler() {
    let Some(_) = image_or_skip("ptx_version_and_driver_floor_match_the_compiler") else {
        return;
    };
    let (major, minor) = image::PTX_VERSION
        .split_once('.')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .expect("PTX .version is major.minor");
    println!(
        "{} -> PTX ISA {major}.{minor}; image targets {}; drivers >= {}",
        image::TOOLKIT_VERSION,
        image::ARCHS,
        image::MIN_DRIVER
    );
    // (Read as a run-time value: this file is compiled for builds without an image too, where
    // the constant is 0 and clippy would call the comparisons below absurd.)
    let min_driver = std::hint::black_box(image::MIN_DRIVER);
    // ISA 8.x is CUDA 12.x (8.0: 12.0, driver 525), 9.0 is CUDA 13.0 (driver 580).
    let isa_driver = match (major, minor) {
        (..8, _) | (8, 0) => 525,
        (8, _) => 530,
        (9, 0) => 580,
        _ => u32::MAX,
    };
    assert!(
        min_driver >= isa_driver,
        "the image claims drivers >= {min_driver} but its PTX ISA {major}.{minor} needs {isa_driver} or newer"
    );
    if image::TOOLKIT_VERSION.starts_with("NVRTC") {
        // The pinned CUDA 12 toolchain: the whole point is a 525 driver.
        assert!(
            (major, minor) <= (8, 0),
            "the CUDA 12 toolchain made PTX ISA {major}.{minor}"
        );
        assert_eq!(image::MIN_DRIVER, 525);
    }
    if let Some(floor) = std::env::var("CS_REQUIRE_IMAGE_DRIVER")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        assert!(
            min_driver <= floor,
            "CS_REQUIRE_IMAGE_DRIVER={floor}, but the image ({}) needs driver >= {min_driver}",
            image::TOOLKIT_VERSION
        );
    }
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
    if std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        assert!(
            !image::ARCHS.contains('a'),
            "the default image holds no arch-specific code: {}",
            image::ARCHS
        );
    }
}

/// What the fatbin really holds, by `cuobjdump --list-elf --list-ptx` (not what build.rs says
/// it put there): an ELF per SASS target and the PTX, and for the default image sm_75..sm_90.
#[test]
fn the_fatbin_holds_every_target() {
    let Some(fatbin) = image_or_skip("the_fatbin_holds_every_target")
        .map(|_| image::fatbin().expect("the image inflates"))
    else {
        return;
    };
    let Some(tool) = image::cuobjdump() else {
        assert!(
            std::env::var("CS_REQUIRE_CUDA_IMAGE").map_or(true, |v| v != "1"),
            "cuobjdump not found (scripts/install-nvcc.sh installs it)"
        );
        skip_notice("the_fatbin_holds_every_target: SKIPPED, cuobjdump not found");
        return;
    };
    let listing = image::run_cuobjdump(&tool, &["--list-elf", "--list-ptx"], &fatbin)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("{listing}");
    let elf_archs: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("ELF file"))
        .filter_map(|l| l.split('.').find(|p| p.starts_with("sm_")))
        .collect();
    let ptx_archs: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("PTX file"))
        .filter_map(|l| l.split('.').find(|p| p.starts_with("sm_")))
        .collect();
    let claimed_sass: Vec<&str> = image::ARCHS
        .split(',')
        .filter(|a| a.starts_with("sm_"))
        .collect();
    let mut sorted_elf = elf_archs.clone();
    sorted_elf.sort();
    let mut sorted_claimed = claimed_sass.clone();
    sorted_claimed.sort();
    assert_eq!(
        sorted_elf, sorted_claimed,
        "SASS in the fatbin vs image::ARCHS"
    );
    let claimed_ptx: Vec<String> = image::ARCHS
        .split(',')
        .filter_map(|a| a.strip_prefix("compute_"))
        .map(|n| format!("sm_{n}"))
        .collect();
    assert_eq!(ptx_archs, claimed_ptx, "PTX in the fatbin vs image::ARCHS");
    if std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        for want in ["sm_75", "sm_80", "sm_86", "sm_90"] {
            assert!(elf_archs.contains(&want), "no {want} SASS in the fatbin");
        }
        assert_eq!(
            ptx_archs,
            ["sm_75"],
            "the default image's PTX is compute_75"
        );
    }
}

#[test]
fn no_spills_or_stack_frames_on_any_architecture() {
    let Some((_, report)) = image_or_skip("no_spills_or_stack_frames_on_any_architecture") else {
        return;
    };
    let table = ptxas_table(&report);
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
            KernelConfig::entry_names().len(),
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
                cuda_softmax::tools::planner::Family::Strided { slices, vec, .. } => {
                    cuda_softmax::tools::planner::strided_static_smem_bytes(slices, vec)
                }
                _ => 0,
            };
            assert!(
                r.static_smem as usize
                    <= cuda_softmax::tools::planner::STATIC_SMEM_RESERVE + partial_states,
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

/// The image stays small enough to embed: at most 10 MB as embedded (compressed) with every
/// architecture (issue 10: nvcc 13.0's fatbin was 20.4 MB with -lineinfo), and it inflates to a
/// fatbin. -lineinfo (CUDA_SOFTMAX_LINEINFO=1) is exempt: it is asked for.
#[test]
fn the_image_is_at_most_10_mb() {
    let Some(compressed) = image::compressed() else {
        let _ = image_or_skip("the_image_is_at_most_10_mb");
        return;
    };
    let start = std::time::Instant::now();
    let fatbin = image::fatbin().expect("the image inflates");
    println!(
        "image: {} bytes embedded, {} bytes inflated in {:.2} s ({}, {})",
        compressed.len(),
        fatbin.len(),
        start.elapsed().as_secs_f64(),
        image::TOOLKIT_VERSION,
        image::ARCHS
    );
    // A fatbin starts with its magic number (0xBA55ED50, little-endian).
    assert_eq!(fatbin[..4], [0x50, 0xED, 0x55, 0xBA], "not a fatbin");
    if std::env::var_os("CUDA_SOFTMAX_LINEINFO").is_none() {
        assert!(
            compressed.len() <= 10_000_000,
            "the image is {} bytes",
            compressed.len()
        );
    }
}

/// What the GPU compile writes into OUT_DIR (build.rs): the unity file, PTX, cubins, the fatbin
/// and its compressed form, the ptxas report and the image description.
fn gpu_build_files(out_dir: &str) -> Vec<String> {
    std::fs::read_dir(out_dir)
        .expect("the build's OUT_DIR is readable")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n == "gpu_unity.cu"
                || n == "ptxas.txt"
                || n == "image.txt"
                || n.starts_with("softmax.fatbin")
                || n.ends_with(".ptx")
                || n.ends_with(".cubin")
        })
        .collect()
}

/// `CUDA_SOFTMAX_NO_GPU_IMAGE=1` (CI's "without the image" stages build with it) embeds no image
/// and compiles nothing for the GPU, whatever compilers are installed: no image, and none of the
/// GPU compile's files in OUT_DIR. A build with the image (CI's main one) holds them: the file
/// check is not vacuous.
#[test]
fn a_build_asked_for_no_image_compiles_nothing_for_the_gpu() {
    let files = gpu_build_files(image::BUILD_OUT_DIR);
    if image::BUILT_WITHOUT_IMAGE_ON_REQUEST {
        assert!(
            !image::has_image(),
            "built with CUDA_SOFTMAX_NO_GPU_IMAGE=1 but an image is embedded"
        );
        assert!(
            files.is_empty(),
            "built with CUDA_SOFTMAX_NO_GPU_IMAGE=1 but the GPU compile wrote {files:?} in {}",
            image::BUILD_OUT_DIR
        );
        // The error says why there is no image and what to do.
        let e = cuda_softmax::Error::NoCudaImage.to_string();
        assert!(e.contains("CUDA_SOFTMAX_NO_GPU_IMAGE=1"), "{e}");
        return;
    }
    if image::has_image() {
        for want in [
            "softmax.fatbin.zst",
            "image.txt",
            "ptxas.txt",
            "softmax.ptx",
        ] {
            assert!(files.iter().any(|f| f == want), "{want} not in {files:?}");
        }
    }
}
