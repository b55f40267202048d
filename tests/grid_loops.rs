//! Grid loops of every op and family: more rows than one pass of the grid covers, so that each
//! block (or warp) goes round its row loop and a wrong row step shows. Each case
//! - asserts from the planner that the kernel under test is the one planned and that its grid
//!   covers fewer rows than there are (nothing passes vacuously, and a planner change cannot
//!   quietly end the coverage);
//! - runs the public API on fresh random inputs (seed printed; replay with CS_TEST_SEED) into
//!   poisoned outputs and compares every element with the f64 reference;
//! - checks the launch the emulator recorded: the planned kernel and threads, and the bytes of
//!   each row read once a pass (twice for two-pass kernels) and written once. A step that visits
//!   rows twice gives right values, but not this traffic.
//!
//! Covered: every op over the last dimension (softmax, log-softmax, their f32-output forms of
//! 16-bit input, both backward ops, logsumexp) in every warp lane shape, scalar and 16-byte; the
//! block sizes and the online family; each strided variant whose grid can loop; the
//! cross-entropy stages that loop. Softmax's block and online kernels are `common::grid_loops`'s
//! (tests/softmax_emulator.rs runs it for every dtype in four thread orders).
//!
//! Not covered, because nothing loops there: the split-row kernels (softmax, log-softmax, their
//! f32-output forms, backward, logsumexp) run a (chunks, rows) grid, a block per chunk of a row,
//! and the planner splits rows only when there are fewer of them than SMs; the cross-entropy
//! prepare and reduce stages are single blocks (they loop by thread).
//!
//! Each dtype runs in its own thread order (f32 shuffled, f16 reverse, bf16 warp-ahead), so each
//! op and family runs in three. The cases of millions of elements (the strided variants that
//! loop only over long rows, cross-entropy past 65,535 rows) run in one dtype and one order each,
//! to keep the file near a minute on two cores.

mod common;

use common::backward::{Case, check_logsumexp};
use common::cross_entropy::{Mode, Options, PLAIN, Values, run_case};
use common::strided::{Placement, check_dim, run_backward};
use common::{Forward, Layout, check_case, emulator, seeded_rng, shuffled, with_forward};
use cuda_softmax::tools::check::Rng;
use cuda_softmax::tools::planner::{
    CrossEntropyMode, CrossEntropyStage, Family, KernelConfig, LaunchPlan, Op, SoftmaxProblem,
    Stage, StridedProblem, plan_cross_entropy, plan_softmax, plan_strided,
};
use cuda_softmax::{Device, Dtype, Element, LaunchStats, Reduction, Schedule};

/// An op as this file runs it: through which public entry point, checked by which helper.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    /// Softmax or log-softmax (f32 output for the `_to_f32` ops): `common::check_case`.
    Forward(Forward),
    /// Softmax or log-softmax backward: `backward::Case`.
    Backward { log: bool },
    /// logsumexp: `backward::check_logsumexp`.
    LogSumExp,
}

impl Run {
    /// How `op` is run; `None` for cross-entropy, which has its own cases.
    fn of(op: Op) -> Option<Run> {
        let forward = |log, f32_out| {
            Run::Forward(Forward {
                f32_out,
                ..Forward::new(log, 1.0)
            })
        };
        Some(match op {
            Op::Softmax => forward(false, false),
            Op::LogSoftmax => forward(true, false),
            Op::SoftmaxToF32 => forward(false, true),
            Op::LogSoftmaxToF32 => forward(true, true),
            Op::SoftmaxBackward => Run::Backward { log: false },
            Op::LogSoftmaxBackward => Run::Backward { log: true },
            Op::LogSumExp => Run::LogSumExp,
            Op::CrossEntropy => return None,
        })
    }
}

/// Element offsets of a case's tensors in their buffers: the input (y for backward), dy (backward
/// only) and the output.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    x: usize,
    dy: usize,
    out: usize,
}

