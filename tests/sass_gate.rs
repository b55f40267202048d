//! The static performance gate: reads the machine code of the embedded image (cuobjdump -sass,
//! sm_90 and sm_80) and holds every kernel's innermost loops to budgets. Runs whenever the crate
//! was built with nvcc and cuobjdump is beside it (scripts/install-nvcc.sh pins it); CI sets
//! CS_REQUIRE_CUDA_IMAGE=1, which makes a missing tool a failure instead of a skip.
//!
//! `cargo test --release --test sass_gate -- --nocapture` prints the census table.

use std::path::PathBuf;
use std::process::Command;

use cuda_softmax::image;
use cuda_softmax::sass::{self, Function, LoopCensus};

const ARCHS: [&str; 2] = ["sm_90", "sm_80"];

fn required() -> bool {
    std::env::var("CS_REQUIRE_CUDA_IMAGE").is_ok_and(|v| v == "1")
}

/// cuobjdump beside the nvcc that built the image, else on PATH.
fn cuobjdump() -> Option<PathBuf> {
    let beside = option_env!("CS_NVCC")
        .map(PathBuf::from)
        .and_then(|nvcc| Some(nvcc.parent()?.join("cuobjdump")));
    beside.filter(|p| p.is_file()).or_else(|| {
        Command::new("cuobjdump")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("cuobjdump"))
    })
}

/// The SASS of every kernel for `arch`, or None (with a notice) when the gate cannot run here.
fn sass_for(arch: &str) -> Option<Vec<Function>> {
    let Some(fatbin) = image::FATBIN else {
        assert!(
            !required(),
            "CS_REQUIRE_CUDA_IMAGE=1 but the crate was built without nvcc"
        );
        eprintln!("SKIPPED: no GPU image (the crate was built without nvcc)");
        return None;
    };
    if !image::ARCHS.split(',').any(|a| a == arch) {
        assert!(
            !required(),
            "the image has no {arch} (built with CUDA_COMPUTE_CAP?)"
        );
        eprintln!("SKIPPED: the image has no {arch} SASS (CUDA_COMPUTE_CAP narrowed it)");
        return None;
    }
    let Some(tool) = cuobjdump() else {
        assert!(
            !required(),
            "cuobjdump not found (scripts/install-nvcc.sh installs it)"
        );
        eprintln!("SKIPPED: cuobjdump not found (scripts/install-nvcc.sh installs it)");
        return None;
    };
    let path =
        std::env::temp_dir().join(format!("cuda-softmax-gate-{}.fatbin", std::process::id()));
    std::fs::write(&path, fatbin).expect("write the fatbin");
    let out = Command::new(&tool)
        .args(["-sass", "-arch", arch])
        .arg(&path)
        .output()
        .expect("run cuobjdump");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "cuobjdump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let functions = sass::parse_cuobjdump(&String::from_utf8_lossy(&out.stdout));
    assert!(!functions.is_empty(), "cuobjdump printed no functions");
    Some(functions)
}

fn element_bytes(kernel: &str) -> u32 {
    if kernel.contains("_f32_") { 4 } else { 2 }
}

/// The loops that make a kernel's steady state: every innermost loop, except, in a kernel that
/// moves 16-byte packs, the scalar head/tail loops (only narrow global accesses, no shared).
fn steady_loops(f: &Function) -> Vec<LoopCensus> {
    let all: Vec<LoopCensus> = sass::innermost_loops(f)
        .into_iter()
        .map(|l| sass::census(f, l, element_bytes(&f.name)))
        .collect();
    let vector_kernel = all.iter().any(|c| c.has_wide_global());
    all.into_iter()
        .filter(|c| {
            !vector_kernel
                || c.has_wide_global()
                || c.global_load_bytes() + c.global_store_bytes() == 0
        })
        .collect()
}

#[test]
fn census_report() {
    for arch in ARCHS {
        let Some(functions) = sass_for(arch) else {
            return;
        };
        println!("== {arch}");
        for f in &functions {
            let loops = steady_loops(f);
            let per_element: f64 = loops.iter().map(|c| c.per_element()).sum();
            let classes: Vec<String> = loops
                .iter()
                .map(|c| {
                    let parts: Vec<String> = c
                        .by_class
                        .iter()
                        .map(|(k, n)| format!("{}:{n}", k.label()))
                        .collect();
                    format!(
                        "[{} insns / {} el: {}]",
                        c.instructions,
                        c.elements,
                        parts.join(" ")
                    )
                })
                .collect();
            println!("{:<40} {:>6.3} {}", f.name, per_element, classes.join(" "));
        }
    }
}
