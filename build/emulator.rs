//! The CPU SIMT emulator: the kernels compiled for the host with the system C++ compiler (a
//! plain build, and with the `emulator-fma` feature an FMA-contracting one beside it), archived
//! for the crate to link.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

use crate::stage_times;

/// Warning flags for the host build of the kernels: a narrowing conversion (an `int` row offset)
/// or an uninitialised value in a kernel is a bug the GPU build would not report.
pub(crate) const EMULATOR_WARNINGS: [&str; 4] = ["-Wall", "-Wextra", "-Wconversion", "-Wshadow"];

/// The emulator: one translation unit (so that every kernel's registration object is linked)
/// with the emulator runtime, every kernel source and the emulator's planted-bug kernels,
/// compiled as written (no contraction) and, with the `emulator-fma` feature, a second time with
/// FMA contraction like nvcc's default, its namespaces and C entry points renamed so that the
/// two share no symbol. The two compiles run side by side.
///
/// The compiler's warnings are kept in OUT_DIR/emulator_warnings.txt (a test requires it to be
/// empty) and shown as cargo warnings; CS_EMU_WERROR=1 makes any of them fail the build. They do
/// not fail a user's build by default, since another compiler version may warn differently.
pub(crate) fn build_emulator(kernels: &Path, sources: &[PathBuf], out: &Path) {
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
pub(crate) fn compile_emulator_flavour(
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
pub(crate) fn host_fma_usable() -> bool {
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