/// Every tensor on a 16-byte boundary: the warp family's 16-byte kernels, the strided family's
/// two rows a lane.
const ALIGNED: Offsets = Offsets {
    x: 0,
    dy: 0,
    out: 0,
};

/// Every tensor one element past a boundary: the scalar warp kernels, one row a lane in the
/// strided family; the block and online kernels take their packed path, with a scalar head
/// that changes from row to row (the rows are of odd length).
const SHIFTED: Offsets = Offsets {
    x: 1,
    dy: 1,
    out: 1,
};

impl Offsets {
    /// The offsets a kernel of `family` runs at.
    fn for_family(family: &Family) -> Offsets {
        match *family {
            Family::Warp { vec, .. } | Family::Strided { vec, .. } if vec > 1 => ALIGNED,
            _ => SHIFTED,
        }
    }

    /// (byte offset, element size) of each tensor `op` takes from its caller at these offsets
    /// (logsumexp's output is a new tensor).
    fn tensors(self, op: Op, dtype: Dtype) -> Vec<(usize, usize)> {
        let size = dtype.size_bytes();
        let out = op.output_dtype(dtype).size_bytes();
        let mut t = vec![(self.x * size, size)];
        if op.inputs() == 2 {
            t.push((self.dy * size, size));
        }
        if !op.writes_one_per_row() {
            t.push((self.out * out, out));
        }
        t
    }

    /// Whether every tensor starts on a 16-byte boundary (buffers start 256-byte aligned).
    fn aligned16(self, op: Op, dtype: Dtype) -> bool {
        let t = self.tensors(op, dtype);
        t.iter().all(|&(bytes, _)| bytes.is_multiple_of(16))
    }

    /// Whether every tensor starts on a boundary of two of its elements.
    fn aligned_pairs(self, op: Op, dtype: Dtype) -> bool {
        let t = self.tensors(op, dtype);
        t.iter()
            .all(|&(bytes, size)| bytes.is_multiple_of(2 * size))
    }
}

/// The plan for `rows` rows of `cols` of `kernel`'s op and dtype at `offsets`.
fn plan_last_dim(
    device: &Device,
    kernel: KernelConfig,
    rows: usize,
    cols: usize,
    offsets: Offsets,
) -> LaunchPlan {
    let problem = SoftmaxProblem {
        op: kernel.op,
        rows,
        cols,
        dtype: kernel.dtype,
        aligned16: offsets.aligned16(kernel.op, kernel.dtype),
    };
    plan_softmax(&problem, &device.limits())
}

/// The plan for `[2, n, inner]` reduced over dimension 1 (2 * inner rows of n elements, inner
/// apart) of `kernel`'s op and dtype at `offsets`.
fn plan_dim1(
    device: &Device,
    kernel: KernelConfig,
    n: usize,
    inner: usize,
    offsets: Offsets,
) -> LaunchPlan {
    let problem = StridedProblem {
        op: kernel.op,
        outer: 2,
        n,
        inner,
        dtype: kernel.dtype,
        aligned_pairs: offsets.aligned_pairs(kernel.op, kernel.dtype),
    };
    plan_strided(&problem, &device.limits())
}

/// The only stage of a single-kernel plan.
fn only_stage(plan: &LaunchPlan) -> Stage {
    assert_eq!(plan.stages.len(), 1, "expected one kernel: {plan:?}");
    plan.stages[0]
}

/// The rows a block covers in one pass of its grid loop.
fn rows_per_block(stage: &Stage) -> usize {
    match stage.kernel.family {
        Family::Warp { width, .. } => (stage.block / 32 * (32 / width)) as usize,
        Family::Strided { vec, .. } => 32 * vec as usize,
        _ => 1,
    }
}

/// Asserts that `stage`'s grid covers fewer than `rows` rows in one pass.
fn assert_grid_loops(stage: &Stage, rows: usize, what: &str) {
    let (grid, per_block) = (stage.grid.0 as usize, rows_per_block(stage));
    assert!(
        stage.grid.1 == 1 && rows > grid * per_block,
        "{what}: the grid ({grid} blocks of {per_block} rows) covers every row in one pass, so \
         nothing loops: {stage:?}"
    );
}

