//! The CUDA side of the kernel registry: one `extern "C"` entry point for each
//! [`KernelConfig`] of [`KernelConfig::all`] (src/planning/registry.rs, compiled into build.rs),
//! written to OUT_DIR/kernel_entries.cu, the translation unit every kernel build compiles (the
//! GPU image, the emulator and the run-time fallback's bundle). The list of kernels is the
//! registry's; this file only says which template each (op, family) instantiates.

use std::fs;
use std::path::{Path, PathBuf};

use crate::registry::{CrossEntropyStage, Family, KernelConfig};
use crate::{Dtype, Op};

/// The kernel sources the entry points instantiate from (in kernels/).
pub const KERNEL_SOURCES: [&str; 5] = [
    "warp_rows.cu",
    "block_rows.cu",
    "two_pass_rows.cu",
    "strided_rows.cu",
    "cross_entropy.cu",
];

/// The CUDA storage type of a dtype.
fn cuda_type(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "float",
        Dtype::F16 => "__half",
        Dtype::Bf16 => "__nv_bfloat16",
    }
}

/// The op (kernels/ops.cuh) of the softmax-family ops: what the strided family's statistics
/// policies wrap.
fn op_struct(op: Op) -> &'static str {
    match op {
        Op::Softmax | Op::SoftmaxToF32 => "cs::SoftmaxOp",
        Op::LogSoftmax | Op::LogSoftmaxToF32 => "cs::LogSoftmaxOp",
        Op::SoftmaxBackward => "cs::SoftmaxBackwardOp",
        Op::LogSoftmaxBackward => "cs::LogSoftmaxBackwardOp",
        Op::LogSumExp | Op::CrossEntropy => "",
    }
}

/// The row policy (kernels/ops.cuh) an op runs on the row families with: what it loads,
/// reduces and stores.
fn row_policy(op: Op) -> String {
    match op {
        Op::LogSumExp => "cs::LogSumExpRows".into(),
        op if op.is_backward() => format!("cs::BackwardRows<{}>", op_struct(op)),
        op => format!("cs::ForwardRows<{}>", op_struct(op)),
    }
}

/// The entry point of `k`: `CS_ENTRY(name, threads, min_blocks, (call))`.
pub fn entry(k: &KernelConfig) -> Result<String, String> {
    let t = cuda_type(k.dtype);
    let to = cuda_type(k.op.output_dtype(k.dtype));
    let unknown = || {
        format!(
            "no CUDA template for {} (build/kernel_entries.rs)",
            k.name()
        )
    };
    let call = match (k.op, k.family) {
        (Op::CrossEntropy, Family::CrossEntropy { stage }) => {
            let b = stage.threads();
            match stage {
                CrossEntropyStage::Prepare => format!("cs::ce_prepare<{b}>(p)"),
                CrossEntropyStage::Stats => format!("cs::ce_stats<{t}, {b}>(p)"),
                CrossEntropyStage::Finish => format!("cs::ce_finish<{t}>(p)"),
                CrossEntropyStage::Reduce => format!("cs::ce_reduce<{b}>(p)"),
                CrossEntropyStage::Grad => format!("cs::ce_grad<{t}, {b}>(p)"),
                CrossEntropyStage::OnChip => format!("cs::ce_on_chip<{t}, {b}>(p)"),
            }
        }
        (Op::CrossEntropy, _) | (_, Family::CrossEntropy { .. }) => return Err(unknown()),
        (op, family) => {
            let rows = row_policy(op);
            match family {
                Family::Warp {
                    width,
                    cols_per_lane,
                    vec,
                } => {
                    format!("cs::warp_rows<{t}, {width}, {cols_per_lane}, {vec}, {rows}, {to}>(p)")
                }
                Family::Block { threads } => {
                    format!("cs::block_rows<{t}, {threads}, {rows}, {to}>(p)")
                }
                Family::Online { threads } => {
                    format!("cs::two_pass_rows<{t}, {threads}, {rows}, {to}>(p)")
                }
                // A chunk's (max, sum) is the same state for every forward op and logsumexp:
                // they share one entry a dtype (KernelConfig::entry_names).
                Family::SplitStats { threads } if op.shares_forward_stats() => {
                    format!("cs::split_stats<{t}, {threads}, cs::LogSumExpRows>(p)")
                }
                Family::SplitStats { threads } => {
                    format!("cs::split_stats<{t}, {threads}, {rows}>(p)")
                }
                // logsumexp's merge reads no row (one entry for every dtype).
                Family::SplitWrite { threads } if op == Op::LogSumExp => {
                    format!("cs::split_write<float, {threads}, {rows}, float>(p)")
                }
                Family::SplitWrite { threads } => {
                    format!("cs::split_write<{t}, {threads}, {rows}, {to}>(p)")
                }
                Family::Strided {
                    slices,
                    on_chip,
                    vec,
                } => {
                    let stats = if op.is_backward() {
                        "BackwardStats"
                    } else {
                        "ForwardStats"
                    };
                    let op = op_struct(op);
                    format!(
                        "cs::strided_rows<{t}, {slices}, {on_chip}, {vec}, cs::{stats}<{op}>, {to}>(p)"
                    )
                }
                Family::CrossEntropy { .. } => return Err(unknown()),
            }
        }
    };
    let name = k.name();
    let threads = k.threads_per_block();
    let min_blocks = k.min_blocks_per_sm();
    Ok(match k.family {
        Family::CrossEntropy { .. } => format!(
            "CS_ENTRY_WITH(cs::CrossEntropyParams, {name}, {threads}, {min_blocks}, ({call}))\n"
        ),
        // sm_120's own budget when compiled for it (kernels/block_rows.cu).
        _ if has_sm120_budget(k) => {
            format!(
                "CS_ENTRY({name}, {threads}, CS_BWD_BLOCK_MIN_BLOCKS({min_blocks}), ({call}))\n"
            )
        }
        _ => format!("CS_ENTRY({name}, {threads}, {min_blocks}, ({call}))\n"),
    })
}

