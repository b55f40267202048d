//! The GPU image embedded at build time, and what it was built with (for error messages).

/// The fatbin (SASS per architecture + compute_75 PTX), or `None` when nvcc was not found.
#[cfg(cs_cuda_image)]
pub const FATBIN: Option<&[u8]> = Some(include_bytes!(concat!(env!("OUT_DIR"), "/softmax.fatbin")));
/// The fatbin: `None`, this build found no nvcc.
#[cfg(not(cs_cuda_image))]
pub const FATBIN: Option<&[u8]> = None;

/// The compute_75 PTX inside the fatbin, as text (the image checks read its version and entries).
#[cfg(cs_cuda_image)]
pub const PTX: Option<&str> = Some(include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx")));
/// The image's PTX: `None`, this build found no nvcc.
#[cfg(not(cs_cuda_image))]
pub const PTX: Option<&str> = None;

/// `ptxas -v` output for every kernel and architecture of the fatbin.
#[cfg(cs_cuda_image)]
pub const PTXAS_REPORT: Option<&str> = Some(include_str!(concat!(env!("OUT_DIR"), "/ptxas.txt")));
/// `ptxas -v` output: `None`, this build found no nvcc.
#[cfg(not(cs_cuda_image))]
pub const PTXAS_REPORT: Option<&str> = None;

/// The CUDA toolkit release that built the image ("none" without one).
#[cfg(cs_cuda_image)]
pub const TOOLKIT_VERSION: &str = env!("CS_TOOLKIT_VERSION");
/// The CUDA toolkit release that built the image ("none" without one).
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
