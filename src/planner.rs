//! The launch planner: a pure function from (problem, device limits) to (kernel, geometry).
//! No backend is involved, so every dispatch decision is unit-tested here.
//!
//! Families, by row length (elements per row = `cols`):
//! - `cols <= 2048`: the warp family, the row in registers: `width` lanes per row (several rows
//!   per warp below 256 columns), at least 8 elements per lane (16-byte packs when rows are
//!   aligned);
//! - row fits in shared memory as f32: a block per row, the row on chip (global traffic 1.0x);
//! - longer: a block per row, online (max, sum) pass then a write pass (traffic 1.5x);
//! - few long rows (fewer rows than SMs, at least SPLIT_MIN_COLS): split-row, two kernels over
//!   a (chunks x rows) grid with a small workspace of per-chunk (max, sum) states.

use crate::element::Dtype;

/// What the planner needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (the emulator reports a nominal number).
    pub sm_count: u32,
    /// Dynamic shared memory one block may use, opt-in limit included.
    pub max_shared_mem_per_block: u32,
}

impl DeviceLimits {
    /// An H100 SXM (132 SMs, 227 KiB opt-in shared memory): handy for tests and docs.
    pub const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_shared_mem_per_block: 227 * 1024,
    };
}

/// What a kernel computes from each row. Every op has entry points in every family, named
/// `{op}_{family}_{dtype}...` (see `KernelConfig::name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// softmax(scale * x).
    Softmax,
    /// log_softmax(scale * x) = scale * (x - max) - log(sum), from the row's (max, sum).
    LogSoftmax,
    /// dx = scale * y * (dy - sum(dy * y)) from the forward output y and the gradient dy.
    SoftmaxBackward,
    /// dx = scale * (dy - exp(y) * sum(dy)) from the log-softmax output y and dy.
    LogSoftmaxBackward,
    /// One f32 a row: scale * max + log(sum(exp(scale * (x - max)))).
    LogSumExp,
    /// Softmax of f16/bf16 input with f32 output (`Softmax::forward_f32`).
    SoftmaxToF32,
    /// Log-softmax of f16/bf16 input with f32 output.
    LogSoftmaxToF32,
    /// Fused softmax cross-entropy (`CrossEntropy`): the stages of
    /// [`Family::CrossEntropy`], planned by `plan_cross_entropy`.
    CrossEntropy,
}

impl Op {
    /// Every op, in the order of `KernelConfig::all()`.
    pub const ALL: [Op; 8] = [
        Op::Softmax,
        Op::LogSoftmax,
        Op::SoftmaxBackward,
        Op::LogSoftmaxBackward,
        Op::LogSumExp,
        Op::SoftmaxToF32,
        Op::LogSoftmaxToF32,
        Op::CrossEntropy,
    ];

    /// The prefix of its entry points' names.
    pub fn name(self) -> &'static str {
        match self {
            Op::Softmax => "softmax",
            Op::LogSoftmax => "log_softmax",
            Op::SoftmaxBackward => "softmax_backward",
            Op::LogSoftmaxBackward => "log_softmax_backward",
            Op::LogSumExp => "logsumexp",
            Op::SoftmaxToF32 => "softmax_to_f32",
            Op::LogSoftmaxToF32 => "log_softmax_to_f32",
            Op::CrossEntropy => "cross_entropy",
        }
    }

    /// The input dtypes the op has entry points for: every dtype, except that the f32-output
    /// ops take f16 and bf16 only (f32 input has `Softmax` / `LogSoftmax`).
    pub const fn dtypes(self) -> &'static [Dtype] {
        match self {
            Op::SoftmaxToF32 | Op::LogSoftmaxToF32 => &[Dtype::F16, Dtype::Bf16],
            _ => &Dtype::ALL,
        }
    }

    /// The storage type of the op's output for `input`: f32 for the `_to_f32` ops and
    /// logsumexp, else the input's.
    pub fn output_dtype(self, input: Dtype) -> Dtype {
        match self {
            Op::SoftmaxToF32 | Op::LogSoftmaxToF32 | Op::LogSumExp => Dtype::F32,
            _ => input,
        }
    }

    /// The forward op with f32 output for `Softmax` and `LogSoftmax`; `None` for the others.
    pub fn with_f32_output(self) -> Option<Op> {
        match self {
            Op::Softmax => Some(Op::SoftmaxToF32),
            Op::LogSoftmax => Some(Op::LogSoftmaxToF32),
            _ => None,
        }
    }

    /// Whether the op reads a second input (dy).
    pub fn is_backward(self) -> bool {
        matches!(self, Op::SoftmaxBackward | Op::LogSoftmaxBackward)
    }

    /// Whether the op has a shared-memory block family (the row held on chip). logsumexp needs
    /// none: its block kernel reads x once without holding it.
    pub fn has_block_family(self) -> bool {
        !matches!(self, Op::LogSumExp | Op::CrossEntropy)
    }

    /// Tensors of a row's shape the op reads: 2 (y and dy) for the backward ops, else 1.
    pub fn inputs(self) -> usize {
        if self.is_backward() { 2 } else { 1 }
    }

    /// Whether the op has the strided-dimension family (rows `inner` apart: a softmax over a
    /// dimension other than the last). logsumexp is over the last dimension only.
    pub fn has_strided_family(self) -> bool {
        !matches!(self, Op::LogSumExp | Op::CrossEntropy)
    }

    /// Whether the op writes one value a row rather than a row.
    pub fn writes_one_per_row(self) -> bool {
        matches!(self, Op::LogSumExp)
    }

    /// Entry points per dtype.
    const fn configs_per_dtype(self) -> usize {
        match self {
            Op::LogSumExp => CONFIGS_PER_DTYPE - BLOCK_THREADS.len(),
            Op::CrossEntropy => CrossEntropyStage::ALL.len(),
            _ => CONFIGS_PER_DTYPE + STRIDED_CONFIGS,
        }
    }

    /// Position of this op's first entry point in `KernelConfig::all()`.
    const fn first_index(self) -> usize {
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

/// What one cross-entropy launch computes (src/cross_entropy.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossEntropyMode {
    /// The target check alone: the prepare stage, writing the first invalid row.
    CheckTargets,
    /// The loss and lse (`reduce`: Sum or Mean, one value; else a value a row).
    Loss {
        /// Whether the rows' losses are reduced to one.
        reduce: bool,
    },
    /// The loss, lse and the gradient (`forward_backward`).
    LossAndGradient {
        /// Whether the rows' losses are reduced to one.
        reduce: bool,
    },
    /// The gradient from the caller's lse and upstream gradient (`backward`).
    GradientFromLse,
}

/// f32 elements of the cross-entropy workspace before the per-row states: the class weights' sum
/// over V and the two Mean denominators (and one unused), as kernels/cross_entropy.cu lays it out.
pub const CROSS_ENTROPY_GLOBALS: usize = 4;