/// The bytes (read, written) of a launch of `stage` over `rows` rows of `cols` that reads each
/// row once a pass over it and writes it once.
fn row_traffic(stage: &Stage, rows: usize, cols: usize) -> (u64, u64) {
    let k = stage.kernel;
    let passes = match k.family {
        // (logsumexp's online kernel keeps no row to write: it reads x once.)
        Family::Online { .. } if k.op != Op::LogSumExp => 2,
        Family::Strided { on_chip: false, .. } => 2,
        _ => 1,
    };
    let elements = (rows * cols) as u64;
    let read = k.op.inputs() as u64 * passes * elements * k.dtype.size_bytes() as u64;
    let written_values = if k.op.writes_one_per_row() {
        rows as u64
    } else {
        elements
    };
    let written = written_values * k.op.output_dtype(k.dtype).size_bytes() as u64;
    (read, written)
}

/// On the emulator: the last launch ran `stages` and moved `traffic` bytes (read, written).
fn assert_launch(device: &Device, stages: &[Stage], traffic: (u64, u64), what: &str) {
    if let Some(stats) = device.last_launch_stats() {
        assert_stats(&stats, stages, traffic, what);
    }
}

/// `stats` are those of `stages` (their names joined by '+', their grids' threads) moving
/// `traffic` bytes (read, written).
fn assert_stats(stats: &LaunchStats, stages: &[Stage], traffic: (u64, u64), what: &str) {
    let names: Vec<String> = stages.iter().map(|s| s.kernel.name()).collect();
    assert_eq!(stats.kernel, names.join("+"), "{what}: kernels");
    let threads = stages
        .iter()
        .map(|s| u64::from(s.grid.0) * u64::from(s.grid.1) * u64::from(s.block))
        .sum();
    assert_eq!(stats.threads, threads, "{what}: threads");
    assert_eq!(
        (stats.kernel_bytes_read, stats.kernel_bytes_written),
        traffic,
        "{what}: bytes (read, written), each row once a pass"
    );
}

/// Longest row the scans for a kernel's shortest row look at: past every family boundary of
/// the emulator's limits.
const SCAN_COLS: usize = 1 << 17;

/// The shortest row the planner gives `kernel` (at `offsets`, with rows enough to fill the
/// GPU), found by asking it: no planner threshold is copied here.
fn shortest_cols(device: &Device, kernel: KernelConfig, offsets: Offsets) -> usize {
    (1..=SCAN_COLS)
        .find(|&cols| {
            only_stage(&plan_last_dim(device, kernel, 1 << 20, cols, offsets)).kernel == kernel
        })
        .unwrap_or_else(|| panic!("no row up to {SCAN_COLS} columns takes {}", kernel.name()))
}

/// Rows of `cols` that make `kernel`'s grid loop: a full pass of the largest grid the planner
/// gives it, then two blocks' rows more and 3 (a second pass ending in a partly filled block).
fn looping_rows(device: &Device, kernel: KernelConfig, cols: usize, offsets: Offsets) -> usize {
    let stage = only_stage(&plan_last_dim(device, kernel, 1 << 40, cols, offsets));
    let per_block = rows_per_block(&stage);
    stage.grid.0 as usize * per_block + 2 * per_block + 3
}

/// Runs `run` on fresh random rows (`rows` x `cols` at `offsets`, the output poisoned) and
/// checks every element against the f64 reference.
fn check_last_dim<T: Element>(
    device: &Device,
    rng: &mut Rng,
    run: Run,
    rows: usize,
    cols: usize,
    offsets: Offsets,
    what: &str,
) {
    match run {
        Run::Forward(forward) => {
            let x: Vec<T> = rng.logits(rows * cols, 8.0);
            let layout = Layout {
                x_offset: offsets.x,
                y_offset: offsets.out,
            };
            with_forward(forward, || check_case(device, &x, rows, cols, layout, what));
        }
        Run::Backward { log } => {
            let case = Case::<T>::random(rng, log, 1.0, rows, cols, cols / 7);
            case.check(device, (offsets.x, offsets.dy, offsets.out), false, what);
        }
        Run::LogSumExp => {
            let x: Vec<T> = rng.logits(rows * cols, 8.0);
            check_logsumexp(device, &x, rows, cols, offsets.x, what);
        }
    }
}

