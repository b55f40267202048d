//! Builds the two images of kernels/*.cu:
//! - the CPU SIMT emulator: the kernels compiled for the host with the system C++ compiler
//!   (always; needs no CUDA toolkit);
//! - the GPU image: one fatbin (SASS for each architecture plus compute_75 PTX as the
//!   forward-compatible fallback), embedded in the crate. Built by, in order of preference:
//!   a CUDA toolkit the user has (NVCC, CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda), with a
//!   warning when its image needs a driver newer than 525; else the pinned CUDA 12 toolchain of
//!   scripts/install-nvcc.sh (NVRTC 12.0 + ptxas 12.9 + nvFatbin: drivers >= 525); else the
//!   pinned CUDA 13.0 nvcc of older installs. Without any, a cargo warning says how to get one,
//!   and `Device::cuda` reports that the image is missing.
//!
//! The image is cached by content hash (sources, compiler, targets, flags) in
//! ~/.cache/cuda-softmax/images (CUDA_SOFTMAX_CACHE_DIR), so clippy, doc, test and release
//! builds share one compile. Outputs in OUT_DIR: softmax.fatbin, softmax.ptx (compute_75, for
//! the image checks), ptxas.txt (`ptxas -v` for every kernel and architecture). cfg
//! `cs_cuda_image` is set when the GPU image was built; CS_TOOLKIT_VERSION, CS_PTX_VERSION,
//! CS_IMAGE_ARCHS, CS_IMAGE_MIN_DRIVER and CS_IMAGE_DIR describe it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/nvcc.rs"]
mod nvcc;
use nvcc::{find_nvcc, image_targets, no_gpu_image, nvcc_known_archs, ptxas_known_archs};
#[path = "build/cache_paths.rs"]
mod cache_paths;
#[path = "build/image_cache.rs"]
mod image_cache;
#[path = "build/nvrtc.rs"]
mod nvrtc;
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

use image_cache::env_value;

