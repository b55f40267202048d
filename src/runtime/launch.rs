//! The parameter blocks of the entry points (mirroring `cs::SoftmaxParams` in kernels/common.cuh
//! and `cs::CrossEntropyParams` in kernels/cross_entropy.cu), and the description of one launch
//! that both backends execute.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

use crate::planning::{Family, KernelConfig, Stage};
use crate::types::error::{Error, Result};

/// The parameter block of the softmax family's entry points (`cs::SoftmaxParams`, 72 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SoftmaxParams {
    /// Device address of the first input element.
    pub x: u64,
    /// Device address of the first output element.
    pub y: u64,
    /// Device address of the upstream gradient (backward ops; 0 for others).
    pub dy: u64,
    pub rows: i64,
    pub cols: i64,
    /// Device address of the split-row workspace (0 for other kernels).
    pub workspace: u64,
    /// Columns per chunk for split-row kernels (0 for others).
    pub chunk_cols: i64,
    /// Strided kernels only: the distance between a row's elements (>= 2); unused by others.
    pub inner: i64,
    /// The op is taken of `scale * x` (> 0 and finite: checked before a launch).
    pub scale: f32,
    /// Spells out the padding after `scale`, so that the layout has none implicit.
    pub pad: u32,
}

/// The parameter block of the cross-entropy entry points (`cs::CrossEntropyParams`, 152
/// bytes): the softmax block (x the logits, y the gradient, the stages' workspace, rows, cols,
/// chunk_cols), then cross-entropy's own fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CrossEntropyParams {
    pub base: SoftmaxParams,
    /// The targets' address (i32 or i64).
    pub targets: u64,
    /// Class weights (f32, one a class), or 0.
    pub weight: u64,
    /// The loss output (f32).
    pub loss: u64,
    /// Each row's logsumexp (f32): written by the forward, read by the backward.
    pub lse: u64,
    /// The z-loss output (f32).
    pub z_loss: u64,
    /// The upstream gradient of the loss (f32), or 0 for 1.
    pub dloss: u64,
    /// Where the prepare stage writes the first row with an invalid target (i64), or 0.
    pub status: u64,
    /// The ignored class (with the flag `crate::ops::cross_entropy::FLAG_HAS_IGNORE`).
    pub ignore_index: i64,
    /// Label smoothing.
    pub smoothing: f32,
    /// z-loss coefficient.
    pub z: f32,
    /// Softcap, or 0 for none.
    pub softcap: f32,
    /// `crate::ops::cross_entropy` flag bits.
    pub ce_flags: i32,
}

// SAFETY: plain #[repr(C)] data with the layout of the CUDA structs of the same names (pointers
// and 64-bit integers, then 32-bit fields; no padding: the layout test below), each passed by
// value as the only parameter of the kernels that declare it (KernelParams::check_fits). Each op
// passes its own block: a field added for one op changes no other op's parameter (a larger
// cs::SoftmaxParams did change the softmax kernels' SASS, 288 -> 304 instructions in one).
unsafe impl cudarc::driver::DeviceRepr for SoftmaxParams {}
// SAFETY: as above.
unsafe impl cudarc::driver::DeviceRepr for CrossEntropyParams {}

/// One launch's parameter block, of the type its kernels declare.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KernelParams {
    Softmax(SoftmaxParams),
    CrossEntropy(CrossEntropyParams),
}

impl From<SoftmaxParams> for KernelParams {
    fn from(p: SoftmaxParams) -> Self {
        KernelParams::Softmax(p)
    }
}

impl From<CrossEntropyParams> for KernelParams {
    fn from(p: CrossEntropyParams) -> Self {
        KernelParams::CrossEntropy(p)
    }
}

impl KernelParams {
    /// The fields every block starts with.
    pub(crate) fn base_mut(&mut self) -> &mut SoftmaxParams {
        match self {
            KernelParams::Softmax(p) => p,
            KernelParams::CrossEntropy(p) => &mut p.base,
        }
    }

    /// The block's bytes, for the emulator's C interface.
    pub(crate) fn as_bytes(&self) -> (*const std::ffi::c_void, usize) {
        match self {
            KernelParams::Softmax(p) => (
                p as *const SoftmaxParams as *const std::ffi::c_void,
                size_of::<SoftmaxParams>(),
            ),
            KernelParams::CrossEntropy(p) => (
                p as *const CrossEntropyParams as *const std::ffi::c_void,
                size_of::<CrossEntropyParams>(),
            ),
        }
    }