/// Every kernel over the last dimension for input T whose family `family` accepts (but
/// `skip`), each at its shortest row, with rows enough to loop.
fn last_dim_loops<T: Element>(
    device: &Device,
    rng: &mut Rng,
    family: fn(&Family) -> bool,
    skip: fn(&KernelConfig) -> bool,
) {
    let kernels = KernelConfig::all()
        .into_iter()
        .filter(|k| k.dtype == T::DTYPE && family(&k.family) && !skip(k));
    for kernel in kernels {
        let Some(run) = Run::of(kernel.op) else {
            continue;
        };
        let offsets = Offsets::for_family(&kernel.family);
        let cols = shortest_cols(device, kernel, offsets);
        let rows = looping_rows(device, kernel, cols, offsets);
        let stage = only_stage(&plan_last_dim(device, kernel, rows, cols, offsets));
        let what = format!("grid loop, {} [{rows}x{cols}] {offsets:?}", kernel.name());
        assert_eq!(stage.kernel, kernel, "{what}: planned {stage:?}");
        assert_grid_loops(&stage, rows, &what);
        check_last_dim::<T>(device, rng, run, rows, cols, offsets, &what);
        assert_launch(device, &[stage], row_traffic(&stage, rows, cols), &what);
    }
}

/// Every warp lane shape of every op, scalar and 16-byte.
fn warp_lane_shapes<T: Element>(device: &Device, rng: &mut Rng) {
    let warp = |f: &Family| matches!(f, Family::Warp { .. });
    last_dim_loops::<T>(device, rng, warp, |_| false);
}

/// Every block size and the online kernel of every op but softmax (`common::grid_loops`').
fn block_and_online<T: Element>(device: &Device, rng: &mut Rng) {
    let family = |f: &Family| matches!(f, Family::Block { .. } | Family::Online { .. });
    let softmax = |k: &KernelConfig| k.op == Op::Softmax;
    last_dim_loops::<T>(device, rng, family, softmax);
}

/// Longest row the scans for a strided kernel's looping shape look at: past the emulator's
/// on-chip limit for every dtype.
const SCAN_N: usize = 4096;

/// The strided variants whose grid cannot loop: two-pass blocks hold no shared memory, so once
/// there are more tiles than the grid covers, eight warps a block already fill the GPU and the
/// planner never takes 32.
fn strided_never_loops(kernel: &KernelConfig) -> bool {
    matches!(
        kernel.family,
        Family::Strided {
            slices: 32,
            on_chip: false,
            ..
        }
    )
}

/// The fewest elements of `[2, n, inner]` over dimension 1 the planner gives `kernel` with a
/// grid that loops, as (n, inner): n up to SCAN_N, with tiles of 32 * vec rows just past one,
/// two and four times the grid's largest size (the warps a block depend on the tiles; one
/// warp a block needs twice the grid's tiles to fill the GPU). Odd inner for one row a lane,
/// even for two; the last tile partly filled.
fn looping_strided_shape(
    device: &Device,
    kernel: KernelConfig,
    offsets: Offsets,
) -> Option<(usize, usize)> {
    let Family::Strided { vec, .. } = kernel.family else {
        panic!("{kernel:?} is not strided")
    };
    let vec = vec as usize;
    let cap = only_stage(&plan_dim1(device, kernel, 1, 1 << 30, offsets))
        .grid
        .0 as usize;
    let mut best: Option<(usize, usize)> = None;
    for tiles in [cap + 2, 2 * cap + 2, 4 * cap + 2] {
        // 2 * inner rows: tiles - 1 full tiles and one less 2 * vec rows.
        let inner = tiles * 16 * vec - vec;
        let takes = |n: usize| {
            let stage = only_stage(&plan_dim1(device, kernel, n, inner, offsets));
            stage.kernel == kernel && 2 * inner > stage.grid.0 as usize * 32 * vec
        };
        if let Some(n) = (3..=SCAN_N).find(|&n| takes(n))
            && best.is_none_or(|(bn, bi)| n * inner < bn * bi)
        {
            best = Some((n, inner));
        }
    }
    best
}

