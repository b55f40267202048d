//! `Device::cuda` against broken and stand-in NVIDIA driver libraries, built here from
//! cli/tests/stand_in/libcuda.c: an empty file, one that exports only `cuInit`, one whose `cuInit`
//! fails like the toolkit's stub library, one that reports no device, and a working stand-in that
//! exports exactly `cuda_softmax::tools::driver::REQUIRED_FUNCTIONS`.
//!
//! Each case runs the `driver-probe` binary in a child process with `LD_LIBRARY_PATH` pointing at
//! the stand-in (named both libcuda.so and libcuda.so.1, so a real driver elsewhere is not
//! reached). driver-probe aborts on any panic, as under `panic = "abort"`; CI also runs these
//! tests with a driver-probe built by the `release-abort` profile (`CS_DRIVER_PROBE_BIN`).
//! A case passes only when the child exits normally with the expected status and message, and
//! prints no panic.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;

use cuda_softmax::tools::driver::REQUIRED_FUNCTIONS;

/// What the stand-in library exports.
enum Exports {
    /// A zero-byte file: the loader rejects it.
    Nothing,
    /// Only these functions (a version script hides the rest).
    Only(Vec<&'static str>),
}

/// Builds the stand-in into a fresh folder (one per case: the tests run in parallel) and returns
/// that folder, for LD_LIBRARY_PATH.
fn stand_in(case: &str, exports: Exports) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("stand-in-drivers")
        .join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the stand-in folder");
    let library = dir.join("libcuda.so");
    match exports {
        Exports::Nothing => std::fs::write(&library, b"").expect("write the empty library"),
        Exports::Only(functions) => {
            let map = dir.join("exports.map");
            let script = format!("{{ global: {}; local: *; }};", functions.join("; "));
            std::fs::write(&map, script).expect("write the version script");
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stand_in/libcuda.c");
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            let out = Command::new(&cc)
                .args([
                    "-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror", "-o",
                ])
                .arg(&library)
                .arg(&source)
                .arg(format!("-Wl,--version-script={}", map.display()))
                .output()
                .unwrap_or_else(|e| panic!("run the C compiler {cc} (set CC): {e}"));
            assert!(
                out.status.success(),
                "building the stand-in driver failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    std::fs::copy(&library, dir.join("libcuda.so.1")).expect("copy to libcuda.so.1");
    dir
}

fn probe_binary() -> PathBuf {
    std::env::var_os("CS_DRIVER_PROBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_driver-probe")))
}

/// Runs driver-probe against the library folder `dir` with extra environment `env`; checks it
/// exited normally with `code` and printed no panic; returns its stdout.
fn run_probe(dir: &Path, env: &[(&str, &str)], args: &[&str], code: i32) -> String {
    // Prepended: the child may need the caller's own library path (a toolchain's libstdc++).
    let mut path = std::ffi::OsString::from(dir);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = Command::new(probe_binary())
        .args(args)
        .env("LD_LIBRARY_PATH", path)
        .envs(env.iter().copied())
        .output()
        .expect("run driver-probe");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stderr.contains("panicked"),
        "driver-probe panicked:\n{stderr}\nstdout:\n{stdout}"
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "driver-probe ended with {:?} (a signal means it aborted):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Without a GPU image `Device::cuda` ends at `NoCudaImage` (driver-probe's own driver check
/// still runs first).
fn image_missing() -> bool {
    if cuda_softmax::tools::image::has_image() {
        return false;
    }
    eprintln!("SKIPPED: no GPU image in this build, so Device::cuda stops before the driver");
    assert!(
        std::env::var_os("CS_REQUIRE_CUDA_IMAGE").is_none(),
        "CS_REQUIRE_CUDA_IMAGE is set but this build has no GPU image"
    );
    true
}

/// Runs a case that must fail to open the device; checks the message holds each of `expected`.
/// `needs_image`: the failure comes after the driver check (from cuInit), which a build without
/// a GPU image never reaches; such a case then says it skipped.
fn expect_error(dir: &Path, env: &[(&str, &str)], expected: &[&str], needs_image: bool) {
    let stdout = run_probe(dir, env, &[], 2);
    if needs_image && image_missing() {
        assert!(stdout.contains("no GPU image"), "{stdout}");
        eprintln!("SKIPPED past the driver check: this build has no GPU image");
        return;
    }
    assert!(stdout.starts_with("error: "), "{stdout}");
    for part in expected {
        assert!(stdout.contains(part), "expected {part:?} in:\n{stdout}");
    }
}

#[test]
fn empty_library_is_reported_as_unloadable_with_its_path() {
    let dir = stand_in("empty", Exports::Nothing);
    let path = dir.join("libcuda.so").display().to_string();
    expect_error(
        &dir,
        &[],
        &["cannot be used", "does not load", &path, "nvidia-smi"],
        false,
    );
}

#[test]
fn library_exporting_only_cuinit_is_reported_with_what_it_lacks() {
    let dir = stand_in("only-cuinit", Exports::Only(vec!["cuInit"]));
    let n = REQUIRED_FUNCTIONS.len();
    let lacks = format!("lacks {} of the {n} driver functions", n - 1);
    let path = dir.join("libcuda.so").display().to_string();
    expect_error(
        &dir,
        &[],
        &[&lacks, "cuDeviceGet", &path, "LD_LIBRARY_PATH"],
        false,
    );
}

#[test]
fn library_lacking_one_late_function_is_caught_before_any_call() {
    // cuEventElapsedTime is first called long after the device opened (timing): the check must
    // still catch it up front.
    let functions = REQUIRED_FUNCTIONS
        .iter()
        .copied()
        .filter(|f| *f != "cuEventElapsedTime")
        .collect();
    let dir = stand_in("no-elapsed-time", Exports::Only(functions));
    expect_error(
        &dir,
        &[],
        &["lacks 1 of the", "(cuEventElapsedTime)"],
        false,
    );
}

#[test]
fn stub_library_whose_cuinit_fails_gets_advice() {
    let dir = stand_in("stub", Exports::Only(REQUIRED_FUNCTIONS.to_vec()));
    expect_error(
        &dir,
        &[("CS_STAND_IN_CUINIT", "34")],
        &[
            "failed to initialise",
            "CUDA_ERROR_STUB_LIBRARY",
            "nvidia-smi",
            "stubs/libcuda.so",
        ],
        true,
    );
}

#[test]
fn driver_without_devices_is_no_gpu() {
    let dir = stand_in("no-device", Exports::Only(REQUIRED_FUNCTIONS.to_vec()));
    expect_error(
        &dir,
        &[("CS_STAND_IN_CUINIT", "100")],
        &["reports no CUDA device"],
        true,
    );
}

/// The whole API runs against a library exporting exactly the required list (with and without
/// memory pools, which switch cudarc between two allocators): cudarc calls nothing else.
#[test]
fn required_list_covers_every_call_the_api_makes() {
    let dir = stand_in("working", Exports::Only(REQUIRED_FUNCTIONS.to_vec()));
    for pools in ["1", "0"] {
        let env = [("CS_STAND_IN_POOLS", pools)];
        if image_missing() {
            run_probe(&dir, &env, &["--exercise"], 2);
            continue;
        }
        let stdout = run_probe(&dir, &env, &["--exercise"], 0);
        assert!(
            stdout.starts_with("device: Stand-in CUDA device"),
            "{stdout}"
        );
        assert!(stdout.contains("exercised: "), "{stdout}");
    }
}

/// No library at all (only checked where the machine has no driver of its own).
#[test]
fn missing_library_is_driver_not_found() {
    // SAFETY: loading the system's driver library, if any, runs only its initialisers.
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_ok() {
        eprintln!("skipped: this machine has a driver library of its own");
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stand-in-drivers/none");
    std::fs::create_dir_all(&dir).expect("create an empty folder");
    expect_error(
        &dir,
        &[],
        &["was not found", "install an NVIDIA driver"],
        false,
    );
}