    /// An error (a planner bug, never a user's) unless every stage's kernel declares this
    /// block: a kernel given another op's block would read the wrong bytes.
    pub(crate) fn check_fits(&self, stages: &[Stage]) -> Result<()> {
        for stage in stages {
            let wants_ce = matches!(stage.kernel.family, Family::CrossEntropy { .. });
            if wants_ce != matches!(self, KernelParams::CrossEntropy(_)) {
                return Err(Error::Launch {
                    kernel: stage.kernel.name(),
                    detail: format!(
                        "given the {} parameter block (a planner bug: please report the shape \
                         and dtype)",
                        if wants_ce { "softmax" } else { "cross-entropy" }
                    ),
                });
            }
        }
        Ok(())
    }
}

/// A memory range a launch may touch; the emulator rejects accesses outside every range.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AccessRange {
    pub addr: u64,
    pub bytes: u64,
    pub writable: bool,
}

impl AccessRange {
    /// Whether the two ranges share a byte (an empty range shares none).
    pub(crate) fn overlaps(&self, other: &AccessRange) -> bool {
        let end = self.addr.saturating_add(self.bytes);
        let other_end = other.addr.saturating_add(other.bytes);
        self.bytes != 0 && other.bytes != 0 && self.addr < other_end && other.addr < end
    }
}

/// One operation: the stages of a plan, run in order with the same parameters, and the memory
/// ranges they may touch. Borrowed, so that describing a launch allocates nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launch<'a> {
    pub stages: &'a [Stage],
    pub params: KernelParams,
    pub ranges: &'a [AccessRange],
}

/// Every entry point's symbol name, by `KernelConfig::index`: formatted once per process, so
/// that launches format nothing. NUL-terminated for the emulator's C interface.
fn entry_point_names() -> &'static [CString] {
    static NAMES: OnceLock<Box<[CString]>> = OnceLock::new();
    NAMES.get_or_init(|| {
        KernelConfig::all()
            .iter()
            // Symbol names never hold a NUL; an empty name would only fail to resolve.
            .map(|k| CString::new(k.name()).unwrap_or_default())
            .collect()
    })
}

/// The entry point of `kernel`: its slot index (`KernelConfig::index`) and its symbol name.
/// An error (never a panic) for a configuration no entry point exists for.
pub(crate) fn entry_point(kernel: &KernelConfig) -> Result<(usize, &'static CStr)> {
    kernel
        .index()
        .and_then(|i| Some((i, entry_point_names().get(i)?.as_c_str())))
        .ok_or_else(|| Error::Launch {
            kernel: kernel.name(),
            detail: "no entry point has this configuration (see KernelConfig::all)".into(),
        })
}

/// A symbol name from the table, for the CUDA driver and for messages (names are ASCII).
pub(crate) fn name_str(name: &CStr) -> &str {
    name.to_str().unwrap_or("<non-UTF-8 kernel name>")
}

/// The dynamic shared memory a kernel function must be allowed
/// (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) before a launch asking for `requested`
/// bytes, when it allows `allowed` now; `None` when it allows enough. Both backends follow this
/// one rule: the CUDA backend sets the attribute, the emulator checks launches against it as a
/// GPU does (without a raised attribute a block gets 48 KiB of static + dynamic shared memory).
pub(crate) fn dynamic_smem_to_allow(allowed: u32, requested: u32) -> Option<u32> {
    (requested > allowed).then_some(requested)
}

#[cfg(test)]
mod tests {
    /// The blocks' layouts match kernels/cross_entropy.cu's static_assert: 72 bytes of
    /// `cs::SoftmaxParams`, 152 of `cs::CrossEntropyParams`, which starts with it.
    #[test]
    fn parameter_block_layout() {
        assert_eq!(std::mem::size_of::<super::SoftmaxParams>(), 72);
        assert_eq!(std::mem::offset_of!(super::CrossEntropyParams, targets), 72);
        assert_eq!(std::mem::size_of::<super::CrossEntropyParams>(), 152);
    }

    /// Ranges overlap where they share a byte: not when they only touch, never when empty,
    /// and without overflow at the top of the address space.
    #[test]
    fn ranges_overlap_where_they_share_a_byte() {
        let r = |addr, bytes| super::AccessRange {
            addr,
            bytes,
            writable: false,
        };
        let a = r(100, 8);
        for (other, shared) in [
            (r(100, 8), true),
            (r(107, 1), true),
            (r(96, 5), true),
            (r(90, 40), true),
            (r(108, 4), false),
            (r(92, 8), false),
            (r(104, 0), false),
        ] {
            assert_eq!(a.overlaps(&other), shared, "{other:?}");
            assert_eq!(other.overlaps(&a), shared, "{other:?}");
        }
        assert!(r(u64::MAX - 4, 16).overlaps(&r(u64::MAX - 1, 1)));
    }
}
