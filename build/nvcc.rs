//! Finding a working nvcc and reading CUDA_COMPUTE_CAP: used by build.rs, and compiled into
//! tests/build_script.rs too, so that every way a toolkit can be broken is tested without a
//! cargo build per case. Nothing here panics: every failure is a message saying what to do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The nvcc to use: one named explicitly (NVCC, CUDA_HOME, CUDA_PATH) must work, else the build
/// stops with an error naming it; candidates found by search (PATH, /usr/local/cuda, the cache of
/// scripts/install-nvcc.sh) that cannot run are skipped with a warning. CUDA_SOFTMAX_NO_NVCC=1:
/// none.
pub fn find_nvcc(lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Option<PathBuf>, String> {
    if lookup("CUDA_SOFTMAX_NO_NVCC").is_some_and(|v| v == "1") {
        return Ok(None);
    }
    let exe = if cfg!(windows) { "nvcc.exe" } else { "nvcc" };
    if let Some(p) = lookup("NVCC").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match check_nvcc(&p) {
            Ok(()) => Ok(Some(p)),
            Err(why) => Err(format!(
                "NVCC={} {why}. Point NVCC at a working nvcc, or unset it to search CUDA_HOME, PATH and \
                 /usr/local/cuda (scripts/install-nvcc.sh installs one without root)",
                p.display()
            )),
        };
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = lookup(var).filter(|h| !h.is_empty()) {
            let p = Path::new(&home).join("bin").join(exe);
            return match check_nvcc(&p) {
                Ok(()) => Ok(Some(p)),
                Err(why) => Err(format!(
                    "{var}={} but its bin/{exe} {why}. Set {var} to a CUDA toolkit (the folder holding bin/{exe}), \
                     or unset it",
                    Path::new(&home).display()
                )),
            };
        }
    }
    let mut candidates: Vec<PathBuf> = lookup("PATH")
        .map(|path| std::env::split_paths(&path).map(|d| d.join(exe)).collect())
        .unwrap_or_default();
    candidates.push(PathBuf::from("/usr/local/cuda/bin").join(exe));
    // Where scripts/install-nvcc.sh puts the pinned toolkit.
    if let Some(dir) = lookup("CUDA_SOFTMAX_NVCC_DIR") {
        candidates.push(Path::new(&dir).join("nvidia/cu13/bin").join(exe));
    }
    let cache = lookup("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| lookup("HOME").map(|h| Path::new(&h).join(".cache")));
    if let Some(cache) = cache {
        candidates.push(
            cache
                .join("cuda-softmax/cuda-13.0/nvidia/cu13/bin")
                .join(exe),
        );
    }
    for p in candidates.into_iter().filter(|p| p.exists()) {
        match check_nvcc(&p) {
            Ok(()) => return Ok(Some(p)),
            Err(why) => println!("cargo::warning=skipping {}: it {why}", p.display()),
        }
    }
    Ok(None)
}

/// Whether `p` is an nvcc that runs: it exists, is a file, and `--version` succeeds and names a
/// release. The error completes "NVCC=<p> ...".
pub fn check_nvcc(p: &Path) -> Result<(), String> {
    if !p.exists() {
        return Err("does not exist".into());
    }
    if p.is_dir() {
        return Err("is a directory, not the nvcc program".into());
    }
    let output = Command::new(p)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot be run ({e})"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr
            .lines()
            .next()
            .map_or(String::new(), |l| format!(": {l}"));
        return Err(format!("failed on --version ({}){said}", output.status));
    }
    if !String::from_utf8_lossy(&output.stdout).contains("release") {
        return Err("does not look like nvcc: its --version output names no release".into());
    }
    Ok(())
}

/// CUDA_COMPUTE_CAP: `90`, `8.6`, or an architecture-specific `90a` / `100a` / `100f`. Returns
/// (number, suffix).
pub fn parse_compute_cap(cap: &str) -> Result<(u32, String), String> {
    let cap = cap.trim().replace('.', "");
    let digits: String = cap.chars().take_while(|c| c.is_ascii_digit()).collect();
    let suffix = cap[digits.len()..].to_string();
    match (digits.parse::<u32>(), suffix.as_str()) {
        (Ok(n), "" | "a" | "f") if n >= 75 => Ok((n, suffix)),
        _ => Err(format!(
            "CUDA_COMPUTE_CAP={cap:?} is not a compute capability this crate builds for: use e.g. 90, 8.6, \
             90a or 100a (75 or newer), or unset it to build for every architecture"
        )),
    }
}
