//! The GPU image embedded at build time, and what it was built with (for error messages).
//!
//! The image is a zstd-compressed fatbin (SASS per architecture + compute_75 PTX: about 110 MB
//! as the driver reads it, under 9 MB compressed) in a `static` (a `const` would copy its bytes
//! into the crate's metadata). [`fatbin`] inflates it; the CUDA backend does that once per CUDA
//! context. The PTX text and the `ptxas -v` report are not embedded: only the image checks read
//! them, from the build's output folder.

use crate::types::error::{Error, Result};

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

/// Whether this build was asked for no GPU image (`CUDA_SOFTMAX_NO_GPU_IMAGE=1`, or its older
/// name `CUDA_SOFTMAX_NO_NVCC=1`): then nothing was compiled for the GPU.
pub const BUILT_WITHOUT_IMAGE_ON_REQUEST: bool = cfg!(cs_no_gpu_image);

#[cfg(feature = "tools")]
/// The build script's output folder (OUT_DIR) on the machine that built the crate: the image
/// tests check what the GPU compile left there, or that it left nothing.
#[doc(hidden)]
pub const BUILD_OUT_DIR: &str = env!("OUT_DIR");

/// The oldest driver worth naming in a message: the image's floor, and never below 525 (the
/// oldest any build of this crate supports), also when there is no image.
#[cfg(cs_cuda_image)]
pub fn driver_floor() -> u32 {
    MIN_DRIVER.max(525)
}

/// The oldest driver worth naming in a message: 525 (no image in this build).
#[cfg(not(cs_cuda_image))]
pub fn driver_floor() -> u32 {
    525
}

/// Whether this build has a GPU image.
pub fn has_image() -> bool {
    compressed().is_some()
}

/// The fatbin the driver loads: the embedded image, inflated (about 0.2 s and 110 MB, freed by
/// the caller once the driver has loaded it).
pub fn fatbin() -> Result<Vec<u8>> {
    inflate(compressed().ok_or(Error::NoCudaImage)?)
}

/// The most an image may inflate to. A real one is about 110 MB; the frame header's declared
/// size is never trusted beyond this (a damaged header must not make us ask for 2^40 bytes).
pub const MAX_INFLATED_BYTES: u64 = 1 << 30;

/// Inflates a zstd frame holding an image: the declared content size must be present, at most
/// [`MAX_INFLATED_BYTES`], and exactly what the frame inflates to; anything else is
/// [`Error::CorruptImage`]. Public for the integrity tests.
#[doc(hidden)]
pub fn inflate(compressed: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |detail: String| Error::CorruptImage { detail };
    let declared = match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(size)) => size,
        Ok(None) => return Err(corrupt("its zstd frame declares no content size".into())),
        Err(_) => return Err(corrupt("it is not a zstd frame".into())),
    };
    if declared > MAX_INFLATED_BYTES {
        return Err(corrupt(format!(
            "its zstd frame declares {declared} bytes, more than any image ({MAX_INFLATED_BYTES})"
        )));
    }
    // (declared <= 1 GiB fits usize on every target with a CUDA driver.)
    let capacity = usize::try_from(declared).map_err(|_| corrupt("too large".into()))?;
    let inflated =
        zstd::bulk::decompress(compressed, capacity).map_err(|e| corrupt(e.to_string()))?;
    if inflated.len() as u64 != declared {
        return Err(corrupt(format!(
            "it inflates to {} bytes where its header declares {declared}",
            inflated.len()
        )));
    }
    Ok(inflated)
}

/// Where the embedded image was built (OUT_DIR/softmax.fatbin.zst on the building machine), for
/// error messages.
pub fn built_file() -> Option<String> {
    Some(format!("{}/softmax.fatbin.zst", BUILD_DIR?))
}

/// The folder the image was built in (OUT_DIR), on the machine that built it.
#[cfg(cs_cuda_image)]
const BUILD_DIR: Option<&str> = Some(env!("CS_IMAGE_DIR"));
#[cfg(not(cs_cuda_image))]
const BUILD_DIR: Option<&str> = None;

#[cfg(feature = "tools")]
fn build_file(name: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(BUILD_DIR?).join(name)).ok()
}

#[cfg(feature = "tools")]
/// The compute_75 PTX inside the fatbin, as text (the image checks read its version and
/// entries). Read from the build folder: `None` without an image, or where that folder is gone
/// (another machine, a cleaned target dir).
pub fn ptx() -> Option<String> {
    build_file("softmax.ptx")
}

#[cfg(feature = "tools")]
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

#[cfg(feature = "tools")]
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
                crate::runtime::cache_paths::user_cache(&|n| std::env::var_os(n))?
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

