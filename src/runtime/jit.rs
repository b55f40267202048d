//! The run-time fallback: when the embedded image cannot load (a driver older than its PTX and
//! no SASS for this GPU, or a GPU newer than every target), compile the kernel sources embedded
//! at build time into a cubin for this GPU with the user's own NVRTC, cache it on disk, and say
//! so once on stderr.
//!
//! NVRTC is opened with libloading, not through cudarc: cudarc 0.19 panics when no libnvrtc
//! loads and never tries libnvrtc.so.13. Every failure here is a message for the error that
//! `Device::cuda` returns.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Instant;

#[path = "../../build/nvrtc.rs"]
mod nvrtc;

use crate::runtime::cache_paths::{ContentHash, digest, user_cache, write_atomically};
use nvrtc::{Nvrtc, Output};

/// Every GPU kernel source in one text: kernels/*.cu with the project's own headers inlined
/// (build.rs writes it; NVRTC gets it without include files of ours).
pub static SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_bundle.cu"));

/// Set to 1 to take the fallback even when the embedded image loads (to exercise it on a GPU).
pub const FORCE_VAR: &str = "CUDA_SOFTMAX_FORCE_JIT";
/// A libnvrtc to use (a file path), before the search.
pub const NVRTC_VAR: &str = "CUDA_SOFTMAX_NVRTC";

/// Whether the caller asked for the fallback even though the image may load.
pub fn forced() -> bool {
    std::env::var_os(FORCE_VAR).is_some_and(|v| v == "1")
}

/// The cubin for compute capability `cc`, from the disk cache or compiled now.
pub fn cubin_for(cc: (i32, i32)) -> Result<Vec<u8>, String> {
    let lookup = |name: &str| std::env::var_os(name);
    let nvrtc = open_nvrtc(&lookup)?;
    let (major, minor) = nvrtc.version()?;
    let arch = format!("sm_{}{}", cc.0, cc.1);
    let key = ContentHash::new()
        .add(SOURCE.as_bytes())
        .add(arch.as_bytes())
        .add(format!("{major}.{minor}").as_bytes())
        .add(nvrtc.path.as_os_str().as_encoded_bytes())
        .hex();
    let cache = cache_dir(&lookup).map(|d| d.join(format!("{key}.cubin")));
    match cache.as_deref().map(read_cached) {
        Some(Cached::Hit(bytes)) => {
            notice(&format!(
                "cuda-softmax: the embedded GPU image does not load here; using the {arch} cubin that NVRTC \
                 {major}.{minor} compiled earlier ({})",
                cache
                    .as_deref()
                    .map_or(String::new(), |c| c.display().to_string())
            ));
            return Ok(bytes);
        }
        Some(Cached::Damaged(why)) => eprintln!(
            "cuda-softmax: the cached cubin {} is damaged ({why}); compiling it again",
            cache
                .as_deref()
                .map_or(String::new(), |c| c.display().to_string())
        ),
        Some(Cached::Missing) | None => {}
    }
    let includes = include_dirs(&lookup, &nvrtc.path);
    if includes.is_empty() {
        return Err(format!(
            "NVRTC {major}.{minor} ({}) was found but no CUDA headers (cuda_fp16.h) beside it or in CUDA_HOME/include, \
             /usr/local/cuda/include or scripts/install-nvcc.sh's folder",
            nvrtc.path.display()
        ));
    }
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "-std=c++17".to_string(),
        "-default-device".to_string(),
    ];
    options.extend(includes.iter().map(|d| format!("-I{}", d.display())));
    let start = Instant::now();
    let cubin = nvrtc
        .compile(SOURCE, "cuda_softmax_kernels.cu", &options, Output::Cubin)
        .map_err(|e| {
            format!("NVRTC {major}.{minor} could not compile the kernels for {arch}: {e}")
        })?;
    let stored = cache.as_deref().map(|c| store(c, &cubin));
    notice(&format!(
        "cuda-softmax: the embedded GPU image does not load here; compiled the kernels for {arch} with NVRTC \
         {major}.{minor} ({}) in {:.0} s{}",
        nvrtc.path.display(),
        start.elapsed().as_secs_f64(),
        match (&cache, stored) {
            (Some(c), Some(Ok(()))) => format!(", cached in {}", c.display()),
            (_, Some(Err(e))) => format!(" (not cached: {e})"),
            _ => " (no cache folder: set CUDA_SOFTMAX_CACHE_DIR)".to_string(),
        }
    ));
    Ok(cubin)
}

