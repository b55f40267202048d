//! Finds the NVIDIA driver library (libcuda) and checks, before the first call into it, that it
//! exports every function this crate calls through cudarc.
//!
//! Why: cudarc resolves driver functions lazily, on first call, and panics when one is missing.
//! A stub or damaged libcuda (a toolkit's `stubs/libcuda.so` first on `LD_LIBRARY_PATH`, a
//! half-installed driver) would then kill a `panic = "abort"` process, or print cudarc's panic
//! and name the wrong call. Checking every symbol up front turns all of these into one error that
//! says which library, what is wrong and what to do, and no path depends on unwinding.
//!
//! The check opens the library the same way cudarc does (the same names, in the same order), so
//! the library checked is the library cudarc then uses. When cudarc links libcuda at build time
//! instead (its `dynamic-linking` feature, as candle-core enables it), the process could not have
//! started without the library, and the check finds the one already loaded.

use std::sync::OnceLock;

use crate::types::error::{Error, Result};

/// Every driver function cudarc calls on this crate's behalf: opening a device, memory (pooled
/// and plain), copies, modules, launches, events for timing, error strings, and teardown
/// (including a caller's stream or context dropped through this crate's handles). What a caller
/// does with cudarc directly (`Device::cuda_stream()`) is outside this list.
/// `Device::cuda` checks that the driver library exports each one before calling any of them.
/// `cli/tests/driver_probe.rs` runs the whole API against a stand-in driver that exports exactly
/// this list, so a function missing here fails that test rather than a user's process.
pub const REQUIRED_FUNCTIONS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    // Only for a non-primary context of the caller's, dropped through our handles.
    "cuCtxDestroy_v2",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuMemAlloc_v2",
    "cuMemAllocAsync",
    "cuMemFree_v2",
    "cuMemFreeAsync",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventQuery",
    "cuEventElapsedTime",
    "cuEventDestroy_v2",
];

/// The file names tried, in the order cudarc (0.19, built for CUDA 12.8) tries them when it loads
/// the driver itself: the first one that loads is the one both use.
pub fn library_candidates() -> Vec<String> {
    use std::env::consts::{DLL_PREFIX as P, DLL_SUFFIX as S};
    let bits = if cfg!(target_pointer_width = "32") {
        "32"
    } else {
        "64"
    };
    let (major, minor) = (12, 8);
    let mut names = Vec::new();
    for lib in ["cuda", "nvcuda"] {
        names.extend([
            format!("{P}{lib}{S}"),
            format!("{P}{lib}{bits}{S}"),
            format!("{P}{lib}{bits}_{major}{S}"),
            format!("{P}{lib}{bits}_{major}{minor}{S}"),
            format!("{P}{lib}{bits}_{major}{minor}_0{S}"),
            format!("{P}{lib}{bits}_{major}0_{minor}{S}"),
            format!("{P}{lib}{bits}_10{S}"),
            format!("{P}{lib}{bits}_11{S}"),
            format!("{P}{lib}{bits}_12{S}"),
            format!("{P}{lib}{bits}_{major}0_0{S}"),
            format!("{P}{lib}{bits}_9{S}"),
            format!("{P}{lib}{S}.{major}"),
            format!("{P}{lib}{S}.12"),
            format!("{P}{lib}{S}.11"),
            format!("{P}{lib}{S}.10"),
            format!("{P}{lib}{S}.9"),
            format!("{P}{lib}{S}.1"),
        ]);
    }
    names
}

/// The library that passed the check, kept loaded for the life of the process (cudarc keeps its
/// own handle to the same library).
struct CheckedLibrary {
    _library: libloading::Library,
}

/// Checks that the driver library loads and exports every function in [`REQUIRED_FUNCTIONS`].
/// `Device::cuda` calls it before any driver call; it needs no GPU image. A success is kept for
/// the life of the process; a failure is checked afresh next time (it may be passing, say, out
/// of file handles).
pub fn check() -> Result<()> {
    static CHECKED: OnceLock<CheckedLibrary> = OnceLock::new();
    if CHECKED.get().is_some() {
        return Ok(());
    }
    let library = find_and_check()?;
    let _ = CHECKED.set(library);
    Ok(())
}