#[cfg(feature = "tools")]
/// Runs `TOOL ARGS FILE` with FILE a temporary copy of `fatbin` (cuobjdump reads files only; a
/// file of its own for each call, since tests run in parallel) and returns what it printed, or
/// why it failed. For the image checks and the SASS gate.
#[doc(hidden)]
pub fn run_cuobjdump(
    tool: &std::path::Path,
    args: &[&str],
    fatbin: &[u8],
) -> std::result::Result<String, String> {
    // A new file under a name nobody holds (never a file or link planted at a guessable name).
    let (path, mut file) = crate::runtime::cache_paths::create_unique_file(
        &std::env::temp_dir(),
        "cuda-softmax-image-",
        ".fatbin",
    )
    .map_err(|e| format!("could not create a temporary file: {e}"))?;
    let written = std::io::Write::write_all(&mut file, fatbin);
    drop(file);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(format!("could not write {}: {e}", path.display()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A zstd frame by hand: single segment, `declared` as an 8-byte content size, one raw
    /// block holding `payload`.
    fn frame(declared: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        f.extend_from_slice(&declared.to_le_bytes());
        let header = ((payload.len() as u32) << 3) | 1; // last block, raw
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.extend_from_slice(payload);
        f
    }

    fn corrupt_detail(bytes: &[u8]) -> String {
        match inflate(bytes) {
            Err(Error::CorruptImage { detail }) => detail,
            other => panic!("expected CorruptImage, got {other:?}"),
        }
    }

    #[test]
    fn a_sound_frame_inflates() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let packed = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(inflate(&packed).unwrap(), data);
        assert_eq!(inflate(&frame(5, b"hello")).unwrap(), b"hello");
    }

    /// The header is never trusted: a 16-byte frame declaring 2^40 bytes is an error, not an
    /// allocation of a terabyte (which aborted the process).
    #[test]
    fn a_huge_declared_size_is_an_error_not_an_allocation() {
        let detail = corrupt_detail(&frame(1 << 40, b""));
        assert!(detail.contains("1099511627776"), "{detail}");
        corrupt_detail(&frame(MAX_INFLATED_BYTES + 1, b""));
    }

    #[test]
    fn a_size_mismatch_or_a_damaged_frame_is_an_error() {
        // Declares 10 bytes, holds 5; declares 3, holds 5.
        corrupt_detail(&frame(10, b"hello"));
        corrupt_detail(&frame(3, b"hello"));
        // Not zstd at all, empty, truncated.
        assert!(corrupt_detail(b"not an image").contains("not a zstd frame"));
        corrupt_detail(&[]);
        let packed = zstd::bulk::compress(&[7u8; 4096], 3).unwrap();
        corrupt_detail(&packed[..packed.len() - 3]);
        // No declared size (a streaming frame): refused rather than guessed.
        let mut streamed = Vec::new();
        let mut encoder = zstd::stream::Encoder::new(&mut streamed, 3).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &[1u8; 1000]).unwrap();
        encoder.finish().unwrap();
        assert!(corrupt_detail(&streamed).contains("no content size"));
        // The message names the image file and what to do.
        let text = Error::CorruptImage { detail: "x".into() }.to_string();
        assert!(
            text.contains("softmax.fatbin.zst") && text.contains("cargo clean"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod temp_file_tests {
    /// The temporary copy cuobjdump reads is created under a fresh name, never through a file or
    /// symbolic link planted at a guessable one: links at every name the old scheme
    /// (`cuda-softmax-image-<pid>-<n>.fatbin`) would have used are left alone, and their
    /// targets never written.
    #[cfg(unix)]
    #[test]
    fn cuobjdump_copies_never_follow_a_planted_link() {
        let tmp = std::env::temp_dir();
        let target = tmp.join(format!("cs-planted-target-{}", std::process::id()));
        let _ = std::fs::remove_file(&target);
        let links: Vec<_> = (0..64)
            .map(|n| {
                tmp.join(format!(
                    "cuda-softmax-image-{}-{n}.fatbin",
                    std::process::id()
                ))
            })
            .collect();
        for l in &links {
            let _ = std::fs::remove_file(l);
            std::os::unix::fs::symlink(&target, l).unwrap();
        }
        let out = super::run_cuobjdump(std::path::Path::new("cat"), &[], b"image bytes").unwrap();
        assert_eq!(out, "image bytes");
        assert!(!target.exists(), "the planted link's target was written");
        for l in &links {
            assert!(
                std::fs::symlink_metadata(l)
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
            let _ = std::fs::remove_file(l);
        }
    }
}
