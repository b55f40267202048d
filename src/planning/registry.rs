//! The kernel registry: every entry point (op x family x tile configuration x dtype), its
//! dense index, symbol name and launch bounds. The one list of kernels: build.rs compiles this
//! file too (with op.rs and src/types/dtype.rs) and makes the CUDA instantiations from
//! [`KernelConfig::all`] (build/kernel_entries.rs), so the image, the emulator and this registry
//! cannot disagree.

use super::{Dtype, Op};

/// A kernel family and its tile configuration. With an op and a dtype it names one `extern "C"`
/// entry point (`KernelConfig::name`), which build.rs instantiates from kernels/*.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `width` lanes per row, `cols_per_lane` elements per lane moved `vec` at a time.
    Warp {
        /// Lanes per row (a power of two, at most 32).
        width: u32,
        /// Elements each lane holds.
        cols_per_lane: u32,
        /// Elements per access (1, or 16 bytes' worth).
        vec: u32,
    },
    /// A block of `threads` per row, row cached in shared memory.
    Block {
        /// Threads per block.
        threads: u32,
    },
    /// A block of `threads` per row, online normalizer then a second read.
    Online {
        /// Threads per block.
        threads: u32,
    },
    /// Split-row pass 1: a block per (chunk, row) writes the chunk's (max, sum).
    SplitStats {
        /// Threads per block.
        threads: u32,
    },
    /// Split-row pass 2: a block per (chunk, row) merges the row's states, writes its chunk.
    SplitWrite {
        /// Threads per block.
        threads: u32,
    },
    /// Rows `inner` apart (a dimension other than the last): `vec` neighbouring rows a lane,
    /// 32 lanes a block, each row split over `slices` warps; the loaded elements kept in shared
    /// memory (`on_chip`, traffic 1.0) or read again for the write pass.
    Strided {
        /// Warps a block, each taking every `slices`-th element of the block's rows.
        slices: u32,
        /// Whether the block keeps its rows in shared memory (else it reads them twice).
        on_chip: bool,
        /// Rows a lane (1, or 2 moved as one word: `inner` even and the tensors aligned).
        vec: u32,
    },
    /// A stage of the fused cross-entropy (kernels/cross_entropy.cu).
    CrossEntropy {
        /// Which stage.
        stage: CrossEntropyStage,
    },
}

/// The stages of the fused cross-entropy, in the order a plan runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CrossEntropyStage {
    /// One block: the class weights' sum over V, the Mean denominators, the first invalid
    /// target.
    Prepare,
    /// A block per (chunk, row): the chunk's online (max, sum) and smoothing sum; one read.
    Stats,
    /// A thread per row: lse, the row's loss terms, the gradient's row state.
    Finish,
    /// One block: the Sum / Mean loss, in a fixed order.
    Reduce,
    /// A block per (chunk, row): the gradient (reads the chunk again, writes it).
    Grad,
    /// A block per row, the row in shared memory: stats, finish and grad in one kernel (one
    /// read of the logits, one write of the gradient).
    OnChip,
}

impl CrossEntropyStage {
    /// Every stage, in entry-point order.
    pub const ALL: [CrossEntropyStage; 6] = [
        CrossEntropyStage::Prepare,
        CrossEntropyStage::Stats,
        CrossEntropyStage::Finish,
        CrossEntropyStage::Reduce,
        CrossEntropyStage::Grad,
        CrossEntropyStage::OnChip,
    ];

