//! A content-addressed cache of built GPU images, shared by every profile and target dir
//! (clippy, doc, test and release builds each run build.rs with their own OUT_DIR; without it
//! each one recompiled 809 kernels for 7 architectures).
//!
//! The key hashes everything the image depends on: the kernel sources (every file under
//! kernels/ except the emulator's), the compiler's identity and version, the targets and the
//! flags. An entry is a folder written beside its final name and renamed into place, so a
//! reader sees a complete entry or none, and two builds racing write the same bytes.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::cache_paths::{ContentHash, user_cache};

/// The files an entry holds (all written by the compiler step into OUT_DIR).
pub const FILES: [&str; 4] = [
    "softmax.fatbin.zst",
    "softmax.ptx",
    "ptxas.txt",
    "image.txt",
];

/// The GPU-relevant kernel sources: every file in kernels/ (not kernels/emu/), sorted by name.
pub fn add_sources(key: &mut ContentHash, kernels: &Path) -> Result<(), String> {
    let mut files: Vec<PathBuf> = fs::read_dir(kernels)
        .map_err(|e| format!("read {}: {e}", kernels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let bytes = fs::read(&f).map_err(|e| format!("read {}: {e}", f.display()))?;
        key.add(f.file_name().unwrap_or_default().as_encoded_bytes())
            .add(&bytes);
    }
    Ok(())
}

/// CUDA_SOFTMAX_CACHE_DIR, else ~/.cache/cuda-softmax/images (XDG_CACHE_HOME honoured).
pub fn dir(lookup: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(d) = lookup("CUDA_SOFTMAX_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    Some(user_cache(lookup)?.join("cuda-softmax/images"))
}

/// Copies entry `key` into `out`; false when there is no complete entry.
pub fn fetch(cache: &Path, key: &str, out: &Path) -> bool {
    let entry = cache.join(key);
    if !FILES.iter().all(|f| entry.join(f).is_file()) {
        return false;
    }
    FILES
        .iter()
        .all(|f| fs::copy(entry.join(f), out.join(f)).is_ok())
}

/// Stores the files of `out` as entry `key`. A cache that cannot be written only costs the
/// next build a compile, so failures are returned for a warning, not an error.
pub fn store(cache: &Path, key: &str, out: &Path) -> Result<(), String> {
    let entry = cache.join(key);
    if entry.is_dir() {
        return Ok(());
    }
    let staging = cache.join(format!(".{key}.{}", std::process::id()));
    let result = (|| {
        fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
        for f in FILES {
            fs::copy(out.join(f), staging.join(f))
                .map_err(|e| format!("copy {f} into {}: {e}", staging.display()))?;
        }
        match fs::rename(&staging, &entry) {
            Ok(()) => Ok(()),
            // Another build stored the same entry first.
            Err(_) if entry.is_dir() => Ok(()),
            Err(e) => Err(format!("rename into {}: {e}", entry.display())),
        }
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}