/// Picks the stages and geometry of a cross-entropy launch over `rows` rows of `cols` classes
/// (both non-zero). A row is cut into chunks, a block each, when there are too few rows to fill
/// the GPU (like split-row softmax): few rows of a huge vocabulary use every SM.
pub fn plan_cross_entropy(
    rows: usize,
    cols: usize,
    dtype: Dtype,
    mode: CrossEntropyMode,
    limits: &DeviceLimits,
) -> LaunchPlan {
    let rows = rows.max(1);
    let cols = cols.max(1);
    let sm_count = limits.sm_count.max(1) as usize;
    // Enough (chunk, row) blocks for about four 256-thread blocks an SM, but no chunk shorter
    // than SPLIT_MIN_CHUNK: a block's reduction and state write amortised over 8 elements a
    // thread at least.
    let wanted_chunks = (4 * sm_count).div_ceil(rows);
    let chunks = wanted_chunks.min(cols.div_ceil(SPLIT_MIN_CHUNK)).max(1);
    // Multiples of SPLIT_CHUNK_ALIGN: every chunk of an aligned row starts 16-byte aligned.
    let chunk_cols = cols.div_ceil(chunks).next_multiple_of(SPLIT_CHUNK_ALIGN);
    let chunks = cols.div_ceil(chunk_cols);
    let row_blocks = rows.min(65535) as u32;
    let stage = |stage: CrossEntropyStage, grid: (u32, u32)| Stage {
        kernel: KernelConfig {
            op: Op::CrossEntropy,
            dtype,
            family: Family::CrossEntropy { stage },
        },
        grid,
        block: stage.threads(),
        shared_mem_bytes: 0,
    };
    let per_chunk = (chunks as u32, row_blocks);
    let grid_cap = sm_count * BLOCKS_PER_SM as usize;
    // The whole row on chip (its storage type, plus a pack of lead-in for alignment), when the
    // row would not be split anyway: forward_backward then reads the logits once.
    let on_chip_bytes = block_smem_bytes(dtype, cols);
    let on_chip = matches!(mode, CrossEntropyMode::LossAndGradient { .. })
        && chunks == 1
        && on_chip_bytes + STATIC_SMEM_RESERVE <= limits.max_shared_mem_per_block as usize;
    let finish_blocks = rows
        .div_ceil(CrossEntropyStage::Finish.threads() as usize)
        .clamp(1, grid_cap) as u32;
    let mut stages = vec![stage(CrossEntropyStage::Prepare, (1, 1))];
    let (loss, grad, reduce) = match mode {
        CrossEntropyMode::CheckTargets => (false, false, false),
        CrossEntropyMode::Loss { reduce } => (true, false, reduce),
        CrossEntropyMode::LossAndGradient { reduce } => (true, true, reduce),
        CrossEntropyMode::GradientFromLse => (false, true, false),
    };
    if on_chip {
        let mut s = stage(CrossEntropyStage::OnChip, (rows.min(grid_cap) as u32, 1));
        s.shared_mem_bytes = on_chip_bytes as u32;
        stages.push(s);
    } else if loss {
        stages.push(stage(CrossEntropyStage::Stats, per_chunk));
        stages.push(stage(CrossEntropyStage::Finish, (finish_blocks, 1)));
    }
    if reduce {
        stages.push(stage(CrossEntropyStage::Reduce, (1, 1)));
    }
    if grad && !on_chip {
        stages.push(stage(CrossEntropyStage::Grad, per_chunk));
    }
    LaunchPlan {
        stages,
        workspace_floats: CROSS_ENTROPY_GLOBALS + 4 * rows + 4 * rows * chunks,
        chunk_cols,
    }
}

/// One op over a dimension other than the last of a contiguous tensor, seen as
/// `[outer, n, inner]` with `inner >= 2`: `outer * inner` rows of `n` elements `inner` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StridedProblem {
    /// What is computed (not logsumexp).
    pub op: Op,
    /// The product of the dimensions before the reduced one.
    pub outer: usize,
    /// The reduced dimension's size (the row length).
    pub n: usize,
    /// The product of the dimensions after it: the distance between a row's elements.
    pub inner: usize,
    /// Storage type.
    pub dtype: Dtype,
    /// Every tensor starts on a boundary of two elements (with `inner` even, two neighbouring
    /// rows then move as one 4- or 8-byte word).
    pub aligned_pairs: bool,
}

/// One op over the last dimension: `rows` rows of `cols` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxProblem {
    /// What is computed.
    pub op: Op,
    /// Rows (the product of all dimensions but the last).
    pub rows: usize,
    /// Elements per row (the last dimension).
    pub cols: usize,
    /// Storage type.
    pub dtype: Dtype,
    /// Input and output each start on a 16-byte boundary.
    pub aligned16: bool,
}

/// A kernel family and its tile configuration. Each maps to one `extern "C"` entry point per
/// dtype in kernels/softmax.cu.
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
const WARP_WIDTHS: [u32; 6] = [1, 2, 4, 8, 16, 32];
/// Elements a lane holds, at least: two f32 packs, one 16-bit pack, or 8 scalars. With fewer,
/// the per-row work (index math, the shuffle reductions, the reciprocal) is shared by too few
/// elements: the SASS census measured 0.67 warp instructions per element for f32 at 4 per lane
/// against 0.48 at 8 (tests/sass_gate.rs budgets 0.6).
const MIN_LANE_COLS: u32 = 8;
/// Elements per lane of full-warp rows (32 lanes), longer rows: steps of 8 past 16 (multiples of
/// every pack width), so that a row uses at least 7/8 of its lanes' slots past 256 columns
/// (powers of two left up to 47% idle at 1025 columns).
const LONG_LANE_COLS: [u32; 7] = [16, 24, 32, 40, 48, 56, 64];
const BLOCK_THREADS: [u32; 3] = [128, 256, 512];
const ONLINE_THREADS: u32 = 512;
const SPLIT_THREADS: u32 = 256;
/// Warps a block of the strided family may split its rows over.
const STRIDED_SLICES: [u32; 3] = [1, 8, 32];
/// Rows a lane of the strided family may take.
const STRIDED_VECS: [u32; 2] = [1, 2];
/// Strided entry points per dtype: each slice count two-pass and on chip, each row width.
const STRIDED_CONFIGS: usize = 2 * STRIDED_SLICES.len() * STRIDED_VECS.len();
/// Elements of a row each warp of the strided family should have at least when the row is
/// split over several warps (a thread folds up to 8 at a time).
const STRIDED_MIN_PER_SLICE: usize = 4;
/// Rows at least this long are split when there are fewer rows than SMs.
pub const SPLIT_MIN_COLS: usize = 16 * 1024;
/// Smallest chunk worth a block (elements); chunks are multiples of SPLIT_CHUNK_ALIGN so that
/// every chunk of an aligned row starts on a 16-byte boundary for every dtype.
const SPLIT_MIN_CHUNK: usize = 2048;
const SPLIT_CHUNK_ALIGN: usize = 8;
/// Shared memory kept free for the kernels' static `__shared__` reduction scratch: the device's
/// per-block limit covers static and dynamic shared memory together.
pub const STATIC_SMEM_RESERVE: usize = 1024;
/// Grids are capped at this many blocks per SM; kernels loop over the remaining rows.
const BLOCKS_PER_SM: u32 = 32;

