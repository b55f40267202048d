//! Builds the two images of the kernels, orchestrating the parts in build/:
//! - the translation unit every kernel build compiles: the kernel sources and one entry point a
//!   row of the kernel registry (kernel_entries.rs, from src/planning/registry.rs), and the
//!   sources inlined for the run-time fallback;
//! - the CPU SIMT emulator: the kernels compiled for the host with the system C++ compiler
//!   (emulator.rs; always, needs no CUDA toolkit);
//! - the GPU image (gpu_image.rs): one fatbin (SASS for each architecture plus compute_75 PTX),
//!   embedded in the crate, from the content-addressed cache (image_cache.rs) or compiled by a
//!   CUDA toolkit the user has (nvcc.rs finds it, nvcc_image.rs), else the pinned CUDA 12
//!   toolchain of scripts/install-nvcc.sh (toolchain12.rs, nvrtc.rs, nvrtc_image.rs,
//!   ptx_variants.rs: drivers >= 525). Without any compiler a cargo warning says how to get
//!   one, and `Device::cuda` reports that the image is missing.
//!
//! Outputs in OUT_DIR: softmax.fatbin.zst, softmax.ptx (compute_75, for the image checks),
//! ptxas.txt (`ptxas -v` for every kernel and architecture), build_times.txt (stage_times.rs).
//! cfg `cs_cuda_image` is set when the GPU image was built; CS_TOOLKIT_VERSION, CS_PTX_VERSION,
//! CS_IMAGE_ARCHS, CS_IMAGE_MIN_DRIVER and CS_IMAGE_DIR describe it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

#[path = "build/nvcc.rs"]
mod nvcc;
use nvcc::{find_nvcc, no_gpu_image};
#[path = "build/cache_paths.rs"]
mod cache_paths;
#[path = "build/emulator.rs"]
mod emulator;
#[path = "build/gpu_image.rs"]
mod gpu_image;
#[path = "build/image_cache.rs"]
mod image_cache;
#[path = "build/nvcc_image.rs"]
mod nvcc_image;
#[path = "build/nvrtc.rs"]
mod nvrtc;
#[path = "build/nvrtc_image.rs"]
mod nvrtc_image;
// The kernel registry (src/planning/), compiled here as well: the one list of kernels, from which
// build/kernel_entries.rs writes the CUDA entry points.
#[path = "src/types/dtype.rs"]
#[allow(dead_code)]
mod dtype;
use dtype::Dtype;
#[path = "src/planning/op.rs"]
#[allow(dead_code)]
mod op;
use op::Op;
#[path = "build/kernel_entries.rs"]
mod kernel_entries;
#[path = "build/ptx_variants.rs"]
mod ptx_variants;
#[path = "src/planning/registry.rs"]
#[allow(dead_code)]
mod registry;
#[path = "build/stage_times.rs"]
mod stage_times;
#[path = "build/toolchain12.rs"]
mod toolchain12;
use toolchain12::Toolchain12;

