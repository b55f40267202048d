//! Finding a working nvcc and reading CUDA_COMPUTE_CAP: used by build.rs, and compiled into
//! tests/build_script.rs too, so that every way a toolkit can be broken is tested without a
//! cargo build per case. Nothing here panics: every failure is a message saying what to do.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The nvcc to use: one named explicitly (NVCC, CUDA_HOME, CUDA_PATH) must work, else the build
/// stops with an error naming it; candidates found by search (PATH, /usr/local/cuda, the cache of
/// scripts/install-nvcc.sh) that cannot run are skipped with a warning. With
/// [`no_gpu_image`]: none.
pub fn find_nvcc(lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Option<PathBuf>, String> {
    if no_gpu_image(lookup) {
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

/// `CUDA_SOFTMAX_NO_GPU_IMAGE=1` builds the crate without any GPU image, whatever compilers are
/// installed (the emulator only: nothing is compiled for the GPU). `CUDA_SOFTMAX_NO_NVCC=1`, its
/// older name, means the same.
pub const NO_GPU_IMAGE_VARS: [&str; 2] = ["CUDA_SOFTMAX_NO_GPU_IMAGE", "CUDA_SOFTMAX_NO_NVCC"];

/// Whether the build was asked for no GPU image (see [`NO_GPU_IMAGE_VARS`]).
pub fn no_gpu_image(lookup: &dyn Fn(&str) -> Option<OsString>) -> bool {
    NO_GPU_IMAGE_VARS
        .iter()
        .any(|v| lookup(v).is_some_and(|x| x == "1"))
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
/// (number, suffix). Only those spellings: `7.5.0`, `sm_90` or ten digits are errors, not
/// guesses (whether the number is an architecture the compiler knows is [`image_targets`]'s
/// check).
pub fn parse_compute_cap(cap: &str) -> Result<(u32, String), String> {
    let cap = cap.trim();
    let (body, suffix) = match cap.strip_suffix(['a', 'f']) {
        Some(body) => (body, &cap[body.len()..]),
        None => (cap, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let number = match body.split_once('.') {
        // major.minor: 8.6, 10.0, 12.0
        Some((major, minor))
            if digits(major) && major.len() <= 2 && minor.len() == 1 && digits(minor) =>
        {
            format!("{major}{minor}")
        }
        None if digits(body) && (2..=3).contains(&body.len()) => body.to_string(),
        _ => String::new(),
    };
    match number.parse::<u32>() {
        Ok(n) if n >= 75 => Ok((n, suffix.to_string())),
        _ => Err(format!(
            "CUDA_COMPUTE_CAP={cap:?} is not a compute capability this crate builds for: use e.g. 90, 8.6, \
             90a or 100a (75 or newer), or unset it to build for every architecture"
        )),
    }
}

/// SASS targets always built (CUDA 13 dropped everything below sm_75). No sm_89: SASS runs on
/// any GPU of its major version with an equal or higher minor, and ptxas 12.9's sm_89 cubin was
/// bit for bit the sm_86 one for every kernel (same encodings, same registers), so Ada runs the
/// sm_86 SASS and the build saves a seventh of its ptxas time.
pub const BASE_ARCHS: [u32; 4] = [75, 80, 86, 90];
/// Newer SASS targets built when the compiler in use knows them.
pub const NEWER_ARCHS: [u32; 2] = [100, 120];
/// The PTX shipped for architectures without SASS: the oldest one, so every newer GPU can JIT it.
pub const PTX_ARCH: u32 = 75;

/// The image's targets: (SASS architectures with their suffix, the PTX architecture). Without
/// CUDA_COMPUTE_CAP (`cap` None: unset or empty), every base architecture plus the newer ones
/// the compiler knows; with it, that one architecture, which must be one the compiler lists
/// (`known`, as (number, suffix) pairs; `compiler` names it in the error).
pub fn image_targets(
    cap: Option<&str>,
    known: &[(u32, String)],
    compiler: &str,
) -> Result<(Vec<(u32, String)>, u32), String> {
    let Some(cap) = cap else {
        let archs = BASE_ARCHS
            .into_iter()
            .chain(
                NEWER_ARCHS
                    .into_iter()
                    .filter(|&a| known.iter().any(|(k, s)| *k == a && s.is_empty())),
            )
            .map(|a| (a, String::new()))
            .collect();
        return Ok((archs, PTX_ARCH));
    };
    let (n, suffix) = parse_compute_cap(cap)?;
    if !known.iter().any(|(k, s)| *k == n && *s == suffix) {
        let listed: Vec<String> = known.iter().map(|(k, s)| format!("{k}{s}")).collect();
        return Err(format!(
            "CUDA_COMPUTE_CAP={cap:?}: {compiler} does not build for sm_{n}{suffix}; it builds for {}. Pick one \
             of those, or unset CUDA_COMPUTE_CAP to build for every architecture",
            listed.join(", ")
        ));
    }
    Ok((vec![(n, suffix)], n))
}

/// The architectures an nvcc builds for, from `nvcc --list-gpu-arch` (`compute_XX` lines): each
/// plain, with `a` from 90 on and `f` from 100 on (the arch-specific variants nvcc accepts for
/// the architectures it lists).
pub fn nvcc_known_archs(list_gpu_arch: &str) -> Vec<(u32, String)> {
    let mut known = Vec::new();
    for n in list_gpu_arch
        .lines()
        .filter_map(|l| l.trim().strip_prefix("compute_")?.parse::<u32>().ok())
    {
        known.push((n, String::new()));
        if n >= 90 {
            known.push((n, "a".to_string()));
        }
        if n >= 100 {
            known.push((n, "f".to_string()));
        }
    }
    known
}

/// The SASS architectures a ptxas builds for, from the `'sm_XX'` values `ptxas --help` lists.
pub fn ptxas_known_archs(help: &str) -> Vec<(u32, String)> {
    let mut known: Vec<(u32, String)> = help
        .split('\'')
        .filter_map(|v| v.strip_prefix("sm_"))
        .filter_map(|v| {
            let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
            let suffix = &v[digits.len()..];
            matches!(suffix, "" | "a" | "f")
                .then(|| Some((digits.parse().ok()?, suffix.to_string())))?
        })
        .collect();
    known.sort();
    known.dedup();
    known
}