/// Warp-family lane shapes: every width at MIN_LANE_COLS, then full warps at LONG_LANE_COLS.
const WARP_LANE_SHAPES: usize = WARP_WIDTHS.len() + LONG_LANE_COLS.len();
/// Entry points per dtype: each lane shape scalar and vector, the block sizes, online, the split
/// pair (the order of `KernelConfig::all()`).
const CONFIGS_PER_DTYPE: usize = 2 * WARP_LANE_SHAPES + BLOCK_THREADS.len() + 3;

#[cfg(test)]
thread_local! {
    /// Names `KernelConfig::name` formatted on this thread (tests: launches must format none).
    pub(crate) static NAMES_FORMATTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
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
            Family::SplitStats { threads } => format!("{op}_split_stats_{dt}_b{threads}"),
            Family::SplitWrite { threads } => format!("{op}_split_write_{dt}_b{threads}"),
            Family::Strided {
                slices,
                on_chip,
                vec,
            } => {
                let variant = if on_chip { "onchip" } else { "twopass" };
                format!("{op}_strided_{variant}_{dt}_s{slices}_v{vec}")
            }
            Family::CrossEntropy { stage } => {
                format!("{op}_{}_{dt}_b{}", stage.name(), stage.threads())
            }
        }
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

    /// The row lengths `plan_softmax` gives a warp-family kernel, `None` for other families.
    /// The kernels rely on the lower end: the packs every lane holds in its shortest row are
    /// loaded without a bounds compare (`warp_min_cols` in kernels/softmax.cu computes the same
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

/// One kernel launch of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The entry point.
    pub kernel: KernelConfig,
    /// (x, y) blocks: x over row groups or chunks, y over rows (split-row only; else 1).
    pub grid: (u32, u32),
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory per block.
    pub shared_mem_bytes: u32,
}

/// Kernels and geometry for one call: stages run in order on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    /// The launches, in order.
    pub stages: Vec<Stage>,
    /// f32 elements of scratch the stages share (split-row: 2 per chunk per row); 0 if none.
    pub workspace_floats: usize,
    /// Columns per chunk for split-row plans; 0 otherwise.
    pub chunk_cols: usize,
}

/// The most static `__shared__` memory a kernel declares: the reduction scratch every family
/// keeps within STATIC_SMEM_RESERVE, plus the strided family's per-warp partial row states.
/// (tests/cuda_image.rs holds every kernel of the GPU image to this bound, from `ptxas -v`; the
/// emulator faults a block whose static plus dynamic shared memory passes the device's limit.)
pub fn static_smem_bound(kernel: &KernelConfig) -> usize {
    match kernel.family {
        Family::Strided { slices, vec, .. } => {
            STATIC_SMEM_RESERVE + strided_static_smem_bytes(slices, vec)
        }
        _ => STATIC_SMEM_RESERVE,
    }
}

impl Stage {
    /// The most shared memory one block of this stage uses: dynamic plus static.
    pub fn shared_mem_bound(&self) -> usize {
        self.shared_mem_bytes as usize + static_smem_bound(&self.kernel)
    }
}

impl LaunchPlan {
    /// The planners' invariant: every stage's blocks fit the device's shared memory, static and
    /// dynamic together (the per-block limit covers both). Every plan must pass; the runtime
    /// checks it before it launches anything, so a planner bug is an error, not a launch that
    /// fails (or, on a GPU, an `cudaErrorInvalidValue` far from its cause).
    pub fn check_shared_memory(&self, limits: &DeviceLimits) -> Result<(), String> {
        let limit = limits.max_shared_mem_per_block as usize;
        match self.stages.iter().find(|s| s.shared_mem_bound() > limit) {
            None => Ok(()),
            Some(s) => Err(format!(
                "{} would use up to {} bytes of shared memory a block ({} dynamic + {} static), more than the \
                 device's {limit}",
                s.kernel.name(),
                s.shared_mem_bound(),
                s.shared_mem_bytes,
                static_smem_bound(&s.kernel)
            )),
        }
    }

    fn single(kernel: KernelConfig, grid: u32, shared_mem_bytes: u32) -> LaunchPlan {
        LaunchPlan {
            stages: vec![Stage {
                kernel,
                grid: (grid, 1),
                block: kernel.threads_per_block(),
                shared_mem_bytes,
            }],
            workspace_floats: 0,
            chunk_cols: 0,
        }
    }
}

/// Picks the kernels and geometry for a softmax. `rows` and `cols` must be non-zero (the
/// operation returns before planning otherwise); the result is clamped to a valid launch anyway.
pub fn plan_softmax(p: &SoftmaxProblem, limits: &DeviceLimits) -> LaunchPlan {
    let rows = p.rows.max(1);
    let cols = p.cols.max(1);
    let v = p.dtype.vector_width();
    let sm_count = limits.sm_count.max(1) as usize;
    let grid_for = |blocks: usize| blocks.clamp(1, sm_count * BLOCKS_PER_SM as usize) as u32;
    let config = |family| KernelConfig {
        op: p.op,
        dtype: p.dtype,
        family,
    };

    if cols <= WARP_FAMILY_MAX_COLS {
        // Elements per lane: MIN_LANE_COLS while a warp covers the row, then the first step of
        // LONG_LANE_COLS that does; lanes per row: as few as cover the row, so short rows pack
        // several rows into a warp.
        let needed = cols.div_ceil(32);
        let per_lane = LONG_LANE_COLS
            .into_iter()
            .map(|c| c as usize)
            .find(|&c| c >= needed)
            .filter(|_| needed > MIN_LANE_COLS as usize)
            .unwrap_or(MIN_LANE_COLS as usize);
        let width = cols.div_ceil(per_lane).next_power_of_two() as u32;
        // Vector packs need every row to start 16-byte aligned: aligned base, cols % v == 0.
        let vec = if p.aligned16 && cols.is_multiple_of(v) {
            v as u32
        } else {
            1
        };
        let cols_per_lane = per_lane as u32;
        let rows_per_block = (WARP_FAMILY_THREADS / 32 * (32 / width)) as usize;
        let family = Family::Warp {
            width,
            cols_per_lane,
            vec,
        };
        return LaunchPlan::single(config(family), grid_for(rows.div_ceil(rows_per_block)), 0);
    }

    if rows < sm_count && cols >= SPLIT_MIN_COLS {
        // About two blocks per SM in all, each chunk at least SPLIT_MIN_CHUNK long.
        let max_chunks = (cols / SPLIT_MIN_CHUNK).max(2);
        let chunks = (2 * sm_count).div_ceil(rows).clamp(2, max_chunks);
        let chunk_cols = cols.div_ceil(chunks).next_multiple_of(SPLIT_CHUNK_ALIGN);
        let chunks = cols.div_ceil(chunk_cols);
        let stage = |family| Stage {
            kernel: config(family),
            grid: (chunks as u32, rows as u32),
            block: SPLIT_THREADS,
            shared_mem_bytes: 0,
        };
        return LaunchPlan {
            stages: vec![
                stage(Family::SplitStats {
                    threads: SPLIT_THREADS,
                }),
                stage(Family::SplitWrite {
                    threads: SPLIT_THREADS,
                }),
            ],
            workspace_floats: 2 * chunks * rows,
            chunk_cols,
        };
    }

    if p.op.has_block_family() && cols <= block_family_max_cols_of(p.op, p.dtype, limits) {
        let row_bytes = p.op.inputs() * block_smem_bytes(p.dtype, cols);
        let threads = match cols.div_ceil(v) {
            0..=1024 => 128,
            1025..=2048 => 256,
            _ => 512,
        };
        return LaunchPlan::single(
            config(Family::Block { threads }),
            grid_for(rows),
            row_bytes as u32,
        );
    }

    let family = Family::Online {
        threads: ONLINE_THREADS,
    };
    LaunchPlan::single(config(family), grid_for(rows), 0)
}