/// The flags build.rs gives each compiler (besides targets, outputs and -lineinfo). They are
/// part of the image cache key, so a change here is a new image.
const NVCC_FLAGS: [&str; 2] = ["-std=c++17", "-O3"];
/// (-default-device: lambdas and helpers without __device__ are device code, as nvcc infers.)
const NVRTC_FLAGS: [&str; 2] = ["-std=c++17", "-default-device"];
const PTXAS_FLAGS: [&str; 1] = ["-O3"];
/// Bump when the way build.rs turns sources into an image changes in a way the flags above and
/// the other key inputs do not show (a new step, another layout of the fatbin).
const IMAGE_RECIPE: &str = "3";

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
fn compile_threads() -> usize {
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

/// What builds the GPU image.
enum Compiler {
    /// A CUDA toolkit's nvcc.
    Nvcc(PathBuf),
    /// The pinned CUDA 12 toolchain: NVRTC + ptxas + nvFatbin.
    Nvrtc(Toolchain12),
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

/// OUT_DIR/kernels_bundle.cu: every kernel source, with `#include "x"` of a header in kernels/
/// replaced by the header's text (once: they are all `#pragma once`), so that NVRTC needs no
/// include files of ours. Includes under a folder (the emulator's, in `#ifdef CS_EMULATOR`
/// branches) and `<...>` includes stay as they are.
fn write_kernel_bundle(kernels: &Path, sources: &[PathBuf], out: &Path) -> Result<(), String> {
    fn inline(
        path: &Path,
        kernels: &Path,
        seen: &mut Vec<PathBuf>,
        text: &mut String,
    ) -> Result<(), String> {
        if seen.iter().any(|p| p == path) {
            return Ok(());
        }
        seen.push(path.to_path_buf());
        let source =
            fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        for line in source.lines() {
            let header = line
                .trim()
                .strip_prefix("#include \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .filter(|name| !name.contains('/'));
            match header {
                Some(name) => inline(&kernels.join(name), kernels, seen, text)?,
                None if line.trim() == "#pragma once" => {}
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        Ok(())
    }
    let mut text = String::from(
        "// Generated by build.rs from kernels/*.cu: the run-time fallback's source.\n",
    );
    let mut seen = Vec::new();
    for s in sources {
        inline(s, kernels, &mut seen, &mut text)?;
    }
    let path = out.join("kernels_bundle.cu");
    fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Writes OUT_DIR/kernel_entries.cu (build/kernel_entries.rs) and returns its path; an error
/// when kernels/ holds a .cu file the entries do not include (it would be compiled nowhere).
fn write_kernel_entries(kernels: &Path, out: &Path) -> Result<PathBuf, String> {
    let mut on_disk: Vec<String> = fs::read_dir(kernels)
        .map_err(|e| format!("read {}: {e}", kernels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = kernel_entries::KERNEL_SOURCES
        .iter()
        .map(|s| s.to_string())
        .collect();
    listed.sort();
    if on_disk != listed {
        return Err(format!(
            "kernels/ holds {on_disk:?} but build/kernel_entries.rs compiles {listed:?}: list every kernel \
             source in KERNEL_SOURCES"
        ));
    }
    let path = out.join("kernel_entries.cu");
    fs::write(&path, kernel_entries::entries_file()?)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Warning flags for the host build of the kernels: a narrowing conversion (an `int` row offset)
/// or an uninitialised value in a kernel is a bug the GPU build would not report.
const EMULATOR_WARNINGS: [&str; 4] = ["-Wall", "-Wextra", "-Wconversion", "-Wshadow"];

/// The emulator: one translation unit (so that every kernel's registration object is linked)
/// with the emulator runtime, every kernel source and the emulator's planted-bug kernels,
/// compiled as written (no contraction) and, with the `emulator-fma` feature, a second time with
/// FMA contraction like nvcc's default, its namespaces and C entry points renamed so that the
/// two share no symbol. The two compiles run side by side.
///
/// The compiler's warnings are kept in OUT_DIR/emulator_warnings.txt (a test requires it to be
/// empty) and shown as cargo warnings; CS_EMU_WERROR=1 makes any of them fail the build. They do
/// not fail a user's build by default, since another compiler version may warn differently.
fn build_emulator(kernels: &Path, sources: &[PathBuf], out: &Path) {
    println!("cargo::rerun-if-env-changed=CS_EMU_WERROR");
    println!("cargo::rustc-check-cfg=cfg(cs_emu_mfma)");
    let mut unity = format!(
        "#include \"{}\"\n",
        kernels.join("emu/runtime.cpp").display()
    );
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    unity += &format!(
        "#include \"{}\"\n",
        kernels.join("emu/selftest.cu").display()
    );
    let unity_path = out.join("emulator_unity.cpp");
    fs::write(&unity_path, unity).expect("write emulator unity file");

    // (Cargo sets CARGO_FEATURE_<NAME> for the features this build has.)
    let with_fma = env::var_os("CARGO_FEATURE_EMULATOR_FMA").is_some();
    let flavours: &[bool] = if with_fma { &[false, true] } else { &[false] };
    let mfma = with_fma && host_fma_usable();
    let compiled: Vec<(PathBuf, String)> = std::thread::scope(|scope| {
        let jobs: Vec<_> = flavours
            .iter()
            .map(|&contracted| {
                let unity_path = &unity_path;
                scope.spawn(move || {
                    let label = if contracted {
                        "FMA-contracting"
                    } else {
                        "plain"
                    };
                    stage_times::timed(format!("emulator, host compile ({label})"), || {
                        compile_emulator_flavour(kernels, unity_path, out, contracted, mfma)
                    })
                })
            })
            .collect();
        jobs.into_iter()
            .map(|job| {
                job.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let diagnostics: String = compiled.iter().map(|(_, stderr)| stderr.as_str()).collect();
    let objects: Vec<&PathBuf> = compiled.iter().map(|(object, _)| object).collect();
    let report = out.join("emulator_warnings.txt");
    fs::write(&report, &diagnostics).expect("write the emulator's compiler warnings");
    println!("cargo::rustc-env=CS_EMU_WARNINGS_PATH={}", report.display());
    if mfma {
        println!("cargo::rustc-cfg=cs_emu_mfma");
    }
    for line in diagnostics
        .lines()
        .filter(|l| l.contains("warning:"))
        .take(20)
    {
        println!("cargo::warning=emulator build: {line}");
    }
    if !diagnostics.trim().is_empty() && env::var_os("CS_EMU_WERROR").is_some_and(|v| v == "1") {
        panic!("CS_EMU_WERROR=1 and the host compiler warned on the kernels:\n{diagnostics}");
    }
    let mut archive = cc::Build::new();
    archive.cpp(true); // links the C++ standard library
    for o in &objects {
        archive.object(o);
    }
    archive
        .cargo_warnings(false)
        .compile("cuda_softmax_emulator");
}

/// Compiles the emulator's unity file once: as written (`contracted` false) or with FMA
/// contraction. Returns the object and the compiler's diagnostics.
fn compile_emulator_flavour(
    kernels: &Path,
    unity_path: &Path,
    out: &Path,
    contracted: bool,
    mfma: bool,
) -> (PathBuf, String) {
    // A folder of its own for cc's flag probes (flag_check.cpp): the two flavours probe at once.
    let probe_dir = out.join(if contracted { "cc-fma" } else { "cc-plain" });
    fs::create_dir_all(&probe_dir).expect("create the emulator's compiler-probe folder");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .out_dir(&probe_dir)
        .include(kernels)
        .define("CS_EMULATOR", None)
        .flag_if_supported("-std=c++17")
        .flag_if_supported("-Wno-unknown-pragmas")
        // The emulator must be fast even in debug builds of the crate.
        .opt_level(2)
        // One text section, not one per function: a third fewer bytes in the rlib (the
        // section headers, names and relocations of ~3800 sections), and nothing to
        // garbage-collect anyway (every kernel is registered, so every kernel is used).
        .flag_if_supported("-fno-function-sections")
        .flag_if_supported("-fno-data-sections")
        // Nothing outside the final link calls into the emulator, so none of its symbols need
        // to be interposable: direct calls instead of PLT calls, 7% fewer bytes.
        .flag_if_supported("-fvisibility=hidden")
        .debug(false)
        // (warnings(false) would add -w and silence the flags below.)
        .warnings(true)
        .extra_warnings(true);
    for w in EMULATOR_WARNINGS {
        build.flag_if_supported(w);
    }
    if contracted {
        for (from, to) in [
            ("emu", "emu_fma"),
            ("cs", "cs_fma"),
            ("cs_selftest", "cs_selftest_fma"),
            ("CS_EMU_PREFIX", "cs_emu_fma_"),
        ] {
            build.define(from, Some(to));
        }
        build.flag_if_supported("-ffp-contract=fast");
        if mfma {
            build.flag("-mfma");
        }
    } else {
        build.flag_if_supported("-ffp-contract=off");
    }
    let object = out.join(if contracted {
        "emulator_fma.o"
    } else {
        "emulator.o"
    });
    let mut cmd = build.get_compiler().to_command();
    cmd.arg("-c").arg(unity_path).arg("-o").arg(&object);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run the C++ compiler {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        panic!(
            "the C++ compiler {:?} failed on the emulator build:\n{stderr}",
            cmd.get_program()
        );
    }
    (object, stderr)
}

/// True when the FMA flavour may use -mfma: building for x86-64 on an x86-64 machine that has
/// FMA (the same machine runs the tests; the runtime checks again before using it).
fn host_fma_usable() -> bool {
    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    target == host
        && env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64")
        && fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "fma"))
        })
}

/// Runs a tool; its stdout and stderr on success, else what failed.
fn run(cmd: &mut Command, what: &str) -> Result<(String, String), String> {
    let output = cmd
        .output()
        .map_err(|e| format!("{what}: could not run {:?}: {e}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{what} failed ({}): {}",
            output.status,
            tail.join("\n")
        ));
    }
    Ok((stdout, stderr))
}

/// A file the compiler should have written, non-empty.
fn produced(path: &Path, what: &str, compiler: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(format!(
            "{what}: {} exited successfully but did not write {}; check that it is a working compiler (NVCC, \
             CUDA_HOME, or rerun scripts/install-nvcc.sh)",
            compiler.display(),
            path.display()
        )),
    }
}

/// What an image is (OUT_DIR/image.txt, cached with it): `key=value` lines.
struct ImageInfo {
    /// "nvcc 13.0" or "NVRTC 12.0, ptxas 12.9".
    toolkit: String,
    ptx_version: String,
    /// e.g. sm_75,...,sm_120,compute_75
    archs: String,
    /// The oldest driver (e.g. 525) that loads the image on every GPU it has SASS for.
    min_driver: u32,
    /// The nvcc that built it (the SASS gate looks for cuobjdump beside it), if any.
    nvcc: String,
}

impl ImageInfo {
    fn to_text(&self) -> String {
        format!(
            "toolkit={}\nptx_version={}\narchs={}\nmin_driver={}\nnvcc={}\n",
            self.toolkit, self.ptx_version, self.archs, self.min_driver, self.nvcc
        )
    }

    fn from_text(text: &str) -> Option<ImageInfo> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::to_string)
        };
        Some(ImageInfo {
            toolkit: get("toolkit")?,
            ptx_version: get("ptx_version")?,
            archs: get("archs")?,
            min_driver: get("min_driver")?.parse().ok()?,
            nvcc: get("nvcc")?,
        })
    }
}

/// The oldest driver for an image whose newest part needs CUDA `major.minor` (the PTX's
/// toolkit for the JIT; cubins need the driver's major version only: minor version
/// compatibility).
fn driver_for_cuda(major: u32, minor: u32) -> u32 {
    match (major, minor) {
        (..=11, _) => 450,
        (12, 0) => 525,
        (12, 1) => 530,
        (12, 2) => 535,
        (12, 3) => 545,
        (12, 4) => 550,
        (12, 5) => 555,
        (12, 6) => 560,
        (12, 7..=8) => 570,
        (12, _) => 575,
        (13, 0) => 580,
        _ => 580 + 5 * minor,
    }
}

/// The CUDA release a PTX ISA version belongs to (ISA 8.x is CUDA 12.x, 9.x is 13.x).
fn cuda_for_ptx_isa(isa: &str) -> Option<(u32, u32)> {
    let (major, minor) = isa.split_once('.')?;
    let (major, minor): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    Some((major + 4, minor))
}

/// `.version` of a PTX text.
fn ptx_isa(ptx: &str) -> String {
    ptx.lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// (SASS architectures with their suffix, the PTX architecture).
type Targets = (Vec<(u32, String)>, u32);

/// The image's targets for this compiler: every base architecture plus the newer ones it knows,
/// or the one CUDA_COMPUTE_CAP names (empty is unset), which must be one it lists.
fn compiler_targets(compiler: &Compiler) -> Result<Targets, String> {
    let cap = env_value(&|name: &str| env::var_os(name), "CUDA_COMPUTE_CAP");
    match compiler {
        Compiler::Nvcc(nvcc) => {
            let (listed, _) = run(
                Command::new(nvcc).arg("--list-gpu-arch"),
                "nvcc --list-gpu-arch",
            )?;
            let name = format!("nvcc ({})", nvcc.display());
            image_targets(cap.as_deref(), &nvcc_known_archs(&listed), &name)
        }
        Compiler::Nvrtc(t) => {
            let (help, _) = run(Command::new(&t.ptxas).arg("--help"), "ptxas --help")?;
            // An arch-specific target (90a) is compiled by NVRTC for that very architecture:
            // it must know it too (NVRTC 12.0 stops at 90).
            let nvrtc_archs = nvrtc::Nvrtc::open(&t.nvrtc)?.supported_archs()?;
            let known: Vec<(u32, String)> = ptxas_known_archs(&help)
                .into_iter()
                .filter(|(n, s)| s.is_empty() || nvrtc_archs.contains(n))
                .collect();
            image_targets(
                cap.as_deref(),
                &known,
                "the pinned CUDA 12 toolchain (NVRTC + ptxas)",
            )
        }
    }
}

fn build_gpu_image(
    compiler: &Compiler,
    kernels: &Path,
    sources: &[PathBuf],
    out: &Path,
) -> Result<(), String> {
    let lookup = |name: &str| env::var_os(name);
    let lineinfo = env_value(&lookup, "CUDA_SOFTMAX_LINEINFO").is_some_and(|v| v == "1");
    let targets = compiler_targets(compiler)?;
    // Everything the image depends on: the cache key.
    let (archs, ptx_arch) = &targets;
    let arch_list: Vec<String> = archs.iter().map(|(a, s)| format!("sm_{a}{s}")).collect();
    // The generated entry points (from the registry, outside kernels/) are part of the key.
    let mut unit_digests = String::new();
    for unit in sources {
        let text = fs::read(unit).map_err(|e| format!("read {}: {e}", unit.display()))?;
        unit_digests += &cache_paths::digest(&text);
    }
    let mut settings: Vec<(&str, String)> = vec![
        ("kernel entries", unit_digests),
        ("recipe", IMAGE_RECIPE.to_string()),
        ("lineinfo", u8::from(lineinfo).to_string()),
        (
            "targets",
            format!("{} + compute_{ptx_arch}", arch_list.join(",")),
        ),
        (
            "zstd",
            format!("level {IMAGE_ZSTD_LEVEL}, window 2^{IMAGE_ZSTD_WINDOW_LOG}"),
        ),
    ];
    // The compiler's identity (its path and what its --version / nvrtcVersion say) and flags.
    match compiler {
        Compiler::Nvcc(nvcc) => {
            let (version, _) = run(Command::new(nvcc).arg("--version"), "nvcc --version")?;
            settings.extend([
                ("compiler", format!("nvcc {}", nvcc.display())),
                ("compiler version", version),
                ("nvcc flags", NVCC_FLAGS.join(" ")),
            ]);
        }
        Compiler::Nvrtc(t) => settings.extend([
            ("compiler", format!("nvrtc+ptxas {}", t.root.display())),
            ("compiler version", t.describe()?),
            ("nvrtc flags", NVRTC_FLAGS.join(" ")),
            ("ptxas flags", PTXAS_FLAGS.join(" ")),
        ]),
    }
    let inputs = image_cache::image_inputs(
        &settings,
        kernels,
        &lookup,
        env::vars_os().map(|(name, _)| name),
    )?;
    let cache = image_cache::dir(&lookup);
    let cached = image_cache::fetch_or_compile(
        cache.as_deref(),
        &inputs,
        out,
        || {
            let info = match compiler {
                Compiler::Nvcc(nvcc) => {
                    build_with_nvcc(nvcc, &targets, kernels, sources, out, lineinfo)?
                }
                Compiler::Nvrtc(t) => {
                    build_with_nvrtc(t, &targets, kernels, sources, out, lineinfo)?
                }
            };
            stage_times::timed("zstd", || compress_image(out))?;
            fs::write(out.join("image.txt"), info.to_text())
                .map_err(|e| format!("write image.txt: {e}"))
        },
        &mut |warning| println!("cargo::warning={warning}"),
    )?;
    let key = inputs.key();
    if cached {
        stage_times::note(format!(
            "GPU image from the cache (key {key}): nothing compiled"
        ));
    }
    let text =
        fs::read_to_string(out.join("image.txt")).map_err(|e| format!("read image.txt: {e}"))?;
    let info = ImageInfo::from_text(&text)
        .ok_or("image.txt is incomplete: remove the image cache entry")?;
    if info.min_driver > 525 {
        let who = match compiler {
            Compiler::Nvcc(nvcc) => format!("{} ({})", info.toolkit, nvcc.display()),
            Compiler::Nvrtc(_) => info.toolkit.clone(),
        };
        println!(
            "cargo::warning=the GPU image is built with {who}: it loads only on NVIDIA drivers >= {} (PTX ISA {}). \
             For drivers >= 525, unset NVCC/CUDA_HOME/CUDA_PATH (or take nvcc off PATH) and run \
             scripts/install-nvcc.sh: build.rs then uses its pinned CUDA 12 toolchain.",
            info.min_driver, info.ptx_version
        );
    }
    println!("cargo::rustc-cfg=cs_cuda_image");
    // On ELF targets the image is assembled into the object file (src/runtime/image.rs): a Rust static
    // would also copy it into the crate's metadata. Its symbols are named by the image and the
    // OUT_DIR, so two builds of the crate in one program cannot clash.
    let out_text = out.display().to_string();
    let elf = env::var("CARGO_CFG_TARGET_OBJECT_FORMAT").is_ok_and(|f| f == "elf")
        || env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if elf && !out_text.contains(['"', '\\', '\n']) {
        let mut symbol = cache_paths::ContentHash::new();
        symbol.add(key.as_bytes()).add(out_text.as_bytes());
        println!("cargo::rustc-cfg=cs_image_incbin");
        println!(
            "cargo::rustc-env=CS_IMAGE_SYMBOL=cuda_softmax_image_{}",
            symbol.hex()
        );
    }
    println!("cargo::rustc-env=CS_TOOLKIT_VERSION={}", info.toolkit);
    println!("cargo::rustc-env=CS_PTX_VERSION={}", info.ptx_version);
    println!("cargo::rustc-env=CS_IMAGE_ARCHS={}", info.archs);
    println!("cargo::rustc-env=CS_IMAGE_MIN_DRIVER={}", info.min_driver);
    println!("cargo::rustc-env=CS_IMAGE_DIR={}", out.display());
    println!("cargo::rustc-env=CS_NVCC={}", info.nvcc);
    println!("cargo::rustc-env=CS_IMAGE_CACHE_HIT={}", cached);
    Ok(())
}

/// zstd level the image is compressed with: 17 with a 128 MiB window keeps all six
/// architectures and the PTX (about 95 MB as the driver reads them) under 9 MB. The six
/// cubins are mostly alike, so one long-window stream finds what they share; fatbin compression
/// a 525 driver reads (LZ4) left 31.6 MB.
const IMAGE_ZSTD_LEVEL: i32 = 17;
const IMAGE_ZSTD_WINDOW_LOG: u32 = 27;

/// OUT_DIR/softmax.fatbin -> OUT_DIR/softmax.fatbin.zst (what the crate embeds; src/runtime/image.rs
/// inflates it once per process). The raw fatbin is removed: it is large, and not cached.
fn compress_image(out: &Path) -> Result<(), String> {
    let raw_path = out.join("softmax.fatbin");
    let raw = fs::read(&raw_path).map_err(|e| format!("read {}: {e}", raw_path.display()))?;
    let mut compressed = Vec::new();
    let mut encoder = zstd::stream::Encoder::new(&mut compressed, IMAGE_ZSTD_LEVEL)
        .map_err(|e| format!("zstd: {e}"))?;
    encoder
        .long_distance_matching(true)
        .and_then(|_| encoder.window_log(IMAGE_ZSTD_WINDOW_LOG))
        .and_then(|_| encoder.set_pledged_src_size(Some(raw.len() as u64)))
        .and_then(|_| encoder.include_contentsize(true))
        .map_err(|e| format!("zstd parameters: {e}"))?;
    std::io::Write::write_all(&mut encoder, &raw).map_err(|e| format!("zstd: {e}"))?;
    encoder.finish().map_err(|e| format!("zstd: {e}"))?;
    let path = out.join("softmax.fatbin.zst");
    fs::write(&path, &compressed).map_err(|e| format!("write {}: {e}", path.display()))?;
    fs::remove_file(&raw_path).map_err(|e| format!("remove {}: {e}", raw_path.display()))?;
    Ok(())
}

/// The image with a CUDA toolkit's nvcc.
fn build_with_nvcc(
    nvcc: &Path,
    targets: &Targets,
    kernels_dir: &Path,
    sources: &[PathBuf],
    out: &Path,
    lineinfo: bool,
) -> Result<ImageInfo, String> {
    let (version_text, _) = run(Command::new(nvcc).arg("--version"), "nvcc --version")?;
    let release = version_text
        .split("release ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("unknown")
        .to_string();
    // (architecture, suffix): SASS for each; PTX for ptx_arch (never an `a`/`f` PTX, which is
    // not forward compatible).
    let (archs, ptx_arch) = targets;
    let ptx_arch = *ptx_arch;

    let mut unity = String::new();
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    let unity_path = out.join("gpu_unity.cu");
    fs::write(&unity_path, unity).map_err(|e| format!("write {}: {e}", unity_path.display()))?;

    let common = |cmd: &mut Command| {
        cmd.args(NVCC_FLAGS)
            .arg(format!("-I{}", kernels_dir.display()));
        if lineinfo {
            cmd.arg("-lineinfo");
        }
        if let Some(ccbin) = env_value(&|name: &str| env::var_os(name), "NVCC_CCBIN") {
            cmd.arg("-ccbin").arg(ccbin);
        }
    };

    let fatbin = out.join("softmax.fatbin");
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("--fatbin")
        .arg("--threads")
        .arg("0")
        .arg("-Xptxas")
        .arg("-v");
    let mut ptx_listed = false;
    for (a, suffix) in archs.iter() {
        if *a == ptx_arch && suffix.is_empty() {
            cmd.arg(format!(
                "-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]"
            ));
            ptx_listed = true;
        } else {
            cmd.arg(format!(
                "-gencode=arch=compute_{a}{suffix},code=sm_{a}{suffix}"
            ));
        }
    }
    if !ptx_listed {
        cmd.arg(format!(
            "-gencode=arch=compute_{ptx_arch},code=compute_{ptx_arch}"
        ));
    }
    cmd.arg("-o").arg(&fatbin).arg(&unity_path);
    let (_, ptxas_report) = run(&mut cmd, "nvcc (fatbin)")?;
    produced(&fatbin, "nvcc (fatbin)", nvcc)?;
    fs::write(out.join("ptxas.txt"), &ptxas_report).map_err(|e| format!("write ptxas.txt: {e}"))?;

    let ptx = out.join("softmax.ptx");
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("-ptx")
        .arg(format!("-arch=compute_{ptx_arch}"))
        .arg("-o")
        .arg(&ptx)
        .arg(&unity_path);
    run(&mut cmd, "nvcc (ptx)")?;
    produced(&ptx, "nvcc (ptx)", nvcc)?;
    let ptx_text = fs::read_to_string(&ptx).map_err(|e| format!("read {}: {e}", ptx.display()))?;
    let ptx_version = ptx_isa(&ptx_text);

    // SASS of toolkit major M needs a driver of major M; the PTX needs the toolkit's own release.
    let (major, minor) = release
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((99, 0));
    let min_driver = driver_for_cuda(major, 0).max(
        cuda_for_ptx_isa(&ptx_version).map_or(driver_for_cuda(major, minor), |(a, b)| {
            driver_for_cuda(a, b)
        }),
    );
    let arch_list: Vec<String> = archs
        .iter()
        .map(|(a, suffix)| format!("sm_{a}{suffix}"))
        .chain([format!("compute_{ptx_arch}")])
        .collect();
    Ok(ImageInfo {
        toolkit: format!("nvcc {release}"),
        ptx_version,
        archs: arch_list.join(","),
        min_driver,
        nvcc: nvcc.display().to_string(),
    })
}

/// The PTX NVRTC 12.0 compiles for SASS architecture `sm`: (architecture, variant). The
/// kernels (and the fp16/bf16 headers) choose code by __CUDA_ARCH__ at 800 (L2 eviction
/// policies) and 900, and NVRTC 12.0 knows nothing above compute_90, whose PTX ptxas 12.9
/// assembles for sm_100/sm_120. sm_120's PTX is the compute_90 PTX with launch bounds of its own
/// (a register budget: build/ptx_variants.rs), named "+sm120".
fn nvrtc_ptx_arch(sm: u32) -> (u32, String) {
    match sm {
        ..80 => (75, String::new()),
        80..90 => (80, String::new()),
        120.. => (90, "+sm120".to_string()),
        _ => (90, String::new()),
    }
}

/// The image with the pinned CUDA 12 toolchain: NVRTC -> PTX per PTX architecture, ptxas ->
/// SASS per architecture (in parallel), nvFatbin -> one fatbin.
fn build_with_nvrtc(
    t: &Toolchain12,
    targets: &Targets,
    kernels_dir: &Path,
    sources: &[PathBuf],
    out: &Path,
    lineinfo: bool,
) -> Result<ImageInfo, String> {
    let toolkit = t.describe()?;
    let (archs, ptx_arch) = targets;
    let ptx_arch = *ptx_arch;
    let mut ptx_archs: Vec<(u32, String)> = archs
        .iter()
        .map(|(a, suffix)| {
            if suffix.is_empty() {
                nvrtc_ptx_arch(*a)
            } else {
                (*a, suffix.clone())
            }
        })
        .chain([(ptx_arch.min(90), String::new())])
        .collect();
    ptx_archs.sort();
    ptx_archs.dedup();
    // What NVRTC compiles: the plain architectures, and the one each "+variant" derives from.
    let mut nvrtc_archs: Vec<(u32, String)> = ptx_archs
        .iter()
        .map(|(a, suffix)| {
            if suffix.starts_with('+') {
                (*a, String::new())
            } else {
                (*a, suffix.clone())
            }
        })
        .collect();
    nvrtc_archs.sort();
    nvrtc_archs.dedup();

    let mut unity = String::new();
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    let threads = compile_threads();

    // NVRTC: one program per PTX architecture, compiled in parallel (programs are independent).
    let compile_ptx = |(arch, suffix): &(u32, String)| -> Result<String, String> {
        let nvrtc = nvrtc::Nvrtc::open(&t.nvrtc)?;
        let mut options = vec![format!("--gpu-architecture=compute_{arch}{suffix}")];
        options.extend(NVRTC_FLAGS.iter().map(|f| f.to_string()));
        options.extend([
            format!("-I{}", kernels_dir.display()),
            format!("-I{}", t.include.display()),
        ]);
        if lineinfo {
            options.push("-lineinfo".into());
        }
        stage_times::timed(format!("NVRTC compute_{arch}{suffix}"), || {
            nvrtc.compile_to_ptx(&unity, "cuda_softmax_kernels.cu", &options)
        })
    };
    let nvrtc_texts = parallel_map(&nvrtc_archs, threads, compile_ptx)?;
    // Every PTX architecture's text: compiled, or derived from the one it varies.
    let ptx_texts = ptx_archs
        .iter()
        .map(|(arch, suffix)| {
            let base = |a: &(u32, String)| {
                nvrtc_archs
                    .iter()
                    .position(|b| b == a)
                    .map(|i| &nvrtc_texts[i])
                    .ok_or("no PTX compiled for an architecture")
            };
            match suffix.as_str() {
                "+sm120" => stage_times::timed("PTX for sm_120, derived from compute_90", || {
                    ptx_variants::sm120_ptx(base(&(*arch, String::new()))?)
                }),
                _ => Ok(base(&(*arch, suffix.clone()))?.clone()),
            }
        })
        .collect::<Result<Vec<String>, String>>()?;

    // ptxas: one cubin per SASS architecture, from its PTX architecture's text.
    let mut ptx_files = Vec::new();
    for ((arch, suffix), text) in ptx_archs.iter().zip(&ptx_texts) {
        let path = out.join(format!("compute_{arch}{suffix}.ptx"));
        fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        ptx_files.push(((*arch, suffix.clone()), path));
    }
    let assemble = |(sm, suffix): &(u32, String)| -> Result<(Vec<u8>, String), String> {
        let want = if suffix.is_empty() {
            nvrtc_ptx_arch(*sm)
        } else {
            (*sm, suffix.clone())
        };
        let ptx = &ptx_files
            .iter()
            .find(|(a, _)| *a == want)
            .ok_or("no PTX for an architecture")?
            .1;
        let cubin = out.join(format!("sm_{sm}{suffix}.cubin"));
        let mut cmd = Command::new(&t.ptxas);
        cmd.arg(format!("-arch=sm_{sm}{suffix}"))
            .args(PTXAS_FLAGS)
            .arg("-v");
        if lineinfo {
            cmd.arg("-lineinfo");
        }
        cmd.arg(ptx).arg("-o").arg(&cubin);
        let (stdout, stderr) = stage_times::timed(format!("ptxas sm_{sm}{suffix}"), || {
            run(&mut cmd, &format!("ptxas (sm_{sm}{suffix})"))
        })?;
        produced(&cubin, "ptxas", &t.ptxas)?;
        let bytes = fs::read(&cubin).map_err(|e| format!("read {}: {e}", cubin.display()))?;
        Ok((bytes, stdout + &stderr))
    };
    let cubins = parallel_map(archs, threads, assemble)?;

    let shipped_ptx = ptx_texts[ptx_archs
        .iter()
        .position(|(a, s)| *a == ptx_arch.min(90) && s.is_empty())
        .ok_or("no PTX for the shipped architecture")?]
    .clone();
    let numbered: Vec<(String, Vec<u8>)> = archs
        .iter()
        .zip(&cubins)
        .map(|((a, suffix), (bytes, _))| (format!("{a}{suffix}"), bytes.clone()))
        .collect();
    let fatbin = stage_times::timed("nvFatbin", || {
        toolchain12::fatbin(&t.nvfatbin, &numbered, (ptx_arch.min(90), &shipped_ptx))
    })?;
    fs::write(out.join("softmax.fatbin"), fatbin)
        .map_err(|e| format!("write softmax.fatbin: {e}"))?;
    fs::write(out.join("softmax.ptx"), &shipped_ptx)
        .map_err(|e| format!("write softmax.ptx: {e}"))?;
    let report: String = cubins.iter().map(|(_, r)| r.as_str()).collect();
    fs::write(out.join("ptxas.txt"), report).map_err(|e| format!("write ptxas.txt: {e}"))?;

    let ptx_version = ptx_isa(&shipped_ptx);
    // ptxas 12.x SASS loads on any 12.x driver (minor version compatibility); the PTX needs the
    // driver of its ISA (8.0: CUDA 12.0, driver 525).
    let min_driver = driver_for_cuda(12, 0)
        .max(cuda_for_ptx_isa(&ptx_version).map_or(u32::MAX, |(a, b)| driver_for_cuda(a, b)));
    let arch_list: Vec<String> = archs
        .iter()
        .map(|(a, suffix)| format!("sm_{a}{suffix}"))
        .chain([format!("compute_{}", ptx_arch.min(90))])
        .collect();
    Ok(ImageInfo {
        toolkit,
        ptx_version,
        archs: arch_list.join(","),
        min_driver,
        nvcc: String::new(),
    })
}

/// `f` over `items` on up to `threads` threads, results in order; the first error wins.
fn parallel_map<I: Sync, R: Send>(
    items: &[I],
    threads: usize,
    f: impl Fn(&I) -> Result<R, String> + Sync,
) -> Result<Vec<R>, String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<R, String>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| Err("a compile step did not run".into()))
        })
        .collect()
}