/// Whether `k` keeps fewer blocks per SM on sm_120 (the backward block kernels: see
/// build/ptx_variants.rs).
pub fn has_sm120_budget(k: &KernelConfig) -> bool {
    matches!(k.family, Family::Block { .. }) && k.op.is_backward()
}

/// The entry points with sm_120 launch bounds of their own.
pub fn sm120_budget_entries() -> Vec<String> {
    let mut names: Vec<String> = KernelConfig::all()
        .iter()
        .filter(|k| has_sm120_budget(k))
        .map(KernelConfig::name)
        .collect();
    names.dedup();
    names
}

/// OUT_DIR/kernel_entries.cu's text: the kernel sources, then every entry point once, in
/// registry order.
pub fn entries_file() -> Result<String, String> {
    let mut text = String::from(
        "// Generated by build.rs (build/kernel_entries.rs) from the kernel registry\n\
         // (src/planning/registry.rs, KernelConfig::all): every entry point, in registry order.\n",
    );
    for source in KERNEL_SOURCES {
        text += &format!("#include \"{source}\"\n");
    }
    // Configurations that share an entry point (KernelConfig::entry_names) must instantiate the
    // same code: the first one's entry stands for all.
    let mut written: Vec<(String, String)> = Vec::new();
    for k in KernelConfig::all() {
        let line = entry(&k)?;
        match written.iter().find(|(name, _)| *name == k.name()) {
            Some((_, first)) if *first != line => {
                return Err(format!(
                    "{} names two different kernels:\n{first}{line}(build/kernel_entries.rs, \
                     KernelConfig::name)",
                    k.name()
                ));
            }
            Some(_) => {}
            None => {
                text += &line;
                written.push((k.name(), line));
            }
        }
    }
    Ok(text)
}

/// OUT_DIR/kernels_bundle.cu: every kernel source, with `#include "x"` of a header in kernels/
/// replaced by the header's text (once: they are all `#pragma once`), so that NVRTC needs no
/// include files of ours. Includes under a folder (the emulator's, in `#ifdef CS_EMULATOR`
/// branches) and `<...>` includes stay as they are.
pub(crate) fn write_kernel_bundle(
    kernels: &Path,
    sources: &[PathBuf],
    out: &Path,
) -> Result<(), String> {
    fn inline(
        path: &Path,
        kernels: &Path,
        seen: &mut Vec<PathBuf>,
        text: &mut String,
    ) -> Result<(), String> {
        if seen.iter().any(|p| p == path) {
            return Ok(());
        }
        seen.push(path.to_path_buf());
        let source =
            fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        for line in source.lines() {
            let header = line
                .trim()
                .strip_prefix("#include \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .filter(|name| !name.contains('/'));
            match header {
                Some(name) => inline(&kernels.join(name), kernels, seen, text)?,
                None if line.trim() == "#pragma once" => {}
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        Ok(())
    }
    let mut text = String::from(
        "// Generated by build.rs from kernels/*.cu: the run-time fallback's source.\n",
    );
    let mut seen = Vec::new();
    for s in sources {
        inline(s, kernels, &mut seen, &mut text)?;
    }
    let path = out.join("kernels_bundle.cu");
    fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Writes OUT_DIR/kernel_entries.cu (build/kernel_entries.rs) and returns its path; an error
/// when kernels/ holds a .cu file the entries do not include (it would be compiled nowhere).
pub(crate) fn write_kernel_entries(kernels: &Path, out: &Path) -> Result<PathBuf, String> {
    let mut on_disk: Vec<String> = fs::read_dir(kernels)
        .map_err(|e| format!("read {}: {e}", kernels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = KERNEL_SOURCES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    if on_disk != listed {
        return Err(format!(
            "kernels/ holds {on_disk:?} but build/kernel_entries.rs compiles {listed:?}: list every kernel \
             source in KERNEL_SOURCES"
        ));
    }
    let path = out.join("kernel_entries.cu");
    fs::write(&path, entries_file()?).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}