/// Picks the kernel and geometry for an op over a strided dimension (`inner >= 2`; `outer`, `n`
/// and `inner` non-zero, else the result is still a valid launch).
///
/// - Two rows a lane (`vec` 2: one 4- or 8-byte word moves an element of each) when `inner` is
///   even and every tensor is aligned to two elements; one otherwise.
/// - On chip (traffic 1.0) when a block's rows fit in shared memory in their storage type
///   ([`strided_on_chip_max_n`]); two-pass otherwise. Where only one row a lane fits, it takes
///   one row a lane on chip rather than two read twice.
/// - Warps a block (`slices`): the fewest of 1, 8, 32 that fill the GPU (every SM's 2048
///   threads) and, on chip, keep at least 16 warps an SM despite the shared memory each block
///   holds; at most a quarter of the row length, so a short row is never split across idle
///   warps.
pub fn plan_strided(p: &StridedProblem, limits: &DeviceLimits) -> LaunchPlan {
    let (outer, n, inner) = (p.outer.max(1), p.n.max(1), p.inner.max(1));
    let rows = outer.saturating_mul(inner);
    let sm_count = limits.sm_count.max(1) as usize;
    let inputs = p.op.inputs();
    // Two rows a lane when they can move as one word, unless that alone would push the rows
    // off chip (64 rows a block hold twice the shared memory of 32).
    let pairs = inner.is_multiple_of(2) && p.aligned_pairs;
    let fits = |vec| n <= strided_on_chip_max_n(p.dtype, inputs, vec, limits);
    let vec = if pairs && (fits(2) || !fits(1)) { 2 } else { 1 };
    let on_chip = fits(vec);
    let rows_per_block = 32 * vec as usize;
    let tiles = rows.div_ceil(rows_per_block);
    let block_smem = if on_chip {
        rows_per_block * n * inputs * p.dtype.size_bytes()
    } else {
        0
    };
    // Blocks an SM the shared memory allows (at most BLOCKS_PER_SM).
    let resident_blocks = if block_smem == 0 {
        BLOCKS_PER_SM as usize
    } else {
        (limits.max_shared_mem_per_block as usize / (block_smem + STATIC_SMEM_RESERVE))
            .clamp(1, BLOCKS_PER_SM as usize)
    };
    let most = (n / STRIDED_MIN_PER_SLICE).max(1);
    let allowed: Vec<u32> = STRIDED_SLICES
        .into_iter()
        .filter(|&s| s == 1 || s as usize <= most)
        .collect();
    let fills = |s: u32| tiles * 32 * s as usize >= sm_count * 2048;
    let busy = |s: u32| resident_blocks * s as usize >= 16;
    let slices = allowed
        .iter()
        .copied()
        .find(|&s| fills(s) && busy(s))
        .unwrap_or(*allowed.last().unwrap_or(&1));
    let kernel = KernelConfig {
        op: p.op,
        dtype: p.dtype,
        family: Family::Strided {
            slices,
            on_chip,
            vec,
        },
    };
    let grid = tiles.clamp(1, sm_count * BLOCKS_PER_SM as usize) as u32;
    LaunchPlan::single(kernel, grid, block_smem as u32)
}

/// Static shared memory of a strided kernel: the warps' partial row states (8 bytes a row).
pub fn strided_static_smem_bytes(slices: u32, vec: u32) -> usize {
    if slices > 1 {
        8 * 32 * (slices * vec) as usize
    } else {
        0
    }
}

/// The longest row the strided family keeps on chip: 32 lanes' `vec` rows of `inputs` tensors
/// in their storage type, beside the largest block's static shared memory and
/// STATIC_SMEM_RESERVE.
pub fn strided_on_chip_max_n(
    dtype: Dtype,
    inputs: usize,
    vec: u32,
    limits: &DeviceLimits,
) -> usize {
    let room = (limits.max_shared_mem_per_block as usize)
        .saturating_sub(STATIC_SMEM_RESERVE + strided_static_smem_bytes(32, vec));
    room / (32 * vec as usize * inputs.max(1) * dtype.size_bytes())
}

/// Dynamic shared memory of the block family for rows of `cols`: the row in its storage type,
/// plus one pack of lead-in so that x's 16-byte packs sit on 16-byte boundaries of shared memory.
pub fn block_smem_bytes(dtype: Dtype, cols: usize) -> usize {
    ((cols + dtype.vector_width()) * dtype.size_bytes()).next_multiple_of(16)
}

/// The longest row the forward ops' block family holds on this device (leaving
/// STATIC_SMEM_RESERVE).
pub fn block_family_max_cols(dtype: Dtype, limits: &DeviceLimits) -> usize {
    block_family_max_cols_of(Op::Softmax, dtype, limits)
}

