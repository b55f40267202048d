//! A content-addressed cache of built GPU images, shared by every profile and target dir
//! (clippy, doc, test and release builds each run build.rs with their own OUT_DIR; without it
//! each one recompiled every kernel for every architecture).
//!
//! The key hashes everything the image depends on ([`KeyInputs`]): the kernel sources (every
//! file under kernels/ except the emulator's), the compiler's identity and version, the targets,
//! every flag build.rs passes, and the environment variables the compilers read themselves. An
//! entry is a folder holding the image's files and a manifest (the key's inputs, and each file's
//! length and digest). A fetch verifies every file against the manifest: a missing, short or
//! damaged part is reported as damaged, and the build compiles the image again and replaces the
//! entry. Entries are written into a staging folder of a unique name and renamed into place, so
//! a reader sees a complete entry or none, and two builds racing write the same bytes.
//!
//! Compiled into build.rs and into tests/build_script.rs (which drives it with stand-in
//! compilers): nothing here reads the process environment directly.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::cache_paths::{ContentHash, create_unique_dir, digest, user_cache};

/// The files an entry holds (all written by the compiler step into OUT_DIR).
pub const FILES: [&str; 4] = [
    "softmax.fatbin.zst",
    "softmax.ptx",
    "ptxas.txt",
    "image.txt",
];

/// The entry's description of itself: the key's inputs and each file's length and digest.
pub const MANIFEST: &str = "manifest.txt";
const MANIFEST_FORMAT: &str = "cuda-softmax image cache entry v1";

/// Environment variables the CUDA compilers read by themselves (nvcc appends and prepends the
/// first two to its command line; NVCC_CCBIN picks its host compiler). Each is in the key and on
/// build.rs's rerun list; so is any other variable set with a prefix in
/// [`COMPILER_ENV_PREFIXES`].
pub const COMPILER_ENV_VARS: [&str; 3] = ["NVCC_APPEND_FLAGS", "NVCC_PREPEND_FLAGS", "NVCC_CCBIN"];
/// Prefixes of variables that a CUDA compiler may read (nvcc's, NVRTC's, ptxas's).
pub const COMPILER_ENV_PREFIXES: [&str; 3] = ["NVCC_", "NVRTC_", "PTXAS_"];

