//! What build.rs and the library share about on-disk caches: the user's cache folder, the
//! content hash that names cache entries and verifies their files (the image cache of
//! build/image_cache.rs, the NVRTC fallback's cubins of src/runtime/jit.rs), and files and folders
//! created under names nobody else holds (temporary files, staging folders).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The user's cache folder: XDG_CACHE_HOME, else ~/.cache.
pub fn user_cache(lookup: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    lookup("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| Some(Path::new(&lookup("HOME")?).join(".cache")))
}

/// 128-bit FNV-1a (two 64-bit lanes with different offsets): stable across Rust versions,
/// unlike std's hasher, and plenty for a cache key.
pub struct ContentHash {
    a: u64,
    b: u64,
}

impl ContentHash {
    pub fn new() -> ContentHash {
        ContentHash {
            a: 0xcbf2_9ce4_8422_2325,
            b: 0x6c62_272e_07bb_0142,
        }
    }

    /// Adds `bytes`, length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    pub fn add(&mut self, bytes: &[u8]) -> &mut ContentHash {
        for &byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.a = (self.a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            self.b = (self.b ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.a, self.b)
    }
}

/// The digest of `bytes` (a 128-bit content hash, hex): what cache entries record of each file
/// they keep, to tell a damaged or truncated file from a sound one. (It catches accidents, not a
/// forger: whoever can write the cache can write its digests.)
pub fn digest(bytes: &[u8]) -> String {
    ContentHash::new().add(bytes).hex()
}

/// A name no other call in any process is likely to have made: the process id, a per-process
/// counter, the time and the standard library's per-process random hash keys.
fn unique_suffix() -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let random = RandomState::new().hash_one((call, nanos));
    format!("{}-{call}-{random:016x}", std::process::id())
}

/// Creates a new file `dir/<prefix><unique><suffix>` that did not exist before (O_EXCL: a file,
/// folder or symbolic link already at that name is never opened or followed; another name is
/// tried), readable and writable by its owner only.
#[allow(dead_code)] // (the library's: build.rs stages folders)
pub fn create_unique_file(dir: &Path, prefix: &str, suffix: &str) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..16 {
        let path = dir.join(format!("{prefix}{}{suffix}", unique_suffix()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no unique name")))
}

/// Creates a new folder `dir/<prefix><unique>` that did not exist before (never one found
/// there, nor a link's target).
#[allow(dead_code)] // (build.rs's: the library writes single files)
pub fn create_unique_dir(dir: &Path, prefix: &str) -> io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..16 {
        let path = dir.join(format!("{prefix}{}", unique_suffix()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no unique name")))
}

/// Writes `bytes` to a new file `path` atomically: into a unique file beside it, then renamed
/// over `path` (a reader sees the old file or the whole new one, never a part).
#[allow(dead_code)] // (the library's: build.rs stages folders)
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let (tmp, mut file) = create_unique_file(dir, &format!(".{name}."), ".tmp")?;
    let written = io::Write::write_all(&mut file, bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
