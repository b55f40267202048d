//! The GPU image embedded at build time, and what it was built with (for error messages).
//!
//! The image is a zstd-compressed fatbin (SASS per architecture + compute_75 PTX: about 110 MB
//! as the driver reads it, under 9 MB compressed) in a `static` (a `const` would copy its bytes
//! into the crate's metadata). [`fatbin`] inflates it; the CUDA backend does that once per CUDA
//! context. The PTX text and the `ptxas -v` report are not embedded: only the image checks read
//! them, from the build's output folder.

use crate::error::{Error, Result};

// On ELF targets the assembler includes the image (`.incbin`) between two hidden symbols:
// bytes in the object file only. (`include_bytes!` in a static puts them in the crate's
// metadata as well, doubling the rlib.)
#[cfg(all(cs_cuda_image, cs_image_incbin))]
std::arch::global_asm!(
    ".pushsection .rodata.cuda_softmax_image,\"a\",@progbits",
    ".p2align 4",
    concat!(".globl ", env!("CS_IMAGE_SYMBOL"), "_start"),
    concat!(".hidden ", env!("CS_IMAGE_SYMBOL"), "_start"),
    concat!(env!("CS_IMAGE_SYMBOL"), "_start:"),
    concat!(".incbin \"", env!("OUT_DIR"), "/softmax.fatbin.zst\""),
    concat!(".globl ", env!("CS_IMAGE_SYMBOL"), "_end"),
    concat!(".hidden ", env!("CS_IMAGE_SYMBOL"), "_end"),
    concat!(env!("CS_IMAGE_SYMBOL"), "_end:"),
    ".popsection",
);

#[cfg(all(cs_cuda_image, cs_image_incbin))]
unsafe extern "C" {
    #[link_name = concat!(env!("CS_IMAGE_SYMBOL"), "_start")]
    static IMAGE_START: u8;
    #[link_name = concat!(env!("CS_IMAGE_SYMBOL"), "_end")]
    static IMAGE_END: u8;
}

/// The compressed image (zstd), or `None` when no CUDA compiler was found at build time.
#[cfg(all(cs_cuda_image, cs_image_incbin))]
pub fn compressed() -> Option<&'static [u8]> {
    // SAFETY: the two symbols delimit the bytes the assembler included above, in a read-only
    // section that lives as long as the program; `end` is not before `start`.
    unsafe {
        let start = &raw const IMAGE_START;
        let end = &raw const IMAGE_END;
        Some(std::slice::from_raw_parts(
            start,
            (end as usize).saturating_sub(start as usize),
        ))
    }
}

/// The compressed image (zstd), or `None` when no CUDA compiler was found at build time.
#[cfg(all(cs_cuda_image, not(cs_image_incbin)))]
pub fn compressed() -> Option<&'static [u8]> {
    static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/softmax.fatbin.zst"));
    Some(BYTES)
}

/// The compressed image: `None`, this build found no CUDA compiler.
#[cfg(not(cs_cuda_image))]
pub fn compressed() -> Option<&'static [u8]> {
    None
}

/// Whether this build has a GPU image.
pub fn has_image() -> bool {
    compressed().is_some()
}

/// The fatbin the driver loads: the embedded image, inflated (about 0.2 s and 110 MB, freed by
/// the caller once the driver has loaded it).
pub fn fatbin() -> Result<Vec<u8>> {
    let compressed = compressed().ok_or(Error::NoCudaImage)?;
    let corrupt = |detail: String| Error::CorruptImage { detail };
    let size = zstd::zstd_safe::get_frame_content_size(compressed)
        .ok()
        .flatten()
        .ok_or_else(|| corrupt("no content size".into()))?;
    let size = usize::try_from(size).map_err(|_| corrupt("too large".into()))?;
    zstd::bulk::decompress(compressed, size).map_err(|e| corrupt(e.to_string()))
}

/// The folder the image was built in (OUT_DIR), on the machine that built it.
#[cfg(cs_cuda_image)]
const BUILD_DIR: Option<&str> = Some(env!("CS_IMAGE_DIR"));
#[cfg(not(cs_cuda_image))]
const BUILD_DIR: Option<&str> = None;

fn build_file(name: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(BUILD_DIR?).join(name)).ok()
}

