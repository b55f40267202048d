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

/// SASS targets always built (CUDA 13 dropped everything below sm_75).
const BASE_ARCHS: [u32; 5] = [75, 80, 86, 89, 90];
/// Newer SASS targets built when the nvcc in use lists them.
const NEWER_ARCHS: [u32; 2] = [100, 120];
/// The PTX shipped for architectures without SASS: the oldest one, so every newer GPU can JIT it.
const PTX_ARCH: u32 = 75;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cs_cuda_image)");
    println!("cargo::rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "CUDA_COMPUTE_CAP",
        "NVCC_CCBIN",
        "DOCS_RS",
        "CUDA_SOFTMAX_NVCC_DIR",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if env::var_os("DOCS_RS").is_some() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let sources = kernel_sources(&kernels);

    build_emulator(&kernels, &sources, &out);

    match find_nvcc() {
        Some(nvcc) => build_gpu_image(&nvcc, &sources, &out),
        None => println!(
            "cargo::warning=nvcc not found: the CUDA image is not built, so Device::cuda() will return an error \
             (the CPU emulator still works). Install a CUDA toolkit, or run scripts/install-nvcc.sh \
             (pinned CUDA 13.0 from PyPI, no root needed), then rebuild."
        ),
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

fn find_nvcc() -> Option<PathBuf> {
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = Path::new(&home).join("bin").join(exe);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join(exe);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut candidates = vec![PathBuf::from("/usr/local/cuda/bin").join(exe)];
    // Where scripts/install-nvcc.sh puts the pinned toolkit.
    if let Some(dir) = env::var_os("CUDA_SOFTMAX_NVCC_DIR") {
        candidates.push(Path::new(&dir).join("nvidia/cu13/bin").join(exe));
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")));
    if let Some(cache) = cache {
        candidates.push(
            cache
                .join("cuda-softmax/cuda-13.0/nvidia/cu13/bin")
                .join(exe),
        );
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn run(cmd: &mut Command, what: &str) -> (String, String) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        panic!("{what} failed ({}):\n{stdout}\n{stderr}", output.status);
    }
    (stdout, stderr)
}

fn build_gpu_image(nvcc: &Path, sources: &[PathBuf], out: &Path) {
    let (version_text, _) = run(Command::new(nvcc).arg("--version"), "nvcc --version");
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

    let archs: Vec<u32> = match env::var("CUDA_COMPUTE_CAP") {
        Ok(cap) => {
            let cap = cap.trim().replace('.', "");
            vec![cap.parse().unwrap_or_else(|_| {
                panic!("CUDA_COMPUTE_CAP must look like 90 or 8.6, got {cap:?}")
            })]
        }
        Err(_) => BASE_ARCHS
            .into_iter()
            .chain(
                NEWER_ARCHS
                    .into_iter()
                    .filter(|a| listed.lines().any(|l| l.trim() == format!("compute_{a}"))),
            )
            .collect(),
    };
    let ptx_arch = if env::var("CUDA_COMPUTE_CAP").is_ok() {
        archs[0]
    } else {
        PTX_ARCH
    };

    let mut unity = String::new();
    for s in sources {
        unity += &format!("#include \"{}\"\n", s.display());
    }
    let unity_path = out.join("gpu_unity.cu");
    fs::write(&unity_path, unity).expect("write GPU unity file");

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
    for a in &archs {
        if *a == ptx_arch {
            cmd.arg(format!(
                "-gencode=arch=compute_{a},code=[sm_{a},compute_{a}]"
            ));
        } else {
            cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
        }
    }
    cmd.arg("-o").arg(&fatbin).arg(&unity_path);
    let (_, ptxas_report) = run(&mut cmd, "nvcc (fatbin)");
    fs::write(out.join("ptxas.txt"), &ptxas_report).expect("write ptxas report");

    let ptx = out.join("softmax.ptx");
    let mut cmd = Command::new(nvcc);
    common(&mut cmd);
    cmd.arg("-ptx")
        .arg(format!("-arch=compute_{ptx_arch}"))
        .arg("-o")
        .arg(&ptx)
        .arg(&unity_path);
    run(&mut cmd, "nvcc (ptx)");
    let ptx_text = fs::read_to_string(&ptx).expect("read generated PTX");
    let ptx_version = ptx_text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .unwrap_or("unknown")
        .trim()
        .to_string();

    let arch_list: Vec<String> = archs
        .iter()
        .map(|a| format!("sm_{a}"))
        .chain([format!("compute_{ptx_arch}")])
        .collect();
    println!("cargo::rustc-cfg=cs_cuda_image");
    println!("cargo::rustc-env=CS_TOOLKIT_VERSION={toolkit}");
    println!("cargo::rustc-env=CS_PTX_VERSION={ptx_version}");
    println!("cargo::rustc-env=CS_IMAGE_ARCHS={}", arch_list.join(","));
    println!("cargo::rustc-env=CS_NVCC={}", nvcc.display());
}