use emulator::build_emulator;
use gpu_image::{Compiler, build_gpu_image};
use kernel_entries::{write_kernel_bundle, write_kernel_entries};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cs_cuda_image)");
    println!("cargo::rustc-check-cfg=cfg(cs_image_incbin)");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-changed=build");
    for registry_file in [
        "src/types/dtype.rs",
        "src/planning/op.rs",
        "src/planning/registry.rs",
    ] {
        println!("cargo::rerun-if-changed={registry_file}");
    }
    // (PATH only when it found the compiler: below.)
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "DOCS_RS",
        "CUDA_SOFTMAX_NVCC_DIR",
        "CUDA_SOFTMAX_CU12_DIR",
        "CUDA_SOFTMAX_CACHE_DIR",
        "CUDA_SOFTMAX_LINEINFO",
        nvcc::NO_GPU_IMAGE_VARS[0],
        nvcc::NO_GPU_IMAGE_VARS[1],
        "XDG_CACHE_HOME",
        "HOME",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    // The variables the CUDA compilers read themselves: the fixed list, and any set now with a
    // compiler prefix (all of them are in the image cache key).
    let lookup = |name: &str| env::var_os(name);
    let compiler_vars = image_cache::compiler_env(&lookup, env::vars_os().map(|(name, _)| name));
    for var in image_cache::COMPILER_ENV_VARS
        .iter()
        .map(|v| v.to_string())
        .chain(compiler_vars.into_iter().map(|(name, _)| name))
    {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The run-time variable, not env!(): a build script binary shared through one target dir by
    // two checkouts must read the kernels of the checkout being built.
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = manifest_dir.join("kernels");
    // The one translation unit every kernel build compiles: the kernel sources and the entry
    // points of the registry's kernels (OUT_DIR/kernel_entries.cu).
    let sources = match write_kernel_entries(&kernels, &out) {
        Ok(unit) => vec![unit],
        Err(message) => {
            println!("cargo::error={}", message.replace('\n', " | "));
            return;
        }
    };
    // The sources the run-time fallback compiles (src/runtime/jit.rs): written even for docs.rs, since
    // the crate embeds them.
    if let Err(message) = write_kernel_bundle(&kernels, &sources, &out) {
        println!("cargo::error={}", message.replace('\n', " | "));
        return;
    }
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    println!("cargo::rustc-check-cfg=cfg(cs_no_gpu_image)");
    if no_gpu_image(&|name: &str| env::var_os(name)) {
        // Asked for the emulator only: no compiler is looked for or run for the GPU (the
        // image tests check that OUT_DIR holds nothing the GPU compile writes).
        println!("cargo::rustc-cfg=cs_no_gpu_image");
        build_emulator(&kernels, &sources, &out);
        stage_times::note("GPU image: none (asked for none)");
        let _ = fs::write(out.join("build_times.txt"), stage_times::report());
        return;
    }

    // Find nvcc first: a broken toolkit named explicitly stops the build at once, with one error.
    let nvcc = match find_nvcc(&|name: &str| env::var_os(name)) {
        Ok(nvcc) => nvcc,
        Err(message) => {
            println!("cargo::error={}", message.replace('\n', " | "));
            return;
        }
    };

    // The emulator's host compile and the GPU image's compile are independent: run them side by
    // side (on a machine with a few cores that is most of a clean build's wall time).
    let start = std::time::Instant::now();
    std::thread::scope(|scope| {
        let emulator = scope.spawn(|| build_emulator(&kernels, &sources, &out));
        stage_times::timed("GPU image, in all", || {
            build_gpu_image_if_possible(nvcc, &kernels, &sources, &out)
        });
        if let Err(panic) = emulator.join() {
            std::panic::resume_unwind(panic);
        }
    });
    stage_times::note(format!(
        "{:8.1} s  the build script, in all ({} threads for the GPU compile)",
        start.elapsed().as_secs_f64(),
        compile_threads()
    ));
    let _ = fs::write(out.join("build_times.txt"), stage_times::report());
}

/// Threads for the GPU compile's jobs: cargo's job count.
pub(crate) fn compile_threads() -> usize {
    env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1)
}

/// Picks the CUDA compiler and builds the GPU image, or says (a cargo warning or error) why not.
fn build_gpu_image_if_possible(
    nvcc: Option<PathBuf>,
    kernels: &Path,
    sources: &[PathBuf],
    out: &Path,
) {
    let lookup = |name: &str| env::var_os(name);
    let pinned12 = Toolchain12::find(&lookup);
    let compiler = match nvcc {
        // The user's own toolkit wins over the pinned ones.
        Some(nvcc) if !is_pinned_nvcc(&nvcc) => Some(Compiler::Nvcc(nvcc)),
        older => pinned12.map(Compiler::Nvrtc).or(older.map(Compiler::Nvcc)),
    };
    if let Some(Compiler::Nvcc(nvcc)) = &compiler
        && found_on_path(nvcc)
    {
        println!("cargo::rerun-if-env-changed=PATH");
    }
    let result = match compiler {
        Some(compiler) => build_gpu_image(&compiler, kernels, sources, out),
        None => {
            println!(
                "cargo::warning=no CUDA compiler found: the CUDA image is not built, so Device::cuda() will return an \
                 error (the CPU emulator still works). Run scripts/install-nvcc.sh (pinned CUDA 12 NVRTC/ptxas from \
                 PyPI, no root needed; the image then loads on drivers >= 525) or install a CUDA toolkit, then \
                 rebuild; CUDA_SOFTMAX_NO_GPU_IMAGE=1 builds without the GPU image and without this warning."
            );
            Ok(())
        }
    };
    if let Err(message) = result {
        // One clear error (cargo fails the build after the script exits), not a panic.
        println!("cargo::error={}", message.replace('\n', " | "));
    }
}

/// Whether the user named a toolkit (NVCC, CUDA_HOME or CUDA_PATH), rather than it being found.
fn toolkit_named() -> bool {
    ["NVCC", "CUDA_HOME", "CUDA_PATH"]
        .iter()
        .any(|v| env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Whether `nvcc` is the pinned CUDA 13.0 one of scripts/install-nvcc.sh (found by the search,
/// not named by the user): the pinned CUDA 12 toolchain is preferred to it.
fn is_pinned_nvcc(nvcc: &Path) -> bool {
    !toolkit_named()
        && nvcc.components().any(|c| c.as_os_str() == "cuda-softmax")
        && nvcc.ends_with("nvidia/cu13/bin/nvcc")
}

/// Whether the search found `nvcc` through PATH (so a PATH change may change the compiler).
fn found_on_path(nvcc: &Path) -> bool {
    !toolkit_named()
        && env::var_os("PATH").is_some_and(|path| {
            env::split_paths(&path).any(|dir| nvcc.parent() == Some(dir.as_path()))
        })
}
