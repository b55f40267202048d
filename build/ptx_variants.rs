//! PTX for SASS targets that need launch bounds of their own, derived from the PTX NVRTC made
//! for their PTX architecture instead of compiled again (a compile of every kernel takes a
//! minute and a half on two cores; the derived text differs only in the directives changed).
//!
//! sm_120: NVRTC 12.0 knows nothing above compute_90, so sm_120's SASS comes from compute_90
//! PTX. The block kernels of the backward ops keep three quarters of the blocks per SM there
//! (85 registers a thread instead of 64: at 64, ptxas 12.9 spilled 16-40 bytes in the f32 ones
//! for sm_120). The run-time fallback, which compiles for the GPU's own architecture, gets the
//! same budget from the kernel source (`CS_BWD_BLOCK_MIN_BLOCKS` in
//! kernels/softmax_backward.cu, under `__CUDA_ARCH__ >= 1200`); tests/cuda_image.rs checks that
//! the image has no spill on any architecture.

/// The part of an entry point's name that marks a backward block kernel.
pub const SM120_OWN_BUDGET: &str = "_backward_block_";

/// sm_120's blocks per SM for a kernel that asks for `n` elsewhere: three quarters, at least 1.
pub fn sm120_min_blocks(n: u32) -> u32 {
    (n * 3 / 4).max(1)
}

/// The compute_90 PTX with sm_120's launch bounds: each `.minnctapersm N` of an entry whose name
/// contains [`SM120_OWN_BUDGET`] becomes [`sm120_min_blocks`]`(N)`; every other byte is kept.
/// An error when no such entry is found (the rule would be out of date with the kernels).
pub fn sm120_ptx(compute_90: &str) -> Result<String, String> {
    let mut out = String::with_capacity(compute_90.len());
    let mut in_own_budget_entry = false;
    let mut rewritten = 0;
    for line in compute_90.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed
            .strip_prefix(".visible .entry ")
            .or_else(|| trimmed.strip_prefix(".entry "))
        {
            let name = rest.split('(').next().unwrap_or("").trim();
            in_own_budget_entry = name.contains(SM120_OWN_BUDGET);
        }
        match trimmed.strip_prefix(".minnctapersm ") {
            Some(value) if in_own_budget_entry => {
                let n: u32 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("unreadable PTX directive: {}", line.trim()))?;
                let indent = &line[..line.len() - trimmed.len()];
                let newline = if line.ends_with('\n') { "\n" } else { "" };
                out += &format!("{indent}.minnctapersm {}{newline}", sm120_min_blocks(n));
                rewritten += 1;
            }
            _ => out += line,
        }
    }
    if rewritten == 0 {
        return Err(format!(
            "the compute_90 PTX has no kernel named *{SM120_OWN_BUDGET}* with launch bounds: update \
             build/ptx_variants.rs with the kernels"
        ));
    }
    Ok(out)
}
