//! Builds the two images of kernels/*.cu:
//! - the CPU SIMT emulator: the kernels compiled for the host with the system C++ compiler
//!   (always; needs no CUDA toolkit);
//! - the GPU image: one fatbin from nvcc (SASS for each architecture plus compute_75 PTX as the
//!   forward-compatible fallback), embedded in the crate. Built when nvcc is found; otherwise a
//!   cargo warning says how to get one, and `Device::cuda` reports that the image is missing.
//!
//! Outputs in OUT_DIR: softmax.fatbin, softmax.ptx (compute_75, for the image checks),
//! ptxas.txt (`ptxas -v` for every kernel and architecture). cfg `cs_cuda_image` is set when the
//! GPU image was built; CS_TOOLKIT_VERSION, CS_PTX_VERSION and CS_IMAGE_ARCHS describe it.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/nvcc.rs"]
mod nvcc;
use nvcc::{find_nvcc, parse_compute_cap};

/// SASS targets always built (CUDA 13 dropped everything below sm_75).
const BASE_ARCHS: [u32; 5] = [75, 80, 86, 89, 90];
/// Newer SASS targets built when the nvcc in use lists them.
const NEWER_ARCHS: [u32; 2] = [100, 120];
/// The PTX shipped for architectures without SASS: the oldest one, so every newer GPU can JIT it.
const PTX_ARCH: u32 = 75;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cs_cuda_image)");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-changed=build");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "CUDA_COMPUTE_CAP",
        "NVCC_CCBIN",
        "DOCS_RS",
        "CUDA_SOFTMAX_NVCC_DIR",
        "CUDA_SOFTMAX_NO_NVCC",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // The run-time variable, not env!(): a build script binary shared through one target dir by
    // two checkouts must read the kernels of the checkout being built.
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = manifest_dir.join("kernels");
    let sources = kernel_sources(&kernels);

    // Find nvcc first: a broken toolkit named explicitly stops the build at once, with one error.
    let nvcc = match find_nvcc(&|name: &str| env::var_os(name)) {
        Ok(nvcc) => nvcc,
        Err(message) => {
            println!("cargo::error={}", message.replace('\n', " | "));
            return;
        }
    };

    build_emulator(&kernels, &sources, &out);

    let result = match nvcc {
        Some(nvcc) => build_gpu_image(&nvcc, &sources, &out),
        None if env::var_os("CUDA_SOFTMAX_NO_NVCC").is_some_and(|v| v == "1") => Ok(()),
        None => {
            println!(
                "cargo::warning=nvcc not found: the CUDA image is not built, so Device::cuda() will return an error \
                 (the CPU emulator still works). Install a CUDA toolkit, or run scripts/install-nvcc.sh \
                 (pinned CUDA 13.0 from PyPI, no root needed), then rebuild; CUDA_SOFTMAX_NO_NVCC=1 builds \
                 without the GPU image and without this warning."
            );
            Ok(())
        }
    };
    if let Err(message) = result {
        // One clear error (cargo fails the build after the script exits), not a panic.
        println!("cargo::error={}", message.replace('\n', " | "));
    }
}

/// kernels/*.cu, sorted so that the generated unity files are stable.
fn kernel_sources(kernels: &Path) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(kernels)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();
    sources
}

/// Warning flags for the host build of the kernels: a narrowing conversion (an `int` row offset)
/// or an uninitialised value in a kernel is a bug the GPU build would not report.
const EMULATOR_WARNINGS: [&str; 4] = ["-Wall", "-Wextra", "-Wconversion", "-Wshadow"];

/// The emulator: one translation unit (so that every kernel's registration object is linked)
/// with the emulator runtime, every kernel source and the emulator's planted-bug kernels,
/// compiled twice: as written (no contraction), and with FMA contraction like nvcc's default,
/// with its namespaces and C entry points renamed so that the two share no symbol.
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

    let mfma = host_fma_usable();
    let mut diagnostics = String::new();
    let mut objects = Vec::new();
    for contracted in [false, true] {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .include(kernels)
            .define("CS_EMULATOR", None)
            .flag_if_supported("-std=c++17")
            .flag_if_supported("-Wno-unknown-pragmas")
            // The emulator must be fast even in debug builds of the crate.
            .opt_level(2)
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
        cmd.arg("-c").arg(&unity_path).arg("-o").arg(&object);
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
        diagnostics += &stderr;
        objects.push(object);
    }
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
fn produced(path: &Path, what: &str, nvcc: &Path) -> Result<(), String> {
    match fs::metadata(path) {
        Ok(m) if m.len() > 0 => Ok(()),
        _ => Err(format!(
            "{what}: {} exited successfully but did not write {}; check that it is a working nvcc (NVCC, CUDA_HOME)",
            nvcc.display(),
            path.display()
        )),
    }
}

fn build_gpu_image(nvcc: &Path, sources: &[PathBuf], out: &Path) -> Result<(), String> {
    let (version_text, _) = run(Command::new(nvcc).arg("--version"), "nvcc --version")?;
    let toolkit = version_text
        .split("release ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("unknown")
        .to_string();
    let listed = Command::new(nvcc)
        .arg("--list-gpu-arch")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

    // (architecture, suffix): SASS for each; PTX for ptx_arch (never an `a`/`f` PTX, which is
    // not forward compatible).
    let (archs, ptx_arch): (Vec<(u32, String)>, u32) = match env::var("CUDA_COMPUTE_CAP") {
        Ok(cap) => {
            let (n, suffix) = parse_compute_cap(&cap)?;
            (vec![(n, suffix)], n)
        }
        Err(_) => (
            BASE_ARCHS
                .into_iter()
                .chain(
                    NEWER_ARCHS
                        .into_iter()
                        .filter(|a| listed.lines().any(|l| l.trim() == format!("compute_{a}"))),
                )
                .map(|a| (a, String::new()))
                .collect(),
            PTX_ARCH,
        ),
    };

    let mut unity = String::new();
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    let unity_path = out.join("gpu_unity.cu");
    fs::write(&unity_path, unity).map_err(|e| format!("write {}: {e}", unity_path.display()))?;

    let common = |cmd: &mut Command| {
        cmd.arg("-std=c++17").arg("-O3").arg("-lineinfo");
        if let Some(ccbin) = env::var_os("NVCC_CCBIN") {
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
    for (a, suffix) in &archs {
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
    let ptx_version = ptx_text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .unwrap_or("unknown")
        .trim()
        .to_string();

    let arch_list: Vec<String> = archs
        .iter()
        .map(|(a, suffix)| format!("sm_{a}{suffix}"))
        .chain([format!("compute_{ptx_arch}")])
        .collect();
    println!("cargo::rustc-cfg=cs_cuda_image");
    println!("cargo::rustc-env=CS_TOOLKIT_VERSION={toolkit}");
    println!("cargo::rustc-env=CS_PTX_VERSION={ptx_version}");
    println!("cargo::rustc-env=CS_IMAGE_ARCHS={}", arch_list.join(","));
    println!("cargo::rustc-env=CS_NVCC={}", nvcc.display());
    Ok(())
}