/// The compute_75 PTX inside the fatbin, as text (the image checks read its version and
/// entries). Read from the build folder: `None` without an image, or where that folder is gone
/// (another machine, a cleaned target dir).
pub fn ptx() -> Option<String> {
    build_file("softmax.ptx")
}

/// `ptxas -v` output for every kernel and architecture of the fatbin, from the build folder
/// like [`ptx`].
pub fn ptxas_report() -> Option<String> {
    build_file("ptxas.txt")
}

/// What built the image: "nvcc 13.0", or "NVRTC 12.0, ptxas 12.9" for the pinned CUDA 12
/// toolchain ("none" without one).
#[cfg(cs_cuda_image)]
pub const TOOLKIT_VERSION: &str = env!("CS_TOOLKIT_VERSION");
/// What built the image ("none": no image).
#[cfg(not(cs_cuda_image))]
pub const TOOLKIT_VERSION: &str = "none";

/// The PTX ISA version of the image's PTX ("none" without an image).
#[cfg(cs_cuda_image)]
pub const PTX_VERSION: &str = env!("CS_PTX_VERSION");
/// The PTX ISA version of the image's PTX ("none" without an image).
#[cfg(not(cs_cuda_image))]
pub const PTX_VERSION: &str = "none";

/// Comma-separated targets in the fatbin, e.g. `sm_75,sm_80,...,compute_75`.
#[cfg(cs_cuda_image)]
pub const ARCHS: &str = env!("CS_IMAGE_ARCHS");
/// Comma-separated targets in the fatbin ("none" without an image).
#[cfg(not(cs_cuda_image))]
pub const ARCHS: &str = "none";

/// The oldest NVIDIA driver that loads the image on every GPU it has SASS for (525 for the
/// pinned CUDA 12 toolchain, 580 for CUDA 13.0 nvcc); 0 without an image.
#[cfg(cs_cuda_image)]
pub const MIN_DRIVER: u32 = const_u32(env!("CS_IMAGE_MIN_DRIVER"));
/// The oldest driver that loads the image: 0, no image.
#[cfg(not(cs_cuda_image))]
pub const MIN_DRIVER: u32 = 0;

#[cfg(cs_cuda_image)]
const fn const_u32(s: &str) -> u32 {
    let bytes = s.as_bytes();
    let (mut i, mut n) = (0, 0u32);
    while i < bytes.len() {
        n = n * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// The cuobjdump that reads this image (for the image checks and the SASS gate): beside the nvcc
/// that built it, else where scripts/install-nvcc.sh puts CUDA 13.0's (cuobjdump 13.2 reads the
/// CUDA 12 toolchain's cubins too; that toolchain has none of its own), else on PATH.
pub fn cuobjdump() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let beside = option_env!("CS_NVCC")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .and_then(|nvcc| Some(nvcc.parent()?.join("cuobjdump")));
    let pinned = std::env::var_os("CUDA_SOFTMAX_NVCC_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            Some(
                crate::cache_paths::user_cache(&|n| std::env::var_os(n))?
                    .join("cuda-softmax/cuda-13.0"),
            )
        })
        .map(|d| d.join("nvidia/cu13/bin/cuobjdump"));
    beside
        .filter(|p| p.is_file())
        .or(pinned.filter(|p| p.is_file()))
        .or_else(|| {
            std::process::Command::new("cuobjdump")
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::from("cuobjdump"))
        })
}

/// Runs `TOOL ARGS FILE` with FILE a temporary copy of `fatbin` (cuobjdump reads files only; a
/// file of its own for each call, since tests run in parallel) and returns what it printed, or
/// why it failed. For the image checks and the SASS gate.
#[doc(hidden)]
pub fn run_cuobjdump(
    tool: &std::path::Path,
    args: &[&str],
    fatbin: &[u8],
) -> std::result::Result<String, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "cuda-softmax-image-{}-{call}.fatbin",
        std::process::id()
    ));
    std::fs::write(&path, fatbin)
        .map_err(|e| format!("could not write {}: {e}", path.display()))?;
    let out = std::process::Command::new(tool)
        .args(args)
        .arg(&path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.map_err(|e| format!("could not run {}: {e}", tool.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed: {}",
            tool.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