/// The longest row `op`'s block family holds on this device: its inputs' rows (y and dy for
/// backward), each in its storage type with one pack of lead-in, beside STATIC_SMEM_RESERVE.
pub fn block_family_max_cols_of(op: Op, dtype: Dtype, limits: &DeviceLimits) -> usize {
    let room = (limits.max_shared_mem_per_block as usize).saturating_sub(STATIC_SMEM_RESERVE);
    let per_input = room / op.inputs() / 16 * 16;
    (per_input / dtype.size_bytes()).saturating_sub(dtype.vector_width())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rows: usize, cols: usize, dtype: Dtype, aligned16: bool) -> LaunchPlan {
        plan_softmax(
            &SoftmaxProblem {
                op: Op::Softmax,
                rows,
                cols,
                dtype,
                aligned16,
            },
            &DeviceLimits::H100,
        )
    }

    /// The only stage of a single-kernel plan.
    fn single(rows: usize, cols: usize, dtype: Dtype, aligned16: bool) -> Stage {
        let p = plan(rows, cols, dtype, aligned16);
        assert_eq!(p.stages.len(), 1, "{p:?}");
        assert_eq!(p.workspace_floats, 0);
        p.stages[0]
    }

    #[test]
    fn short_rows_pack_several_rows_per_warp() {
        // Eight elements a lane; as few lanes as cover the row.
        for (cols, width) in [(1, 1), (3, 1), (8, 1), (9, 2), (16, 2), (17, 4), (64, 8)] {
            let s = single(1000, cols, Dtype::F32, false);
            let expected = Family::Warp {
                width,
                cols_per_lane: 8,
                vec: 1,
            };
            assert_eq!(s.kernel.family, expected, "cols {cols}");
            assert_eq!(s.block, 128);
        }
    }

    #[test]
    fn warp_rows_use_vectors_only_when_every_row_is_aligned() {
        let name = |rows, cols, dtype, aligned| single(rows, cols, dtype, aligned).kernel.name();
        assert_eq!(
            name(64, 1024, Dtype::F32, true),
            "softmax_warp_f32_w32_c32_v4"
        );
        assert_eq!(
            name(64, 1024, Dtype::F32, false),
            "softmax_warp_f32_w32_c32_v1"
        );
        // 1023 columns: row starts drift off 16-byte boundaries.
        assert_eq!(
            name(64, 1023, Dtype::F32, true),
            "softmax_warp_f32_w32_c32_v1"
        );
        // 32 f16 columns: four lanes of one 8-wide pack each, eight rows a warp.
        assert_eq!(name(64, 32, Dtype::F16, true), "softmax_warp_f16_w4_c8_v8");
        // 32 f32 columns: four lanes of two 4-wide packs.
        assert_eq!(name(64, 32, Dtype::F32, true), "softmax_warp_f32_w4_c8_v4");
        assert_eq!(
            name(64, 256, Dtype::F32, true),
            "softmax_warp_f32_w32_c8_v4"
        );
        assert_eq!(
            name(64, 257, Dtype::F32, false),
            "softmax_warp_f32_w32_c16_v1"
        );
        assert_eq!(
            name(64, 2048, Dtype::Bf16, true),
            "softmax_warp_bf16_w32_c64_v8"
        );
    }

    #[test]
    fn every_shape_gets_kernels_that_cover_it() {
        let all = KernelConfig::all();
        for dtype in Dtype::ALL {
            for cols in (1..=4100).chain([8003, 16384, 65537, 1 << 20]) {
                for rows in [1, 3, 131, 132, 5000] {
                    for aligned in [true, false] {
                        let p = plan(rows, cols, dtype, aligned);
                        for s in &p.stages {
                            assert!(all.contains(&s.kernel), "{p:?}");
                            assert!(s.grid.0 >= 1 && s.grid.1 >= 1 && s.grid.1 <= 65535);
                        }
                        match p.stages[0].kernel.family {
                            Family::Warp {
                                width,
                                cols_per_lane,
                                vec,
                            } => {
                                let lengths = p.stages[0].kernel.warp_row_lengths().unwrap();
                                assert!(lengths.contains(&cols), "{cols} columns: {lengths:?}");
                                assert!((width * cols_per_lane) as usize >= cols);
                                assert!(cols_per_lane % vec == 0);
                                if vec > 1 {
                                    assert!(aligned && cols % vec as usize == 0);
                                }
                            }
                            Family::Block { .. } => {
                                let s = p.stages[0];
                                let lead_in = dtype.vector_width();
                                let bytes = (cols + lead_in) * dtype.size_bytes();
                                assert_eq!(s.shared_mem_bytes as usize, bytes.next_multiple_of(16));
                                let limit = DeviceLimits::H100.max_shared_mem_per_block as usize;
                                assert!(s.shared_mem_bytes as usize + STATIC_SMEM_RESERVE <= limit);
                            }
                            Family::Online { .. } => {
                                let bytes = (cols + dtype.vector_width()) * dtype.size_bytes();
                                assert!(bytes + STATIC_SMEM_RESERVE > 227 * 1024)
                            }
                            Family::SplitStats { .. } => {
                                let chunks = p.stages[0].grid.0 as usize;
                                assert_eq!(p.stages[0].grid, p.stages[1].grid);
                                assert!(matches!(
                                    p.stages[1].kernel.family,
                                    Family::SplitWrite { .. }
                                ));
                                assert_eq!(p.stages[0].grid.1 as usize, rows);
                                // The chunks tile the row exactly, none empty.
                                assert!(chunks * p.chunk_cols >= cols);
                                assert!((chunks - 1) * p.chunk_cols < cols);
                                assert_eq!(p.chunk_cols % 8, 0);
                                assert_eq!(p.workspace_floats, 2 * chunks * rows);
                            }
                            Family::SplitWrite { .. } => {
                                panic!("split-row starts with its stats pass")
                            }
                            Family::Strided { .. } => {
                                panic!("rows over the last dimension are never strided")
                            }
                            Family::CrossEntropy { .. } => {
                                panic!("plan_softmax never plans cross-entropy")
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn family_boundaries_follow_the_device_limits() {
        let family = |rows, cols, dtype| single(rows, cols, dtype, true).kernel.family;
        assert!(matches!(family(8, 2048, Dtype::F32), Family::Warp { .. }));
        assert_eq!(family(8, 2049, Dtype::F32), Family::Block { threads: 128 });
        // The row in its storage type plus one pack of lead-in, rounded to 16 bytes.
        assert_eq!(single(8, 2049, Dtype::F32, true).shared_mem_bytes, 8224);
        assert_eq!(single(8, 2049, Dtype::Bf16, true).shared_mem_bytes, 4128);
        assert_eq!(
            family(200, 16384, Dtype::F32),
            Family::Block { threads: 512 }
        );
        // The longest row the block family takes leaves room for static shared memory; 16-bit
        // rows are held as 16-bit, so twice as long.
        for (dtype, max_cols) in [(Dtype::F32, 57_852), (Dtype::F16, 115_704)] {
            assert!(matches!(family(200, max_cols, dtype), Family::Block { .. }));
            assert_eq!(
                family(200, max_cols + 1, dtype),
                Family::Online { threads: 512 }
            );
        }
        // A device with 48 KiB of shared memory switches to the online kernel sooner.
        let small = DeviceLimits {
            sm_count: 8,
            max_shared_mem_per_block: 48 * 1024,
        };
        let problem = SoftmaxProblem {
            op: Op::Softmax,
            rows: 200,
            cols: 12 * 1024 + 1,
            dtype: Dtype::F32,
            aligned16: true,
        };
        let p = plan_softmax(&problem, &small);
        assert_eq!(p.stages[0].kernel.family, Family::Online { threads: 512 });
    }

    /// The backward ops hold y and dy on chip: their block family takes rows up to half the
    /// forward's length, with twice the shared memory; longer rows go two-pass.
    #[test]
    fn backward_rows_are_held_on_chip_when_both_fit() {
        for op in [Op::SoftmaxBackward, Op::LogSoftmaxBackward] {
            for dtype in Dtype::ALL {
                let max = block_family_max_cols_of(op, dtype, &DeviceLimits::H100);
                let forward = block_family_max_cols(dtype, &DeviceLimits::H100);
                assert_eq!(
                    max,
                    ((227 * 1024 - STATIC_SMEM_RESERVE) / 2 / 16 * 16) / dtype.size_bytes()
                        - dtype.vector_width()
                );
                assert!(max < forward / 2 + dtype.vector_width());
                let plan = |cols| {
                    plan_softmax(
                        &SoftmaxProblem {
                            op,
                            rows: 200,
                            cols,
                            dtype,
                            aligned16: true,
                        },
                        &DeviceLimits::H100,
                    )
                };
                let at_max = plan(max).stages[0];
                assert!(
                    matches!(at_max.kernel.family, Family::Block { .. }),
                    "{at_max:?}"
                );
                assert_eq!(
                    at_max.shared_mem_bytes as usize,
                    2 * block_smem_bytes(dtype, max)
                );
                assert!(at_max.shared_mem_bytes as usize + STATIC_SMEM_RESERVE <= 227 * 1024);
                let past = plan(max + 1).stages[0];
                assert_eq!(past.kernel.family, Family::Online { threads: 512 });
                assert!(matches!(
                    plan(2049).stages[0].kernel.family,
                    Family::Block { threads: 128 }
                ));
            }
        }
    }

    #[test]
    fn few_long_rows_are_split_across_the_gpu() {
        // 8 rows of a 256K vocabulary on 132 SMs: 33 chunks per row, 264 blocks per pass.
        let p = plan(8, 262_144, Dtype::Bf16, true);
        assert_eq!(p.stages.len(), 2);
        assert_eq!(p.stages[0].kernel.name(), "softmax_split_stats_bf16_b256");
        assert_eq!(p.stages[1].kernel.name(), "softmax_split_write_bf16_b256");
        assert_eq!(p.stages[0].grid, (33, 8));
        assert_eq!(p.chunk_cols, 7944);
        // One row: chunks of at least 2048 elements.
        let p = plan(1, 20_000, Dtype::F32, true);
        assert_eq!(p.stages[0].grid, (9, 1));
        // As many rows as SMs: one block per row is enough parallelism.
        assert_eq!(plan(132, 262_144, Dtype::F32, true).stages.len(), 1);
        // Short rows are never split.
        assert_eq!(
            plan(1, SPLIT_MIN_COLS - 1, Dtype::F32, true).stages.len(),
            1
        );
    }

    #[test]
    fn grids_cover_the_rows_and_are_capped() {
        let grid = |rows, cols| single(rows, cols, Dtype::F32, true).grid;
        // 5 columns: one lane a row, 128 rows per block; 1000 rows need 8 blocks.
        assert_eq!(grid(1000, 5), (8, 1));
        // 100 columns: 16 lanes a row, 8 rows per block.
        assert_eq!(grid(1000, 100), (125, 1));
        // 300 columns: a warp per row, 4 rows per block.
        assert_eq!(grid(1000, 300), (250, 1));
        // Many rows: the grid stops at 32 blocks per SM and the kernel loops.
        assert_eq!(grid(10_000_000, 100), (132 * 32, 1));
        assert_eq!(grid(100_000, 4097), (132 * 32, 1));
        assert_eq!(grid(200, 1 << 20), (200, 1));
        // Degenerate inputs still give a valid launch.
        let s = single(0, 0, Dtype::F32, true);
        assert!(s.grid.0 >= 1 && s.block >= 1);
    }

    /// Cross-entropy plans: the stages each mode needs, in order; chunks that tile a row
    /// exactly, aligned, none empty; a split only when rows are too few to fill the GPU; row
    /// grids within the 65535 limit; the workspace the kernels index.
    #[test]
    fn cross_entropy_plans_cover_every_row_and_chunk() {
        use CrossEntropyStage::*;
        let limits = DeviceLimits::H100;
        let stages = |mode| {
            plan_cross_entropy(4, 1000, Dtype::Bf16, mode, &limits)
                .stages
                .iter()
                .map(|s| match s.kernel.family {
                    Family::CrossEntropy { stage } => stage,
                    f => panic!("{f:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(stages(CrossEntropyMode::CheckTargets), [Prepare]);
        assert_eq!(
            stages(CrossEntropyMode::Loss { reduce: false }),
            [Prepare, Stats, Finish]
        );
        assert_eq!(
            stages(CrossEntropyMode::Loss { reduce: true }),
            [Prepare, Stats, Finish, Reduce]
        );
        // Rows that fit on chip (and are not split): one kernel reads them once.
        assert_eq!(
            stages(CrossEntropyMode::LossAndGradient { reduce: true }),
            [Prepare, OnChip, Reduce]
        );
        let long = plan_cross_entropy(
            4,
            128_256,
            Dtype::Bf16,
            CrossEntropyMode::LossAndGradient { reduce: false },
            &limits,
        );
        let long: Vec<_> = long.stages.iter().map(|s| s.kernel.family).collect();
        assert_eq!(
            long,
            [Prepare, Stats, Finish, Grad].map(|stage| Family::CrossEntropy { stage })
        );
        assert_eq!(stages(CrossEntropyMode::GradientFromLse), [Prepare, Grad]);
        let all = KernelConfig::all();
        for rows in [1, 3, 64, 132, 8192, 70001, 200_000] {
            for cols in [1, 2, 31, 1000, 32000, 128_256, 262_147, 1 << 20] {
                let mode = CrossEntropyMode::LossAndGradient { reduce: true };
                let p = plan_cross_entropy(rows, cols, Dtype::F16, mode, &limits);
                let chunks = cols.div_ceil(p.chunk_cols);
                assert_eq!(p.chunk_cols % SPLIT_CHUNK_ALIGN, 0);
                assert!((chunks - 1) * p.chunk_cols < cols, "no empty chunk");
                if rows >= 4 * limits.sm_count as usize || cols <= SPLIT_MIN_CHUNK {
                    assert_eq!(chunks, 1, "[{rows}, {cols}]: split needlessly");
                } else {
                    // Few rows of a long vocabulary: about four blocks an SM, or as many
                    // chunks as SPLIT_MIN_CHUNK allows.
                    let sm = limits.sm_count as usize;
                    let most = rows * (cols / SPLIT_MIN_CHUNK);
                    assert!(rows * chunks >= (2 * sm).min(most), "[{rows}, {cols}]");
                }
                assert_eq!(
                    p.workspace_floats,
                    CROSS_ENTROPY_GLOBALS + 4 * rows + 4 * rows * chunks
                );
                for s in &p.stages {
                    assert!(all.contains(&s.kernel));
                    assert_eq!(s.block, s.kernel.threads_per_block());
                    assert!(s.grid.0 >= 1 && s.grid.1 >= 1 && s.grid.1 <= 65535);
                    if let Family::CrossEntropy {
                        stage: Stats | Grad,
                    } = s.kernel.family
                    {
                        assert_eq!(s.grid, (chunks as u32, rows.min(65535) as u32));
                    }
                }
            }
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        let all = KernelConfig::all();
        assert_eq!(all.len(), KernelConfig::COUNT);
        for (i, k) in all.iter().enumerate() {
            assert_eq!(k.index(), Some(i), "{k:?}");
        }
        // Configurations no entry point exists for have no index.
        let config = |dtype, family| KernelConfig {
            op: Op::Softmax,
            dtype,
            family,
        };
        let warp = |width, cols_per_lane, vec| Family::Warp {
            width,
            cols_per_lane,
            vec,
        };
        for k in [
            config(Dtype::F32, warp(3, 8, 1)),
            config(Dtype::F32, warp(16, 16, 1)),
            config(Dtype::F32, warp(32, 128, 1)),
            config(Dtype::F32, warp(32, 8, 8)),
            config(Dtype::F16, warp(32, 8, 4)),
            config(Dtype::F32, Family::Block { threads: 64 }),
            config(Dtype::Bf16, Family::Online { threads: 256 }),
            config(Dtype::F16, Family::SplitStats { threads: 128 }),
            config(Dtype::F16, Family::SplitWrite { threads: 0 }),
        ] {
            assert_eq!(k.index(), None, "{k:?}");
        }
    }

    #[test]
    fn kernel_names_are_unique_and_cover_every_dtype() {
        let all = KernelConfig::all();
        let mut names: Vec<String> = all.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for dtype in Dtype::ALL {
            let of = |f: fn(&Family) -> bool| {
                all.iter()
                    .filter(|k| k.op == Op::Softmax && k.dtype == dtype && f(&k.family))
                    .count()
            };
            // (6 widths at 8 a lane + 7 longer full-warp shapes) x (scalar, vector).
            assert_eq!(of(|f| matches!(f, Family::Warp { .. })), 26);
            assert_eq!(of(|f| matches!(f, Family::Block { .. })), 3);
            assert_eq!(of(|f| matches!(f, Family::Online { .. })), 1);
            assert_eq!(of(|f| matches!(f, Family::SplitStats { .. })), 1);
            assert_eq!(of(|f| matches!(f, Family::SplitWrite { .. })), 1);
            assert_eq!(of(|f| matches!(f, Family::Strided { .. })), 12);
        }
        // logsumexp is over the last dimension only.
        assert!(
            !all.iter()
                .any(|k| k.op == Op::LogSumExp && matches!(k.family, Family::Strided { .. }))
        );
    }

    fn strided(op: Op, (outer, n, inner): (usize, usize, usize), dtype: Dtype) -> LaunchPlan {
        plan_strided(
            &StridedProblem {
                op,
                outer,
                n,
                inner,
                dtype,
                aligned_pairs: true,
            },
            &DeviceLimits::H100,
        )
    }

    #[test]
    fn strided_plans_pick_warps_rows_a_lane_and_on_chip_by_shape() {
        let family = |op, shape, dtype| strided(op, shape, dtype).stages[0].kernel.family;
        let f = |slices, on_chip, vec| Family::Strided {
            slices,
            on_chip,
            vec,
        };
        // Rows of 3: one warp a block (a row is never split below 4 elements a warp); inner
        // even: two rows a lane.
        assert_eq!(family(Op::Softmax, (1, 3, 5000), Dtype::F32), f(1, true, 2));
        // Odd inner: one row a lane.
        assert_eq!(family(Op::Softmax, (1, 3, 5001), Dtype::F32), f(1, true, 1));
        // Enough rows to fill 132 SMs (2048 threads each) at one warp a block (64 rows a warp),
        // and 8 KiB a block leaves 25 blocks an SM.
        assert_eq!(
            family(Op::Softmax, (128, 32, 8192), Dtype::F32),
            f(1, true, 2)
        );
        // 131,072 rows of 128: 8 warps a block fill the GPU, 6 blocks an SM fit (32 KiB each).
        assert_eq!(
            family(Op::Softmax, (64, 128, 2048), Dtype::F32),
            f(8, true, 2)
        );
        // Rows of 512: 128 KiB a block leaves one block an SM: 32 warps keep it busy.
        assert_eq!(
            family(Op::Softmax, (64, 512, 4096), Dtype::F32),
            f(32, true, 2)
        );
        // Few rows: the row split over 32 warps.
        assert_eq!(
            family(Op::LogSoftmax, (2, 1000, 16), Dtype::Bf16),
            f(32, true, 2)
        );
        assert_eq!(
            family(Op::Softmax, (1, 100_000, 2), Dtype::F32),
            f(32, false, 2)
        );
        // The on-chip limit: the block's rows in their storage type beside the partial states
        // and the reserve; backward holds two tensors. Past the two-rows limit, one row a lane
        // on chip; past both, two rows a lane read twice.
        let max =
            |dtype, inputs, vec| strided_on_chip_max_n(dtype, inputs, vec, &DeviceLimits::H100);
        assert_eq!(max(Dtype::F32, 1, 1), (227 * 1024 - 1024 - 8192) / 128);
        assert_eq!(max(Dtype::F32, 1, 2), (227 * 1024 - 1024 - 16384) / 256);
        assert_eq!(max(Dtype::Bf16, 1, 1), 2 * max(Dtype::F32, 1, 1));
        assert_eq!(max(Dtype::F32, 2, 1), max(Dtype::F32, 1, 1) / 2);
        let (two, one) = (max(Dtype::F32, 1, 2), max(Dtype::F32, 1, 1));
        assert_eq!(
            family(Op::Softmax, (1, two, 64), Dtype::F32),
            f(32, true, 2)
        );
        assert_eq!(
            family(Op::Softmax, (1, two + 1, 64), Dtype::F32),
            f(32, true, 1)
        );
        assert_eq!(
            family(Op::Softmax, (1, one, 64), Dtype::F32),
            f(32, true, 1)
        );
        assert_eq!(
            family(Op::Softmax, (1, one + 1, 64), Dtype::F32),
            f(32, false, 2)
        );
        let backward = max(Dtype::F32, 2, 1);
        assert_eq!(
            family(Op::SoftmaxBackward, (1, backward + 1, 64), Dtype::F32),
            f(32, false, 2)
        );
        // Views not aligned to two elements: one row a lane.
        let p = plan_strided(
            &StridedProblem {
                op: Op::Softmax,
                outer: 1,
                n: 3,
                inner: 5000,
                dtype: Dtype::F16,
                aligned_pairs: false,
            },
            &DeviceLimits::H100,
        );
        assert_eq!(p.stages[0].kernel.family, f(1, true, 1));
    }

    #[test]
    fn every_strided_shape_gets_a_valid_launch() {
        let all = KernelConfig::all();
        let limit = DeviceLimits::H100.max_shared_mem_per_block as usize;
        let lengths = [
            1,
            2,
            3,
            4,
            7,
            31,
            32,
            33,
            127,
            128,
            500,
            871,
            872,
            873,
            1744,
            1745,
            5000,
            1 << 20,
        ];
        for op in [Op::Softmax, Op::LogSoftmaxBackward] {
            for dtype in Dtype::ALL {
                for n in lengths {
                    for (outer, inner) in [(1, 2), (3, 5), (1, 4096), (100, 1000), (7, 1 << 16)] {
                        let p = strided(op, (outer, n, inner), dtype);
                        assert_eq!(p.stages.len(), 1);
                        let s = p.stages[0];
                        assert!(all.contains(&s.kernel), "{p:?}");
                        let Family::Strided {
                            slices,
                            on_chip,
                            vec,
                        } = s.kernel.family
                        else {
                            panic!("{p:?}")
                        };
                        assert_eq!(s.block, 32 * slices);
                        assert!(slices == 1 || n >= 4 * slices as usize, "{p:?}");
                        assert!(vec == 1 || inner % 2 == 0, "{p:?}");
                        let tiles = (outer * inner).div_ceil(32 * vec as usize);
                        assert!(s.grid.0 >= 1 && s.grid.0 as usize <= tiles.max(1), "{p:?}");
                        let inputs = if op.is_backward() { 2 } else { 1 };
                        let rows_on_chip = 32 * vec as usize;
                        if on_chip {
                            let bytes = rows_on_chip * n * inputs * dtype.size_bytes();
                            assert_eq!(s.shared_mem_bytes as usize, bytes);
                        } else {
                            assert_eq!(s.shared_mem_bytes, 0);
                        }
                        let total = s.shared_mem_bytes as usize
                            + strided_static_smem_bytes(slices, vec)
                            + STATIC_SMEM_RESERVE;
                        assert!(total <= limit, "{p:?}");
                    }
                }
            }
        }
    }

    /// Devices with every per-block shared-memory limit a supported GPU has (sm_75 64 KiB, sm_80
    /// 163 KiB, sm_86/89 99 KiB, sm_90 227 KiB), the emulator's 96 KiB, and a 48 KiB one.
    const SMEM_LIMITS: [u32; 6] = [48, 64, 96, 99, 163, 227];

    fn devices() -> impl Iterator<Item = DeviceLimits> {
        SMEM_LIMITS.into_iter().flat_map(|kib| {
            [8, 132].map(|sm_count| DeviceLimits {
                sm_count,
                max_shared_mem_per_block: kib * 1024,
            })
        })
    }

    /// Sizes around `edge`, and a geometric sweep from 1 to 2^21: every capacity boundary is
    /// crossed element by element, wherever a planner puts it.
    fn sizes_around(edges: &[usize]) -> Vec<usize> {
        let mut sizes: Vec<usize> = (0..=21).map(|k| 1usize << k).collect();
        for &edge in edges {
            sizes.extend(edge.saturating_sub(40)..=edge + 40);
        }
        sizes.retain(|&s| s > 0);
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The largest size with `on_chip(size)` true, found by bisection between 1 and 2^22 (the
    /// predicate is monotone: longer rows never go back on chip).
    fn largest_on_chip(on_chip: impl Fn(usize) -> bool) -> usize {
        let (mut lo, mut hi) = (0usize, 1usize << 22);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if on_chip(mid) { lo = mid } else { hi = mid }
        }
        lo
    }

    /// Every plan of every planner fits its device's shared memory, static plus dynamic, on
    /// every device limit, around every capacity boundary (found from the planner's own
    /// choices, so that a boundary computed without room for the static memory is crossed
    /// here): the row-on-chip block family (forward and backward), the on-chip cross-entropy,
    /// the strided on-chip tiles.
    #[test]
    fn every_plan_fits_the_shared_memory_of_its_device() {
        for limits in devices() {
            let rows_set = [
                1,
                limits.sm_count as usize - 1,
                4 * limits.sm_count as usize,
                70_000,
            ];
            for dtype in Dtype::ALL {
                for op in Op::ALL.into_iter().filter(|o| *o != Op::CrossEntropy) {
                    let plan = |rows, cols| {
                        plan_softmax(
                            &SoftmaxProblem {
                                op,
                                rows,
                                cols,
                                dtype,
                                aligned16: true,
                            },
                            &limits,
                        )
                    };
                    let edge = largest_on_chip(|cols| {
                        matches!(
                            plan(200, cols).stages[0].kernel.family,
                            Family::Block { .. }
                        ) || cols <= WARP_FAMILY_MAX_COLS
                    });
                    for cols in sizes_around(&[edge, block_family_max_cols_of(op, dtype, &limits)])
                    {
                        for rows in rows_set {
                            let p = plan(rows, cols);
                            if let Err(e) = p.check_shared_memory(&limits) {
                                panic!("{op:?} {dtype:?} {rows}x{cols} on {limits:?}: {e}");
                            }
                        }
                    }
                }
                let modes = [
                    CrossEntropyMode::CheckTargets,
                    CrossEntropyMode::Loss { reduce: true },
                    CrossEntropyMode::LossAndGradient { reduce: false },
                    CrossEntropyMode::LossAndGradient { reduce: true },
                    CrossEntropyMode::GradientFromLse,
                ];
                let ce_edge = largest_on_chip(|cols| {
                    let p = plan_cross_entropy(200, cols, dtype, modes[2], &limits);
                    p.stages.iter().any(|s| {
                        s.kernel.family
                            == Family::CrossEntropy {
                                stage: CrossEntropyStage::OnChip,
                            }
                    })
                });
                assert!(
                    ce_edge > 1000,
                    "{dtype:?} on {limits:?}: on-chip up to {ce_edge}"
                );
                for cols in sizes_around(&[ce_edge]) {
                    for rows in rows_set {
                        for mode in modes {
                            let p = plan_cross_entropy(rows, cols, dtype, mode, &limits);
                            if let Err(e) = p.check_shared_memory(&limits) {
                                panic!(
                                    "cross-entropy {mode:?} {dtype:?} {rows}x{cols} on {limits:?}: {e}"
                                );
                            }
                        }
                    }
                }
                for op in Op::ALL.into_iter().filter(|o| o.has_strided_family()) {
                    let edges: Vec<usize> = [1, 2]
                        .map(|vec| strided_on_chip_max_n(dtype, op.inputs(), vec, &limits))
                        .to_vec();
                    for n in sizes_around(&edges).into_iter().filter(|&n| n <= 1 << 16) {
                        for (outer, inner) in [(1, 2), (3, 7), (64, 64), (1, 4096)] {
                            let p = plan_strided(
                                &StridedProblem {
                                    op,
                                    outer,
                                    n,
                                    inner,
                                    dtype,
                                    aligned_pairs: true,
                                },
                                &limits,
                            );
                            if let Err(e) = p.check_shared_memory(&limits) {
                                panic!(
                                    "strided {op:?} {dtype:?} [{outer}, {n}, {inner}] on {limits:?}: {e}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The check itself: a stage one byte over the limit (with its static memory counted) is
    /// refused, naming the kernel; one at the limit passes.
    #[test]
    fn the_shared_memory_check_counts_static_memory() {
        let limits = DeviceLimits {
            sm_count: 8,
            max_shared_mem_per_block: 96 * 1024,
        };
        let kernel = KernelConfig {
            op: Op::CrossEntropy,
            dtype: Dtype::F32,
            family: Family::CrossEntropy {
                stage: CrossEntropyStage::OnChip,
            },
        };
        let plan = |dynamic: usize| LaunchPlan::single(kernel, 1, dynamic as u32);
        let fits = 96 * 1024 - STATIC_SMEM_RESERVE;
        assert_eq!(plan(fits).check_shared_memory(&limits), Ok(()));
        let e = plan(fits + 1).check_shared_memory(&limits).unwrap_err();
        assert!(e.contains(&kernel.name()) && e.contains("98304"), "{e}");
        let strided = KernelConfig {
            op: Op::Softmax,
            dtype: Dtype::F32,
            family: Family::Strided {
                slices: 8,
                on_chip: true,
                vec: 2,
            },
        };
        assert_eq!(
            static_smem_bound(&strided),
            STATIC_SMEM_RESERVE + 8 * 32 * 16
        );
    }
}
