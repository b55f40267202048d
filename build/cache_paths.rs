//! What build.rs and the library share about on-disk caches: the user's cache folder and the
//! content hash that names cache entries (the image cache of build/image_cache.rs, the NVRTC
//! fallback's cubins of src/jit.rs).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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
