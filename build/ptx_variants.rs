//! PTX for SASS targets that need launch bounds of their own, derived from the PTX NVRTC made
//! for their PTX architecture instead of compiled again (a compile of every kernel takes a
//! minute and a half on two cores; the derived text differs only in the directives changed).
//!
//! sm_120: NVRTC 12.0 knows nothing above compute_90, so sm_120's SASS comes from compute_90
//! PTX. The block kernels of the backward ops keep three quarters of the blocks per SM there
//! (85 registers a thread instead of 64: at 64, ptxas 12.9 spilled 16-40 bytes in the f32 ones
//! for sm_120). Which kernels: `has_sm120_budget` in build/kernel_entries.rs, from the registry;
//! compiled for sm_120 itself (nvcc, or the run-time fallback) they get the same budget from
//! the kernel source (`CS_BWD_BLOCK_MIN_BLOCKS` in kernels/block_rows.cu, under
//! `__CUDA_ARCH__ >= 1200`, with which build/kernel_entries.rs wraps the same kernels).

/// sm_120's blocks per SM for a kernel that asks for `n` elsewhere: three quarters, at least 1.
pub fn sm120_min_blocks(n: u32) -> u32 {
    (n * 3 / 4).max(1)
}

/// The rule in words, for the image cache key: a change to it is a new image.
pub fn sm120_rule() -> String {
    let values: Vec<String> = (1..=16).map(|n| sm120_min_blocks(n).to_string()).collect();
    format!("minnctapersm 1..16 -> {}", values.join(","))
}

/// The compute_90 PTX with sm_120's launch bounds: the `.minnctapersm N` of each entry named in
/// `own_budget` becomes [`sm120_min_blocks`]`(N)`; every other byte is kept. An error unless
/// each of those entries is found with exactly one such directive (the PTX and the registry
/// would disagree).
pub fn sm120_ptx(compute_90: &str, own_budget: &[String]) -> Result<String, String> {
    let mut out = String::with_capacity(compute_90.len());
    let mut current: Option<&str> = None;
    let mut rewritten: Vec<&str> = Vec::new();
    for line in compute_90.split_inclusive('\n') {
        let trimmed = line.trim_start();
        // ".entry NAME(" with any linkage before it (.visible, .weak, none).
        if let Some((_, rest)) = trimmed.split_once(".entry ") {
            let name = rest.split('(').next().unwrap_or("").trim();
            current = own_budget.iter().find(|n| *n == name).map(String::as_str);
        } else if trimmed.starts_with('{') {
            // The body: launch bounds come before it.
            current = None;
        }
        match (trimmed.strip_prefix(".minnctapersm "), current) {
            (Some(value), Some(name)) => {
                let n: u32 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("unreadable PTX directive: {}", line.trim()))?;
                let indent = &line[..line.len() - trimmed.len()];
                let newline = if line.ends_with('\n') { "\n" } else { "" };
                out += &format!("{indent}.minnctapersm {}{newline}", sm120_min_blocks(n));
                rewritten.push(name);
                current = None;
            }
            _ => out += line,
        }
    }
    let mut missing: Vec<&String> = own_budget
        .iter()
        .filter(|n| !rewritten.contains(&n.as_str()))
        .collect();
    missing.truncate(4);
    if !missing.is_empty() || rewritten.len() != own_budget.len() {
        return Err(format!(
            "the compute_90 PTX does not hold each of the {} kernels with sm_120 launch bounds once with a \
             .minnctapersm directive (not found: {missing:?}): build/ptx_variants.rs and the registry disagree",
            own_budget.len()
        ));
    }
    Ok(out)
}