/// Says `text` on stderr, once a process (every Device after the first reuses the module).
fn notice(text: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("{text}"));
}

/// The libnvrtc to use: CUDA_SOFTMAX_NVRTC, then the names the dynamic loader knows (newest
/// major first), then the usual toolkit folders and scripts/install-nvcc.sh's.
fn open_nvrtc(lookup: &dyn Fn(&str) -> Option<OsString>) -> Result<Nvrtc, String> {
    if let Some(path) = lookup(NVRTC_VAR).filter(|p| !p.is_empty()) {
        return Nvrtc::open(Path::new(&path)).map_err(|e| format!("{NVRTC_VAR}: {e}"));
    }
    let names = [
        "libnvrtc.so.13",
        "libnvrtc.so.12",
        "libnvrtc.so",
        "libnvrtc.so.11.2",
    ];
    let mut candidates: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = lookup(var).filter(|h| !h.is_empty()) {
            candidates.extend(names.iter().map(|n| Path::new(&home).join("lib64").join(n)));
        }
    }
    candidates.extend(
        names
            .iter()
            .map(|n| Path::new("/usr/local/cuda/lib64").join(n)),
    );
    if let Some(dir) = pinned_toolchain(lookup) {
        candidates.push(dir.join("nvidia/cuda_nvrtc/lib/libnvrtc.so.12"));
    }
    let mut tried = Vec::new();
    for c in &candidates {
        match Nvrtc::open(c) {
            Ok(n) if n.version().is_ok() => return Ok(n),
            Ok(_) => tried.push(format!("{}: no nvrtcVersion", c.display())),
            Err(e) => tried.push(e),
        }
    }
    Err(format!(
        "no usable libnvrtc was found to compile the kernels for this GPU (tried {}). Install the CUDA toolkit's \
         NVRTC (e.g. `pip install nvidia-cuda-nvrtc-cu12` and point {NVRTC_VAR} at its libnvrtc.so.12, or run \
         scripts/install-nvcc.sh)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The folder of scripts/install-nvcc.sh's CUDA 12 toolchain.
fn pinned_toolchain(lookup: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(d) = lookup("CUDA_SOFTMAX_CU12_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    Some(user_cache(lookup)?.join("cuda-softmax/cuda-12-nvrtc"))
}

/// Folders holding cuda_fp16.h: beside the library (a toolkit's include/, or the PyPI layout
/// nvidia/cuda_nvrtc/lib -> nvidia/cuda_runtime/include), CUDA_HOME, /usr/local/cuda, and the
/// pinned toolchain's.
fn include_dirs(lookup: &dyn Fn(&str) -> Option<OsString>, library: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(lib_dir) = library.parent().filter(|d| !d.as_os_str().is_empty()) {
        dirs.push(lib_dir.join("../include"));
        dirs.push(lib_dir.join("../../cuda_runtime/include"));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = lookup(var).filter(|h| !h.is_empty()) {
            dirs.push(Path::new(&home).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    if let Some(dir) = pinned_toolchain(lookup) {
        dirs.push(dir.join("nvidia/cuda_runtime/include"));
    }
    dirs.retain(|d| d.join("cuda_fp16.h").is_file());
    dirs.truncate(1); // one set of headers, the first found, not a mix
    dirs
}

/// CUDA_SOFTMAX_CACHE_DIR/jit, else ~/.cache/cuda-softmax/jit.
fn cache_dir(lookup: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    lookup("CUDA_SOFTMAX_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("jit"))
        .or_else(|| Some(user_cache(lookup)?.join("cuda-softmax/jit")))
}

/// What a cache file holds: a header line (the format, the cubin's length and digest), then the
/// cubin. The header is what lets a truncated or damaged file be told from a sound one.
const CUBIN_MAGIC: &str = "cuda-softmax jit cubin v1";

fn cubin_header(cubin: &[u8]) -> String {
    format!("{CUBIN_MAGIC} {} {}\n", cubin.len(), digest(cubin))
}

/// A cache file, read and verified.
#[derive(Debug, PartialEq)]
enum Cached {
    Hit(Vec<u8>),
    /// No file there (or one that cannot be read).
    Missing,
    /// A file whose header or digest does not match: recompile and replace it.
    Damaged(String),
}

fn read_cached(path: &Path) -> Cached {
    let Ok(bytes) = std::fs::read(path) else {
        return Cached::Missing;
    };
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Cached::Damaged(format!("{} bytes without a header", bytes.len()));
    };
    let (header, cubin) = (&bytes[..=newline], &bytes[newline + 1..]);
    if header != cubin_header(cubin).as_bytes() {
        return Cached::Damaged(format!(
            "its header says {:?}; its {} bytes of cubin do not match it",
            String::from_utf8_lossy(&header[..newline]),
            cubin.len()
        ));
    }
    Cached::Hit(cubin.to_vec())
}

/// Writes the header and the cubin under a unique name beside the final one and renames it into
/// place, so a reader never sees half a file (and a damaged file is replaced whole).
fn store(path: &Path, cubin: &[u8]) -> Result<(), String> {
    let dir = path.parent().ok_or("no parent folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let mut bytes = cubin_header(cubin).into_bytes();
    bytes.extend_from_slice(cubin);
    write_atomically(path, &bytes).map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bundle is self-contained: no include of the project's own headers is left outside
    /// the emulator's branch, and every kernel source is in it.
    #[test]
    fn the_bundle_inlines_the_project_headers() {
        for line in SOURCE.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("#include \"") {
                assert!(rest.starts_with("emu/"), "left in the bundle: {l}");
            }
        }
        for marker in [
            "struct SoftmaxParams",
            "struct CrossEntropyParams",
            "CS_ENTRY(",
        ] {
            assert!(SOURCE.contains(marker), "{marker} missing from the bundle");
        }
    }

    /// No NVRTC anywhere: an error that says what to install, not a panic.
    #[test]
    fn no_nvrtc_is_an_error_that_says_what_to_do() {
        let lookup = |name: &str| match name {
            NVRTC_VAR => Some(OsString::from("/nonexistent/libnvrtc.so.12")),
            _ => None,
        };
        let err = open_nvrtc(&lookup).err().expect("no library at that path");
        assert!(
            err.contains(NVRTC_VAR) && err.contains("/nonexistent"),
            "{err}"
        );
    }

    /// The cubin cache keeps a digest: a sound file is a hit; a truncated, zero-byte, damaged
    /// or headerless one is reported damaged (and then recompiled and replaced), never used.
    #[test]
    fn the_cubin_cache_verifies_what_it_reads() {
        let dir = std::env::temp_dir().join(format!("cs-jit-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("k.cubin");
        assert_eq!(read_cached(&path), Cached::Missing);
        let cubin: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        store(&path, &cubin).unwrap();
        assert_eq!(read_cached(&path), Cached::Hit(cubin.clone()));
        let sound = std::fs::read(&path).unwrap();
        let damaged = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            matches!(read_cached(&path), Cached::Damaged(_))
        };
        assert!(damaged(&sound[..sound.len() - 1]), "truncated");
        assert!(damaged(b""), "zero bytes");
        assert!(damaged(&cubin), "a bare cubin without the header");
        let mut flipped = sound.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(damaged(&flipped), "one byte changed");
        let mut longer = sound.clone();
        longer.push(0);
        assert!(damaged(&longer), "a byte appended");
        // Storing again replaces the damaged file whole.
        store(&path, &cubin).unwrap();
        assert_eq!(read_cached(&path), Cached::Hit(cubin));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["k.cubin"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