/// Runs `run` over dimension 1 of a fresh random `[2, n, inner]` (at `offsets`, the output
/// poisoned) and checks every element against the f64 reference.
fn check_dim1<T: Element>(
    device: &Device,
    rng: &mut Rng,
    run: Run,
    n: usize,
    inner: usize,
    offsets: Offsets,
    what: &str,
) {
    let shape = [2, n, inner];
    match run {
        Run::Forward(forward) => {
            let x: Vec<T> = rng.logits(2 * n * inner, 8.0);
            let placement = Placement::Separate(offsets.x, offsets.out);
            with_forward(forward, || {
                check_dim(device, &x, &shape, 1, placement, what)
            });
        }
        Run::Backward { log } => {
            let case = Case::<T>::random(rng, log, 1.0, 2 * inner, n, n / 7);
            let at = (offsets.x, offsets.dy, offsets.out);
            let got = run_backward(device, &case, &shape, 1, at, false);
            case.verify(&got, what, &format!("{shape:?} dim 1 offsets {at:?}"));
        }
        Run::LogSumExp => panic!("logsumexp has no strided family"),
    }
}

/// Every strided variant for input T that `select` accepts (and whose grid can loop), at the
/// smallest shape that makes it loop.
fn strided_loops<T: Element>(
    device: &Device,
    rng: &mut Rng,
    select: impl Fn(&KernelConfig) -> bool,
) {
    let kernels = KernelConfig::all()
        .into_iter()
        .filter(|k| k.dtype == T::DTYPE && matches!(k.family, Family::Strided { .. }) && select(k));
    for kernel in kernels {
        let run = Run::of(kernel.op).expect("an op with a strided family");
        let offsets = Offsets::for_family(&kernel.family);
        let found = looping_strided_shape(device, kernel, offsets);
        assert_eq!(
            found.is_none(),
            strided_never_loops(&kernel),
            "{}: looping shape {found:?}, against strided_never_loops",
            kernel.name()
        );
        let Some((n, inner)) = found else {
            continue;
        };
        let stage = only_stage(&plan_dim1(device, kernel, n, inner, offsets));
        let rows = 2 * inner;
        let what = format!(
            "grid loop, {} [2, {n}, {inner}] dim 1 {offsets:?}",
            kernel.name()
        );
        assert_grid_loops(&stage, rows, &what);
        check_dim1::<T>(device, rng, run, n, inner, offsets, &what);
        assert_launch(device, &[stage], row_traffic(&stage, rows, n), &what);
    }
}

/// Strided variants whose looping shapes hold millions of elements (a grid's pass of 32-row
/// tiles of hundreds of elements a row): 32 warps a block (taken only when a block's rows fill
/// most of the shared memory) and two-pass (rows too long to keep on chip).
fn needs_long_rows(kernel: &KernelConfig) -> bool {
    matches!(
        kernel.family,
        Family::Strided { slices: 32, .. } | Family::Strided { on_chip: false, .. }
    )
}

/// One warp a block, two-pass, of an op with f32 probabilities out: a lane sums a whole row of
/// 697 (f32) or 1393 (16-bit) elements alone (`strided_one_warp_two_pass_f32_probabilities`).
fn one_lane_sums_whole_f32_rows(kernel: &KernelConfig) -> bool {
    let f32_probabilities = match kernel.op {
        Op::Softmax => kernel.dtype == Dtype::F32,
        Op::SoftmaxToF32 => true,
        _ => false,
    };
    f32_probabilities
        && matches!(
            kernel.family,
            Family::Strided {
                slices: 1,
                on_chip: false,
                ..
            }
        )
}