/// The driver library this process already has, if any: linked at build time (cudarc's
/// `dynamic-linking`, as candle-core enables it) or loaded by cudarc already. That is the one in
/// use, whatever the search order would find first.
#[cfg(unix)]
fn already_loaded() -> Option<(String, libloading::Library)> {
    use libloading::os::unix::{Library, RTLD_LAZY};
    const RTLD_NOLOAD: std::os::raw::c_int = 4; // glibc and musl
    ["libcuda.so.1", "libcuda.so"].into_iter().find_map(|name| {
        // SAFETY: RTLD_NOLOAD only returns a library that is already loaded; nothing runs.
        let lib = unsafe { Library::open(Some(name), RTLD_LAZY | RTLD_NOLOAD) }.ok()?;
        Some((name.to_string(), lib.into()))
    })
}

#[cfg(not(unix))]
fn already_loaded() -> Option<(String, libloading::Library)> {
    None
}

fn find_and_check() -> Result<CheckedLibrary> {
    if let Some((name, library)) = already_loaded() {
        return check_functions(name, library);
    }
    // Why files that exist would not load (say, an empty libcuda.so): reported when nothing loads.
    let mut unloadable = Vec::new();
    for name in library_candidates() {
        // SAFETY: loading the driver library runs its initialisers, as cudarc's own load would.
        match unsafe { libloading::Library::new(&name) } {
            Ok(library) => return check_functions(name, library),
            Err(e) => {
                // The loader's own words ("file too short", "wrong ELF class") are in the source.
                let text = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                if !text.contains("No such file") && !unloadable.iter().any(|u| u == &text) {
                    unloadable.push(text);
                }
            }
        }
    }
    match unloadable.is_empty() {
        true => Err(Error::DriverNotFound),
        false => Err(Error::DriverUnusable {
            library: unloadable[0]
                .split(": ")
                .next()
                .unwrap_or_default()
                .to_string(),
            problem: format!("it does not load ({})", unloadable.join("; ")),
        }),
    }
}

/// Where the library loaded as `name` lives (Linux: the one mapped file of that family in this
/// process), so that the error names the very file to remove or fix.
fn loaded_path(name: &str) -> Option<String> {
    let lib = if name.contains("nvcuda") {
        "nvcuda"
    } else {
        "cuda"
    };
    let family = format!("{}{lib}", std::env::consts::DLL_PREFIX); // "libcuda" or "libnvcuda"
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut paths: Vec<&str> = maps
        .lines()
        // "addr perms offset dev inode   /path/with maybe spaces/libcuda.so.1 (deleted)"
        .filter_map(|line| {
            line.find('/')
                .map(|at| line[at..].trim_end_matches(" (deleted)"))
        })
        .filter(|path| {
            let file = path.rsplit('/').next().unwrap_or(path);
            // libcuda.so.580.65, libcuda64_12.so; not libcudart.so or libcudnn.so.
            file.strip_prefix(family.as_str())
                .is_some_and(|rest| rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()))
        })
        .collect();
    paths.dedup();
    match paths.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

fn check_functions(name: String, library: libloading::Library) -> Result<CheckedLibrary> {
    let missing: Vec<&str> = REQUIRED_FUNCTIONS
        .iter()
        .copied()
        // SAFETY: only looks the symbol up; it is never called through this pointer.
        .filter(|f| unsafe { library.get::<*const ()>(f.as_bytes()) }.is_err())
        .collect();
    if missing.is_empty() {
        return Ok(CheckedLibrary { _library: library });
    }
    Err(Error::DriverUnusable {
        library: loaded_path(&name).unwrap_or(name),
        problem: describe_missing(&missing),
    })
}

fn describe_missing(missing: &[&str]) -> String {
    const SHOWN: usize = 6;
    let mut names = missing[..missing.len().min(SHOWN)].join(", ");
    if missing.len() > SHOWN {
        names.push_str(&format!(" and {} more", missing.len() - SHOWN));
    }
    // Stream-ordered allocation (cuMemAllocAsync, cuMemFreeAsync) came with CUDA 11.2.
    let only_newer = missing
        .iter()
        .all(|f| matches!(*f, "cuMemAllocAsync" | "cuMemFreeAsync"));
    let why = if only_newer {
        ": the driver is older than CUDA 11.2"
    } else {
        ""
    };
    format!(
        "it lacks {} of the {} driver functions this crate calls ({names}){why}",
        missing.len(),
        REQUIRED_FUNCTIONS.len()
    )
}

#[cfg(test)]
mod tests {
    /// The library checked is the library cudarc loads: same names, same order.
    #[test]
    fn candidates_match_cudarc() {
        let mut theirs = cudarc::get_lib_name_candidates("cuda");
        theirs.extend(cudarc::get_lib_name_candidates("nvcuda"));
        assert_eq!(super::library_candidates(), theirs);
    }
}