    /// The stage's part of the entry-point name.
    pub fn name(self) -> &'static str {
        match self {
            CrossEntropyStage::Prepare => "prepare",
            CrossEntropyStage::Stats => "stats",
            CrossEntropyStage::Finish => "finish",
            CrossEntropyStage::Reduce => "reduce",
            CrossEntropyStage::Grad => "grad",
            CrossEntropyStage::OnChip => "on_chip",
        }
    }

    /// Threads a block (the entry point's launch bounds).
    pub fn threads(self) -> u32 {
        match self {
            CrossEntropyStage::Prepare | CrossEntropyStage::Reduce => 1024,
            _ => 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// One entry point: an op, a family, its tile configuration and a storage type.
pub struct KernelConfig {
    /// What the kernel computes.
    pub op: Op,
    /// Storage type of the input (the output's is `op.output_dtype(dtype)`).
    pub dtype: Dtype,
    /// Family and tile configuration.
    pub family: Family,
}

/// Threads per block of the warp family (4 warps).
pub const WARP_FAMILY_THREADS: u32 = 128;
/// Longest row the warp family holds in registers (32 lanes x 64 elements).
pub const WARP_FAMILY_MAX_COLS: usize = 32 * 64;
/// Lanes per row in the warp family (32 / width rows per warp).
pub(crate) const WARP_WIDTHS: [u32; 6] = [1, 2, 4, 8, 16, 32];
/// Elements a lane holds, at least: two f32 packs, one 16-bit pack, or 8 scalars. With fewer,
/// the per-row work (index math, the shuffle reductions, the reciprocal) is shared by too few
/// elements: the SASS census measured 0.67 warp instructions per element for f32 at 4 per lane
/// against 0.48 at 8 (tests/sass_gate.rs budgets 0.6).
pub(crate) const MIN_LANE_COLS: u32 = 8;
/// Elements per lane of full-warp rows (32 lanes), longer rows: steps of 8 past 16 (multiples of
/// every pack width), so that a row uses at least 7/8 of its lanes' slots past 256 columns
/// (powers of two left up to 47% idle at 1025 columns).
pub(crate) const LONG_LANE_COLS: [u32; 7] = [16, 24, 32, 40, 48, 56, 64];
pub(crate) const BLOCK_THREADS: [u32; 3] = [128, 256, 512];
pub(crate) const ONLINE_THREADS: u32 = 512;
pub(crate) const SPLIT_THREADS: u32 = 256;
/// Warps a block of the strided family may split its rows over.
pub(crate) const STRIDED_SLICES: [u32; 3] = [1, 8, 32];
/// Rows a lane of the strided family may take.
pub(crate) const STRIDED_VECS: [u32; 2] = [1, 2];
/// Strided entry points per dtype: each slice count two-pass and on chip, each row width.
pub(crate) const STRIDED_CONFIGS: usize = 2 * STRIDED_SLICES.len() * STRIDED_VECS.len();
/// Warp-family lane shapes: every width at MIN_LANE_COLS, then full warps at LONG_LANE_COLS.
pub(crate) const WARP_LANE_SHAPES: usize = WARP_WIDTHS.len() + LONG_LANE_COLS.len();
/// Entry points per dtype: each lane shape scalar and vector, the block sizes, online, the split
/// pair (the order of `KernelConfig::all()`).
pub(crate) const CONFIGS_PER_DTYPE: usize = 2 * WARP_LANE_SHAPES + BLOCK_THREADS.len() + 3;

#[cfg(test)]
thread_local! {
    /// Names `KernelConfig::name` formatted on this thread (tests: launches must format none).
    pub(crate) static NAMES_FORMATTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Where each op's entry points sit in `KernelConfig::all()`.
impl Op {
    /// Entry points per dtype.
    pub(crate) const fn configs_per_dtype(self) -> usize {
        if matches!(self, Op::CrossEntropy) {
            return CrossEntropyStage::ALL.len();
        }
        let blocks = if self.has_block_family() {
            0
        } else {
            BLOCK_THREADS.len()
        };
        let strided = if self.has_strided_family() {
            STRIDED_CONFIGS
        } else {
            0
        };
        CONFIGS_PER_DTYPE - blocks + strided
    }

    /// Position of this op's first entry point in `KernelConfig::all()`.
    pub(crate) const fn first_index(self) -> usize {
        let mut i = 0;
        let mut first = 0;
        while i < Op::ALL.len() {
            if Op::ALL[i] as usize == self as usize {
                return first;
            }
            first += Op::ALL[i].dtypes().len() * Op::ALL[i].configs_per_dtype();
            i += 1;
        }
        first
    }
}

impl KernelConfig {
    /// How many configurations `all()` lists.
    pub const COUNT: usize = {
        let mut count = 0;
        let mut i = 0;
        while i < Op::ALL.len() {
            count += Op::ALL[i].dtypes().len() * Op::ALL[i].configs_per_dtype();
            i += 1;
        }
        count
    };

    /// This configuration's position in `all()`, computed without building the list or its
    /// names (the backends keep per-kernel state in slots by this index); `None` for a
    /// configuration `all()` does not list.
    pub fn index(&self) -> Option<usize> {
        let op = self.op;
        let dtype = op.dtypes().iter().position(|&d| d == self.dtype)?;
        let blocks = if op.has_block_family() {
            BLOCK_THREADS.len()
        } else {
            0
        };
        let position = |list: &[u32], x: u32| list.iter().position(|&y| y == x);
        let after_warp = 2 * WARP_LANE_SHAPES;
        let within = match self.family {
            Family::Warp {
                width,
                cols_per_lane,
                vec,
            } => {
                let shape = if cols_per_lane == MIN_LANE_COLS {
                    position(&WARP_WIDTHS, width)?
                } else if width == 32 {
                    WARP_WIDTHS.len() + position(&LONG_LANE_COLS, cols_per_lane)?
                } else {
                    return None;
                };
                let vector = match vec {
                    1 => 0,
                    v if v as usize == self.dtype.vector_width() => 1,
                    _ => return None,
                };
                2 * shape + vector
            }
            Family::Block { threads } if op.has_block_family() => {
                after_warp + position(&BLOCK_THREADS, threads)?
            }
            Family::Online { threads } if threads == ONLINE_THREADS => after_warp + blocks,
            Family::SplitStats { threads } if threads == SPLIT_THREADS => after_warp + blocks + 1,
            Family::SplitWrite { threads } if threads == SPLIT_THREADS => after_warp + blocks + 2,
            Family::Strided {
                slices,
                on_chip,
                vec,
            } if op.has_strided_family() => {
                let variant = 2 * position(&STRIDED_SLICES, slices)? + on_chip as usize;
                after_warp
                    + blocks
                    + 3
                    + STRIDED_VECS.len() * variant
                    + position(&STRIDED_VECS, vec)?
            }
            Family::CrossEntropy { stage } if op == Op::CrossEntropy => {
                CrossEntropyStage::ALL.iter().position(|&s| s == stage)?
            }
            _ => return None,
        };
        Some(op.first_index() + dtype * op.configs_per_dtype() + within)
    }

    /// The entry point's symbol name (formatted on each call: launches use a table built once).
    pub fn name(&self) -> String {
        #[cfg(test)]
        NAMES_FORMATTED.with(|n| n.set(n.get() + 1));
        let (op, dt) = (self.op.name(), self.dtype.name());
        match self.family {
            Family::Warp {
                width,
                cols_per_lane,
                vec,
            } => format!("{op}_warp_{dt}_w{width}_c{cols_per_lane}_v{vec}"),
            Family::Block { threads } => format!("{op}_block_{dt}_b{threads}"),
            Family::Online { threads } => format!("{op}_online_{dt}_b{threads}"),
            // The forward ops' and logsumexp's chunk states are the same code (the op only
            // matters when the chunks are merged): one entry a dtype.
            Family::SplitStats { threads } if self.op.shares_forward_stats() => {
                format!("softmax_split_stats_{dt}_b{threads}")
            }
            Family::SplitStats { threads } => format!("{op}_split_stats_{dt}_b{threads}"),
            // logsumexp's merge reads only the f32 workspace: one entry for every dtype.
            Family::SplitWrite { threads } if self.op == Op::LogSumExp => {
                format!("{op}_split_write_b{threads}")
            }
            Family::SplitWrite { threads } => format!("{op}_split_write_{dt}_b{threads}"),
            Family::Strided {
                slices,
                on_chip,
                vec,
            } => {
                let variant = if on_chip { "onchip" } else { "twopass" };
                format!("{op}_strided_{variant}_{dt}_s{slices}_v{vec}")
            }
            // prepare and reduce touch no logits: one entry for every dtype.
            Family::CrossEntropy {
                stage: stage @ (CrossEntropyStage::Prepare | CrossEntropyStage::Reduce),
            } => format!("{op}_{}_b{}", stage.name(), stage.threads()),
            Family::CrossEntropy { stage } => {
                format!("{op}_{}_{dt}_b{}", stage.name(), stage.threads())
            }
        }
    }

    /// The entry points' symbol names, each once, in registry order. Configurations whose code
    /// would be the same whatever their op or dtype share one entry point (a row of the registry
    /// that differs only in a parameter its machine code ignores does not earn its build time):
    /// the forward ops' and logsumexp's split stats (one a dtype), logsumexp's split merge and
    /// cross-entropy's prepare and reduce stages (one for every dtype).
    pub fn entry_names() -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for k in Self::all() {
            let name = k.name();
            if seen.insert(name.clone()) {
                names.push(name);
            }
        }
        names
    }

    /// The block size the entry point is built for (its `__launch_bounds__`).
    pub fn threads_per_block(&self) -> u32 {
        match self.family {
            Family::Warp { .. } => WARP_FAMILY_THREADS,
            Family::Block { threads }
            | Family::Online { threads }
            | Family::SplitStats { threads }
            | Family::SplitWrite { threads } => threads,
            Family::Strided { slices, .. } => 32 * slices,
            Family::CrossEntropy { stage } => stage.threads(),
        }
    }

    /// The blocks per SM its register allocation must allow (the second `__launch_bounds__`
    /// value: ptxas gives each thread 65536 / (threads x this) registers at most). Warp kernels
    /// hold their row in registers: 64 registers up to 8 columns a lane, 128 up to 32, 255 at
    /// 64. One-warp strided blocks: 128. Everything else: 1024 threads an SM, 64 registers (at
    /// 1024 threads a block that spilled: block sizes stop at 512). Left to itself, ptxas for
    /// sm_100/sm_120 picked budgets that spilled. (The backward block kernels keep three quarters
    /// of this on sm_120: build/ptx_variants.rs.)
    #[cfg_attr(not(feature = "tools"), allow(dead_code))] // (build.rs and the image tests use it)
    pub fn min_blocks_per_sm(&self) -> u32 {
        match self.family {
            Family::Warp { cols_per_lane, .. } if cols_per_lane <= 8 => 8,
            Family::Warp { cols_per_lane, .. } if cols_per_lane <= 32 => 4,
            Family::Warp { .. } => 2,
            Family::Strided { slices: 1, .. } => 16,
            _ => (1024 / self.threads_per_block()).max(1),
        }
    }

    #[cfg(feature = "tools")]
    /// The row lengths `plan_softmax` gives a warp-family kernel, `None` for other families.
    /// The kernels rely on the lower end: the packs every lane holds in its shortest row are
    /// loaded without a bounds compare (`warp_min_cols` in kernels/common.cuh computes the same
    /// bound; a test of every row length keeps the two in step).
    pub fn warp_row_lengths(&self) -> Option<std::ops::RangeInclusive<usize>> {
        let Family::Warp {
            width,
            cols_per_lane,
            ..
        } = self.family
        else {
            return None;
        };
        let (width, per_lane) = (width as usize, cols_per_lane as usize);
        // One column more than the next smaller lane shape holds: half the lanes at
        // MIN_LANE_COLS (one lane takes rows from one column), the previous step of full warps.
        let shortest = if per_lane == MIN_LANE_COLS as usize {
            if width == 1 {
                1
            } else {
                width / 2 * per_lane + 1
            }
        } else {
            let previous = LONG_LANE_COLS
                .iter()
                .rev()
                .map(|&c| c as usize)
                .find(|&c| c < per_lane)
                .unwrap_or(MIN_LANE_COLS as usize);
            32 * previous + 1
        };
        Some(shortest..=width * per_lane)
    }

    /// Every configuration the GPU image and the emulator must provide.
    pub fn all() -> Vec<KernelConfig> {
        let mut all = Vec::new();
        for (op, dtype) in Op::ALL
            .into_iter()
            .flat_map(|op| op.dtypes().iter().map(move |&d| (op, d)))
        {
            let v = dtype.vector_width() as u32;
            let mut push = |family| all.push(KernelConfig { op, dtype, family });
            if op == Op::CrossEntropy {
                for stage in CrossEntropyStage::ALL {
                    push(Family::CrossEntropy { stage });
                }
                continue;
            }
            // Scalar (any alignment) and 16-byte packs (aligned rows), for every width at
            // MIN_LANE_COLS and for full warps with more elements per lane.
            let lane_shapes = WARP_WIDTHS
                .into_iter()
                .map(|width| (width, MIN_LANE_COLS))
                .chain(LONG_LANE_COLS.into_iter().map(|c| (32, c)));
            for (width, cols_per_lane) in lane_shapes {
                for vec in [1, v] {
                    push(Family::Warp {
                        width,
                        cols_per_lane,
                        vec,
                    });
                }
            }
            if op.has_block_family() {
                for threads in BLOCK_THREADS {
                    push(Family::Block { threads });
                }
            }
            push(Family::Online {
                threads: ONLINE_THREADS,
            });
            push(Family::SplitStats {
                threads: SPLIT_THREADS,
            });
            push(Family::SplitWrite {
                threads: SPLIT_THREADS,
            });
            if op.has_strided_family() {
                for slices in STRIDED_SLICES {
                    for on_chip in [false, true] {
                        for vec in STRIDED_VECS {
                            push(Family::Strided {
                                slices,
                                on_chip,
                                vec,
                            });
                        }
                    }
                }
            }
        }
        all
    }
}