/// The long-row variants but those of their own test below.
fn long_rows_within_tolerance(kernel: &KernelConfig) -> bool {
    needs_long_rows(kernel) && !one_lane_sums_whole_f32_rows(kernel)
}

/// The strided variants that loop over short rows, every op for input T.
fn strided_short_rows<T: Element>(device: &Device, rng: &mut Rng) {
    strided_loops::<T>(device, rng, |k| !needs_long_rows(k));
}

/// The cross-entropy options of these cases: no ignored rows, so that every row moves the same
/// bytes, and a loss a row: the reduce stage's threads read the Mean denominators once each, so
/// its traffic grows with the rows only up to its block size.
const CE_OPTIONS: Options = Options {
    ignore_index: None,
    reduction: Reduction::None,
    ..PLAIN
};

/// The plan a cross-entropy call in `mode` makes.
fn plan_ce<T: Element>(device: &Device, rows: usize, v: usize, mode: Mode) -> LaunchPlan {
    let reduce = CE_OPTIONS.reduction != Reduction::None;
    let mode = match mode {
        Mode::Forward => CrossEntropyMode::Loss { reduce },
        Mode::ForwardBackward | Mode::InPlace => CrossEntropyMode::LossAndGradient { reduce },
        Mode::Backward => CrossEntropyMode::GradientFromLse,
    };
    plan_cross_entropy(rows, v, T::DTYPE, mode, &device.limits())
}

/// The rows a cross-entropy stage covers in one pass of its grid (`None` for the single-block
/// stages, which loop over rows by thread, not by grid).
fn ce_rows_per_pass(stage: &Stage) -> Option<usize> {
    let Family::CrossEntropy { stage: kind } = stage.kernel.family else {
        panic!("{stage:?} is not a cross-entropy stage")
    };
    match kind {
        CrossEntropyStage::OnChip => Some(stage.grid.0 as usize),
        CrossEntropyStage::Finish => Some((stage.grid.0 * stage.block) as usize),
        CrossEntropyStage::Stats | CrossEntropyStage::Grad => Some(stage.grid.1 as usize),
        CrossEntropyStage::Prepare | CrossEntropyStage::Reduce => None,
    }
}

/// A cross-entropy call of `rows` rows of `v` classes in `mode` (i64 targets, logits one
/// element off a boundary), every output checked against the f64 reference; returns its plan
/// and, on the emulator, its launch's statistics.
fn run_ce<T: Element>(
    device: &Device,
    rng: &mut Rng,
    rows: usize,
    v: usize,
    mode: Mode,
) -> (LaunchPlan, Option<LaunchStats>) {
    run_case::<T, i64>(device, rng, rows, v, &CE_OPTIONS, mode, 1, Values::Random);
    (
        plan_ce::<T>(device, rows, v, mode),
        device.last_launch_stats(),
    )
}