/// A variable's value, with empty and unset meaning the same: unset.
pub fn env_value(lookup: &dyn Fn(&str) -> Option<OsString>, name: &str) -> Option<String> {
    lookup(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// The compiler variables that are set, by name: the fixed list plus every variable of the
/// environment (`vars`) with a compiler prefix. Sorted, no duplicates, empty values left out.
pub fn compiler_env(
    lookup: &dyn Fn(&str) -> Option<OsString>,
    vars: impl IntoIterator<Item = OsString>,
) -> Vec<(String, String)> {
    let mut names: Vec<String> = COMPILER_ENV_VARS.iter().map(|v| v.to_string()).collect();
    names.extend(
        vars.into_iter()
            .filter_map(|v| v.into_string().ok())
            .filter(|v| COMPILER_ENV_PREFIXES.iter().any(|p| v.starts_with(p))),
    );
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter_map(|n| Some((n.clone(), env_value(lookup, &n)?)))
        .collect()
}

/// What an image depends on, as named lines: the key is their hash, and the manifest lists them
/// (so that a person can see why two builds did not share an entry).
#[derive(Default, Clone)]
pub struct KeyInputs {
    lines: Vec<(String, String)>,
}

impl KeyInputs {
    pub fn new() -> KeyInputs {
        KeyInputs::default()
    }

    /// Adds one input (newlines in the value are escaped: one line an input).
    pub fn add(&mut self, name: &str, value: &str) -> &mut KeyInputs {
        self.lines.push((
            name.to_string(),
            value.replace('\\', "\\\\").replace('\n', "\\n"),
        ));
        self
    }

    /// The GPU-relevant kernel sources: every file in kernels/ (not kernels/emu/), sorted by
    /// name, each by its digest.
    pub fn add_sources(&mut self, kernels: &Path) -> Result<&mut KeyInputs, String> {
        let mut files: Vec<PathBuf> = fs::read_dir(kernels)
            .map_err(|e| format!("read {}: {e}", kernels.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            let bytes = fs::read(&f).map_err(|e| format!("read {}: {e}", f.display()))?;
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            self.add(&format!("source {name}"), &digest(&bytes));
        }
        Ok(self)
    }

    /// The lines, as the manifest lists them.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|(name, value)| format!("input {name} = {value}\n"))
            .collect()
    }

    /// The cache key: the hash of every input.
    pub fn key(&self) -> String {
        let mut hash = ContentHash::new();
        for (name, value) in &self.lines {
            hash.add(name.as_bytes()).add(value.as_bytes());
        }
        hash.hex()
    }
}

/// The key's inputs for one image: `settings` (what build.rs chose: the recipe, targets, flags,
/// compiler identity, lineinfo, compression), the kernel sources under `kernels`, and the
/// compiler variables set in the environment (`lookup`, `vars` its names).
pub fn image_inputs(
    settings: &[(&str, String)],
    kernels: &Path,
    lookup: &dyn Fn(&str) -> Option<OsString>,
    vars: impl IntoIterator<Item = OsString>,
) -> Result<KeyInputs, String> {
    let mut inputs = KeyInputs::new();
    for (name, value) in settings {
        inputs.add(name, value);
    }
    inputs.add_sources(kernels)?;
    for (name, value) in compiler_env(lookup, vars) {
        inputs.add(&format!("env {name}"), &value);
    }
    Ok(inputs)
}

/// CUDA_SOFTMAX_CACHE_DIR, else ~/.cache/cuda-softmax/images (XDG_CACHE_HOME honoured).
pub fn dir(lookup: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    if let Some(d) = lookup("CUDA_SOFTMAX_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    Some(user_cache(lookup)?.join("cuda-softmax/images"))
}

/// What a fetch found.
#[derive(Debug, PartialEq)]
pub enum Fetch {
    /// A sound entry: its files are now in `out`.
    Hit,
    /// No entry for the key.
    Miss,
    /// An entry that is not sound (what is wrong with it): compile again and replace it.
    Damaged(String),
}

/// The manifest of a sound entry for `key` holding `files` (name, bytes).
fn manifest(key: &str, inputs: &KeyInputs, files: &[(&str, &[u8])]) -> String {
    let mut text = format!("{MANIFEST_FORMAT}\nkey {key}\n");
    text += &inputs.text();
    for (name, bytes) in files {
        text += &format!("file {name} {} {}\n", bytes.len(), digest(bytes));
    }
    text
}

/// Reads entry `entry` and checks it against its manifest: the files' bytes in FILES order, or
/// what is wrong.
fn verified(entry: &Path, key: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = fs::read_to_string(entry.join(MANIFEST))
        .map_err(|e| format!("its {MANIFEST} cannot be read ({e})"))?;
    let mut lines = text.lines();
    if lines.next() != Some(MANIFEST_FORMAT) || lines.next() != Some(&format!("key {key}")) {
        return Err(format!("its {MANIFEST} is not this entry's"));
    }
    let listed: Vec<(&str, u64, &str)> = lines
        .filter_map(|l| {
            let mut f = l.strip_prefix("file ")?.split(' ');
            Some((f.next()?, f.next()?.parse().ok()?, f.next()?))
        })
        .collect();
    FILES
        .iter()
        .map(|name| {
            let (_, len, want) = listed
                .iter()
                .find(|(n, _, _)| n == name)
                .ok_or_else(|| format!("its {MANIFEST} does not list {name}"))?;
            let bytes = fs::read(entry.join(name)).map_err(|e| format!("{name}: {e}"))?;
            if bytes.len() as u64 != *len {
                return Err(format!(
                    "{name} holds {} bytes where {len} were stored",
                    bytes.len()
                ));
            }
            if digest(&bytes) != *want {
                return Err(format!("{name} does not match its digest"));
            }
            Ok(bytes)
        })
        .collect()
}

/// Copies entry `key` into `out` once every file of it is verified.
pub fn fetch(cache: &Path, key: &str, out: &Path) -> Fetch {
    let entry = cache.join(key);
    if !entry.exists() {
        return Fetch::Miss;
    }
    let files = match verified(&entry, key) {
        Ok(files) => files,
        Err(why) => return Fetch::Damaged(why),
    };
    for (name, bytes) in FILES.iter().zip(&files) {
        if let Err(e) = fs::write(out.join(name), bytes) {
            // OUT_DIR not writable: the compile that follows will say so properly.
            return Fetch::Damaged(format!("could not copy {name} out of it ({e})"));
        }
    }
    Fetch::Hit
}

/// Stores the files of `out` as entry `key` (its manifest naming `inputs`), replacing a damaged
/// entry of that key. A cache that cannot be written only costs the next build a compile, so
/// failures are returned for a warning, not an error.
pub fn store(cache: &Path, key: &str, inputs: &KeyInputs, out: &Path) -> Result<(), String> {
    let entry = cache.join(key);
    if verified(&entry, key).is_ok() {
        return Ok(());
    }
    fs::create_dir_all(cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let staging = create_unique_dir(cache, &format!(".{key}.staging-"))
        .map_err(|e| format!("create a staging folder in {}: {e}", cache.display()))?;
    let result = (|| {
        let mut files = Vec::new();
        for f in FILES {
            let bytes = fs::read(out.join(f)).map_err(|e| format!("read {f}: {e}"))?;
            fs::write(staging.join(f), &bytes)
                .map_err(|e| format!("write {f} into {}: {e}", staging.display()))?;
            files.push((f, bytes));
        }
        let named: Vec<(&str, &[u8])> = files.iter().map(|(f, b)| (*f, b.as_slice())).collect();
        // The manifest last: a staging folder without one is never mistaken for an entry.
        fs::write(staging.join(MANIFEST), manifest(key, inputs, &named))
            .map_err(|e| format!("write the manifest into {}: {e}", staging.display()))?;
        if verified(&entry, key).is_ok() {
            // Another build stored a sound entry while this one staged its own.
            return Ok(());
        }
        if entry.exists() {
            // A damaged entry: moved aside first (a rename onto a non-empty folder fails), then
            // removed. Another build may be doing the same: whichever renames last wins, and
            // both wrote the same bytes.
            let aside = create_unique_dir(cache, &format!(".{key}.damaged-"))
                .map_err(|e| format!("create a folder in {}: {e}", cache.display()))?;
            let moved = aside.join("entry");
            if fs::rename(&entry, &moved).is_ok() {
                let _ = fs::remove_dir_all(&aside);
            } else {
                let _ = fs::remove_dir(&aside);
            }
        }
        match fs::rename(&staging, &entry) {
            Ok(()) => Ok(()),
            // Another build stored a sound entry first.
            Err(_) if verified(&entry, key).is_ok() => Ok(()),
            Err(e) => Err(format!("rename into {}: {e}", entry.display())),
        }
    })();
    let _ = fs::remove_dir_all(&staging);
    result
}

/// Takes the image from the cache or compiles it, and stores what was compiled: the one path
/// build.rs takes. `compile` writes FILES into `out`; `warn` gets one line for a damaged entry
/// (replaced) or an entry that could not be stored. Returns whether the cache served the image.
pub fn fetch_or_compile(
    cache: Option<&Path>,
    inputs: &KeyInputs,
    out: &Path,
    compile: impl FnOnce() -> Result<(), String>,
    warn: &mut dyn FnMut(String),
) -> Result<bool, String> {
    let key = inputs.key();
    if let Some(cache) = cache {
        match fetch(cache, &key, out) {
            Fetch::Hit => return Ok(true),
            Fetch::Miss => {}
            Fetch::Damaged(why) => warn(format!(
                "the cached GPU image {} is damaged ({why}): compiling it again and replacing it",
                cache.join(&key).display()
            )),
        }
    }
    compile()?;
    if let Some(cache) = cache
        && let Err(e) = store(cache, &key, inputs, out)
    {
        warn(format!(
            "the GPU image was built but not cached ({e}); the next profile's build compiles it again"
        ));
    }
    Ok(false)
}
