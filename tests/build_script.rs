//! build.rs's nvcc discovery (build/nvcc.rs, compiled here as well): every broken toolkit is a
//! message naming the file and what to do, never a panic; candidates found by search that do not
//! run are skipped. Stand-in "nvcc" programs are shell scripts the test writes itself.

#[path = "../build/nvcc.rs"]
#[allow(dead_code)]
mod nvcc;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nvcc::{check_nvcc, find_nvcc, parse_compute_cap};

/// Tests that write stand-in programs and run them hold this: a script written while another
/// test thread forks a child can still be open in that child when exec'd (ETXTBSY, "Text file
/// busy"), a flake seen on 2 cores.
static WRITE_AND_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    WRITE_AND_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh folder under the target dir for this test's stand-ins.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cs-build-script-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    dir
}

/// Writes an executable shell script at `path`.
fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn find(vars: &[(&str, &Path)]) -> Result<Option<PathBuf>, String> {
    let map: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_os_str().to_owned()))
        .collect();
    // No PATH, HOME or cache: only what the case names.
    find_nvcc(&|name: &str| map.get(name).cloned())
}

#[test]
fn an_explicit_broken_nvcc_is_one_clear_error() {
    let _serial = serial();
    let dir = scratch("explicit");
    let not_executable = dir.join("not-executable");
    std::fs::write(&not_executable, "nvcc").unwrap();
    let silent = dir.join("silent-nvcc");
    script(&silent, "exit 0"); // exits 0 and prints nothing
    let cases: [(&str, PathBuf, &str); 5] = [
        ("missing", dir.join("nope/nvcc"), "does not exist"),
        ("directory", dir.clone(), "is a directory"),
        ("not executable", not_executable, "cannot be run"),
        (
            "/bin/false",
            PathBuf::from("/bin/false"),
            "failed on --version",
        ),
        ("silent", silent, "names no release"),
    ];
    for (what, path, expected) in cases {
        let e = find(&[("NVCC", &path)]).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{what}: {e}");
        assert!(e.contains(expected), "{what}: {e}");
        assert!(e.contains("Point NVCC at a working nvcc"), "{what}: {e}");
    }
    // CUDA_HOME naming a folder without a working bin/nvcc.
    let e = find(&[("CUDA_HOME", &dir)]).unwrap_err();
    assert!(
        e.contains("CUDA_HOME=") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn a_working_nvcc_is_found_and_broken_search_candidates_are_skipped() {
    let _serial = serial();
    let dir = scratch("search");
    let good = dir.join("bin/nvcc");
    script(
        &good,
        "echo 'Cuda compilation tools, release 13.0, V13.0.88'",
    );
    assert_eq!(check_nvcc(&good), Ok(()));
    assert_eq!(find(&[("NVCC", &good)]), Ok(Some(good.clone())));
    assert_eq!(find(&[("CUDA_HOME", &dir)]), Ok(Some(good.clone())));
    // PATH: a broken nvcc first (skipped with a warning), a working one after it.
    let broken_dir = scratch("search-broken");
    script(&broken_dir.join("bin/nvcc"), "exit 3");
    let path = std::env::join_paths([broken_dir.join("bin"), dir.join("bin")]).unwrap();
    assert_eq!(find(&[("PATH", Path::new(&path))]), Ok(Some(good)));
    // Only broken candidates: none found (a warning each), not an error.
    let path = std::env::join_paths([broken_dir.join("bin")]).unwrap();
    assert_eq!(find(&[("PATH", Path::new(&path))]), Ok(None));
    // CUDA_SOFTMAX_NO_NVCC=1 wins over everything.
    assert_eq!(
        find(&[
            ("CUDA_SOFTMAX_NO_NVCC", Path::new("1")),
            ("NVCC", Path::new("/bin/false"))
        ]),
        Ok(None)
    );
}

#[test]
fn compute_capabilities_are_parsed_or_clearly_rejected() {
    let _serial = serial();
    assert_eq!(parse_compute_cap("90"), Ok((90, String::new())));
    assert_eq!(parse_compute_cap("8.6"), Ok((86, String::new())));
    assert_eq!(parse_compute_cap("90a"), Ok((90, "a".into())));
    assert_eq!(parse_compute_cap("100a"), Ok((100, "a".into())));
    assert_eq!(parse_compute_cap(" 12.0 "), Ok((120, String::new())));
    for bad in ["", "abc", "9x", "70", "90b", "sm_90"] {
        let e = parse_compute_cap(bad).unwrap_err();
        assert!(e.contains("CUDA_COMPUTE_CAP="), "{bad}: {e}");
    }
}

/// build.rs and its modules read the checkout's location at run time: `env!` would fix it when
/// the build script is compiled, so one build-script binary shared by two checkouts through one
/// CARGO_TARGET_DIR (a global target dir, sccache) would read the other checkout's kernels.
#[test]
fn the_build_script_takes_the_checkout_location_at_run_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("build.rs")];
    for entry in std::fs::read_dir(root.join("build")).unwrap() {
        sources.push(entry.unwrap().path());
    }
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !(code.contains("env!(") && code.contains("CARGO_MANIFEST_DIR")),
                "{}:{}: compile-time CARGO_MANIFEST_DIR; use env::var_os at run time",
                path.display(),
                n + 1
            );
        }
    }
}