/// Cross-entropy over `rows` rows of `v` classes in `mode`, where every stage of `looping`
/// covers fewer rows than there are in a pass of its grid: checked against the reference, and
/// on the emulator the launch was the planned stages, moving as many bytes as each row moves
/// in calls of 8 and 16 rows (whose grids cover their rows in one pass): the same stages, and
/// bytes a fixed amount plus a fixed amount a row.
fn ce_loops<T: Element>(
    device: &Device,
    rng: &mut Rng,
    rows: usize,
    v: usize,
    mode: Mode,
    looping: &[CrossEntropyStage],
) {
    let what = format!(
        "grid loop, cross-entropy {} [{rows}, {v}] {mode:?}",
        T::DTYPE.name()
    );
    let (plan, stats) = run_ce::<T>(device, rng, rows, v, mode);
    for kind in looping {
        let stage = plan
            .stages
            .iter()
            .find(|s| s.kernel.family == Family::CrossEntropy { stage: *kind })
            .unwrap_or_else(|| panic!("{what}: no {kind:?} stage in {plan:?}"));
        let per_pass = ce_rows_per_pass(stage).expect("a stage with a grid loop");
        assert!(
            rows > per_pass,
            "{what}: {kind:?} covers {per_pass} rows a pass, so nothing loops: {stage:?}"
        );
    }
    let Some(stats) = stats else {
        return;
    };
    let (small, twice) = (8, 16);
    let (small_plan, at_small) = run_ce::<T>(device, rng, small, v, mode);
    let (twice_plan, at_twice) = run_ce::<T>(device, rng, twice, v, mode);
    for (p, n) in [(&small_plan, small), (&twice_plan, twice)] {
        let kinds = |p: &LaunchPlan| p.stages.iter().map(|s| s.kernel).collect::<Vec<_>>();
        assert_eq!(kinds(p), kinds(&plan), "{what}: the stages of {n} rows");
        for s in &p.stages {
            let per_pass = ce_rows_per_pass(s);
            assert!(
                per_pass.is_none_or(|r| r >= n),
                "{what}: {s:?} loops over {n} rows"
            );
        }
    }
    let bytes = |s: Option<LaunchStats>| {
        let s = s.expect("statistics of every emulator launch");
        (s.kernel_bytes_read, s.kernel_bytes_written)
    };
    let (at_small, at_twice) = (bytes(at_small), bytes(at_twice));
    let per_row = |a: u64, b: u64| {
        let added = (twice - small) as u64;
        assert_eq!((b - a) % added, 0, "{what}: traffic not linear in rows");
        (b - a) / added
    };
    let expected = |a: u64, b: u64| a + per_row(a, b) * (rows - small) as u64;
    let want = (
        expected(at_small.0, at_twice.0),
        expected(at_small.1, at_twice.1),
    );
    assert_stats(&stats, &plan.stages, want, &what);
}

/// Rows of `v` classes past what every stage of `looping` covers in one pass of the largest
/// grid the planner gives it in `mode` (and 3 more).
fn ce_looping_rows<T: Element>(
    device: &Device,
    v: usize,
    mode: Mode,
    looping: &[CrossEntropyStage],
) -> usize {
    let plan = plan_ce::<T>(device, 1 << 30, v, mode);
    let per_pass = plan.stages.iter().filter(
        |s| matches!(s.kernel.family, Family::CrossEntropy { stage } if looping.contains(&stage)),
    );
    per_pass
        .filter_map(ce_rows_per_pass)
        .max()
        .expect("a looping stage")
        + 3
}

/// Cross-entropy's on-chip kernel (forward_backward of rows that fit in shared memory).
fn ce_on_chip<T: Element>(device: &Device, rng: &mut Rng) {
    let (v, mode, looping) = (100, Mode::ForwardBackward, [CrossEntropyStage::OnChip]);
    let rows = ce_looping_rows::<T>(device, v, mode, &looping);
    ce_loops::<T>(device, rng, rows, v, mode, &looping);
}

/// The cross-entropy stages whose grids cover 65,535 rows or more (the y dimension's limit, and
/// the finish stage's thread a row): stats and finish (forward), grad (backward), with 2
/// classes a row. About 10 s each call on the emulator: f32 only.
#[test]
fn cross_entropy_past_65535_rows_f32() {
    let device = shuffled("cross_entropy_past_65535_rows_f32");
    let mut rng = seeded_rng("cross_entropy_past_65535_rows_f32");
    let forward = [CrossEntropyStage::Stats, CrossEntropyStage::Finish];
    let backward = [CrossEntropyStage::Grad];
    for (mode, looping) in [
        (Mode::Forward, &forward[..]),
        (Mode::Backward, &backward[..]),
    ] {
        let t = std::time::Instant::now();
        let rows = ce_looping_rows::<f32>(&device, 2, mode, looping);
        ce_loops::<f32>(&device, &mut rng, rows, 2, mode, looping);
        println!("{mode:?} {rows}: {:?}", t.elapsed());
    }
}

/// One test per (dtype, case list), the dtype's thread order for each.
macro_rules! dtype_tests {
    ($module:ident, $t:ty, $device:expr) => {
        mod $module {
            use super::*;

            fn run(test: &str, cases: fn(&Device, &mut Rng)) {
                let name = format!("{}::{test}", stringify!($module));
                let device: Device = $device(&name);
                let mut rng = seeded_rng(&name);
                let t = std::time::Instant::now();
                cases(&device, &mut rng);
                println!("{name}: {:?}", t.elapsed());
            }

            #[test]
            fn warp_lane_shapes() {
                run("warp_lane_shapes", super::warp_lane_shapes::<$t>);
            }

            #[test]
            fn block_and_online() {
                run("block_and_online", super::block_and_online::<$t>);
            }

            #[test]
            fn strided_short_rows() {
                run("strided_short_rows", super::strided_short_rows::<$t>);
            }

            #[test]
            fn cross_entropy_on_chip() {
                run("cross_entropy_on_chip", super::ce_on_chip::<$t>);
            }
        }
    };
}

dtype_tests!(f32, f32, shuffled);
dtype_tests!(f16, cuda_softmax::f16, |_| emulator(Schedule::Reverse));
dtype_tests!(bf16, cuda_softmax::bf16, |_| emulator(Schedule::WarpAhead));

/// Long-row strided variants that loop, for the ops that take f32 input, in f32 only (half the
/// elements of 16-bit rows at the on-chip limit).
#[test]
fn strided_long_rows_f32() {
    let device = shuffled("strided_long_rows_f32");
    let mut rng = seeded_rng("strided_long_rows_f32");
    let t = std::time::Instant::now();
    strided_loops::<f32>(&device, &mut rng, long_rows_within_tolerance);
    println!("strided_long_rows_f32: {:?}", t.elapsed());
}

/// Long-row strided variants that loop, for the f32-output ops of 16-bit input: softmax in f16,
/// log-softmax in bf16.
#[test]
fn strided_long_rows_f32_output() {
    let device = emulator(Schedule::Reverse);
    let mut rng = seeded_rng("strided_long_rows_f32_output");
    let t = std::time::Instant::now();
    strided_loops::<cuda_softmax::f16>(&device, &mut rng, |k| {
        k.op == Op::SoftmaxToF32 && long_rows_within_tolerance(k)
    });
    strided_loops::<cuda_softmax::bf16>(&device, &mut rng, |k| {
        k.op == Op::LogSoftmaxToF32 && long_rows_within_tolerance(k)
    });
    println!("strided_long_rows_f32_output: {:?}", t.elapsed());
}

/// The one-warp two-pass strided kernels of softmax with f32 output: a lane folds its whole row
/// alone. With a plain running sum, at the looping shapes' rows (697 f32 or 1393 16-bit
/// elements) the probabilities missed the f32 tolerance (2e-6 relative): 1.02-1.12x of it for
/// f32 softmax (max relative error 2.2e-6 to 2.4e-6), 1.59x for f16 and 1.80x for bf16 to f32.
/// The kernel now sums each batch pairwise and compensates the running sum (Kahan): 0.15x.
#[test]
fn strided_one_warp_two_pass_f32_probabilities() {
    let device = shuffled("strided_one_warp_two_pass_f32_probabilities");
    let mut rng = seeded_rng("strided_one_warp_two_pass_f32_probabilities");
    strided_loops::<f32>(&device, &mut rng, one_lane_sums_whole_f32_rows);
    strided_loops::<cuda_softmax::f16>(&device, &mut rng, one_lane_sums_whole_f32_rows);
    strided_loops::<cuda_softmax::bf16>(&device, &mut rng, one_lane_sums_whole_f32_rows);
}
