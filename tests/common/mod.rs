//! The correctness suite, shared by the emulator tests and the GPU tests: every case builds
//! fresh random inputs (seed printed; replay with CS_TEST_SEED), poisons the output, runs the
//! kernel and compares every element with the f64 reference, then checks that f16/bf16 outputs
//! are that reference rounded once to nearest even (`check_storage_rounding`; set
//! CS_ROUNDING_STATS=1 and run with --nocapture to print each case's statistics).
#![allow(dead_code)]

pub mod backward;
pub mod cross_entropy;
pub mod strided;

use cuda_softmax::tools::check::{Rng, Tolerance, compare};
use cuda_softmax::tools::planner::{Family, KernelConfig, SoftmaxProblem, Stage, plan_softmax};
use cuda_softmax::tools::reference;
use cuda_softmax::{Device, DeviceTensor, Dtype, Element, EmulatorConfig, Schedule, Softmax};

/// Row lengths from the edge list of docs/architecture.md plus each family boundary.
pub const EDGE_COLS: [usize; 19] = [
    1, 2, 3, 16, 17, 31, 32, 33, 127, 781, 1023, 1024, 1025, 1152, 2048, 2049, 4097, 8003, 65537,
];

pub fn seeded_rng(test: &str) -> Rng {
    let seed = Rng::seed_from_env();
    println!("{test}: seed {seed} (set CS_TEST_SEED={seed} to replay)");
    Rng::new(seed)
}

/// An emulator device running every block's threads in `schedule`'s order, sized by the CPU
/// count (workers 0).
pub fn emulator(schedule: Schedule) -> Device {
    Device::emulator_with(EmulatorConfig::default().schedule(schedule).workers(0))
}

/// An emulator with a random thread order per block, seeded from the printed test seed.
pub fn shuffled(test: &str) -> Device {
    let seed = Rng::seed_from_env();
    println!("{test}: schedule seed {seed}");
    emulator(Schedule::Shuffled { seed })
}

/// How a case lays out its tensors: element offsets of x and y inside larger buffers.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub x_offset: usize,
    pub y_offset: usize,
}

pub const ALIGNED: Layout = Layout {
    x_offset: 0,
    y_offset: 0,
};

/// The forward op the shared checks run: softmax or log-softmax of `scale * x`, with output in
/// the input's type or (`f32_out`) in f32 through `forward_f32`. The suites are written once and
/// run under each op with `with_forward`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forward {
    pub log: bool,
    pub scale: f32,
    pub f32_out: bool,
}

/// Plain softmax, scale 1: what `check_case` runs unless told otherwise.
pub const SOFTMAX: Forward = Forward {
    log: false,
    scale: 1.0,
    f32_out: false,
};

impl Forward {
    /// Softmax or log-softmax at `scale`, output in the input's type.
    pub const fn new(log: bool, scale: f32) -> Forward {
        Forward {
            log,
            scale,
            f32_out: false,
        }
    }

    pub fn op(&self) -> Softmax {
        Softmax::new().log(self.log).scale(self.scale)
    }

    /// Checks `got`, this op of the rows of `x` (rows of `cols`, in any storage type), against
    /// the f64 reference in the output's own tolerance and rounding, panicking with `detail`
    /// and the worst element on failure.
    pub fn check_output<O: Element>(&self, x: &[f64], got: &[O], cols: usize, detail: &str) {
        let want = self.expected::<O>(x, cols, got);
        let c = compare(got, &want, self.tolerance(O::DTYPE));
        assert!(
            c.passed(),
            "{detail}: {self:?} out {}: {c}",
            O::DTYPE.name()
        );
        if std::env::var_os("CS_WORST_ERROR").is_some() {
            eprintln!(
                "worst log={} scale={} out={} ratio={:.4} {detail}",
                self.log,
                self.scale,
                O::DTYPE.name(),
                c.worst_ratio
            );
        }
        if std::env::var_os("CS_ROUNDING_STATS").is_some() {
            eprintln!(
                "rounding {} {detail}: {}",
                O::DTYPE.name(),
                rounding_stats(got, &want, cols)
            );
        }
        // Probabilities are computed to a relative error far below the storage type's, so they
        // must come out rounded once. Log-probabilities carry an absolute error (from log(sum)),
        // which is a large relative error for values near 0: `compare` holds them to it instead.
        if !self.log
            && let Err(e) = check_storage_rounding(got, &want, cols)
        {
            panic!("{detail}: {self:?}: {e}");
        }
    }

    /// What `got` (this op of `x`, rows of `cols`) is checked against: the f64 reference, each
    /// value as the storage type holds it where it is out of the type's range (log-softmax of
    /// extreme logits lies below -MAX: the correctly rounded result there is -inf). A value
    /// within the tolerance of the overflow threshold may come out either way: the side `got`
    /// took is accepted.
    pub fn expected<T: Element>(&self, x: &[f64], cols: usize, got: &[T]) -> Vec<f64> {
        let s = f64::from(self.scale);
        if !self.log {
            return reference::softmax_rows_scaled(x, cols, s);
        }
        let tol = self.tolerance(T::DTYPE);
        let threshold = T::MAX_FINITE * (1.0 + relative_ulp(T::DTYPE) / 2.0);
        let mut want = reference::log_softmax_rows(x, cols, s);
        for (w, g) in want.iter_mut().zip(got) {
            let g = g.to_f64();
            let band = tol.atol + tol.rtol * w.abs();
            let near = (w.abs() - threshold).abs() <= band;
            if w.is_finite() && w.abs() > threshold {
                *w = if near && g.is_finite() {
                    w.signum() * T::MAX_FINITE
                } else {
                    w.signum() * f64::INFINITY
                };
            } else if w.is_finite() && near && g.is_infinite() && g.signum() == w.signum() {
                *w = g;
            }
        }
        want
    }

    pub fn tolerance(&self, dtype: Dtype) -> Tolerance {
        if self.log {
            Tolerance::log_softmax(dtype)
        } else {
            Tolerance::softmax(dtype)
        }
    }
}

thread_local! {
    static FORWARD: std::cell::Cell<Forward> = const { std::cell::Cell::new(SOFTMAX) };
}

/// Runs `f` with `check_case` (and every suite built on it) checking `op`.
pub fn with_forward<R>(op: Forward, f: impl FnOnce() -> R) -> R {
    let before = FORWARD.with(|c| c.replace(op));
    let r = f();
    FORWARD.with(|c| c.set(before));
    r
}

/// The forward op `check_case` checks now.
pub fn forward() -> Forward {
    FORWARD.with(|c| c.get())
}

/// Runs softmax on `x` (rows x cols) with the given layout; returns the output as host values.
pub fn run_softmax<T: Element>(
    device: &Device,
    x: &[T],
    rows: usize,
    cols: usize,
    layout: Layout,
) -> Vec<T> {
    run_forward(device, x, rows, cols, layout, |x, y| {
        forward().op().forward_into(x, y).expect("forward_into")
    })
}

/// Runs `f(x, y)` on `x` (rows x cols) and a poisoned output of type O, laid out as `layout`
/// says; returns the output as host values, after checking nothing outside it changed.
pub fn run_forward<T: Element, O: Element>(
    device: &Device,
    x: &[T],
    rows: usize,
    cols: usize,
    layout: Layout,
    f: impl FnOnce(&DeviceTensor<T>, &mut DeviceTensor<O>),
) -> Vec<O> {
    let n = rows * cols;
    let mut x_buf = vec![T::from_f64(0.0); n + layout.x_offset + 3];
    x_buf[layout.x_offset..layout.x_offset + n].copy_from_slice(x);
    let x_all = DeviceTensor::from_host(device, &x_buf, &[x_buf.len()]).expect("upload x");
    let x_view = x_all.view(layout.x_offset, &[rows, cols]).expect("x view");
    let y_buf = vec![O::poison(); n + layout.y_offset + 3];
    let y_all = DeviceTensor::from_host(device, &y_buf, &[y_buf.len()]).expect("upload poisoned y");
    let mut y_view = y_all.view(layout.y_offset, &[rows, cols]).expect("y view");
    f(&x_view, &mut y_view);
    let y_host = y_all.to_host().expect("download y");
    // Nothing outside the output view may change.
    let outside = y_host[..layout.y_offset]
        .iter()
        .chain(&y_host[layout.y_offset + n..])
        .filter(|v| !v.is_poison())
        .count();
    assert_eq!(
        outside, 0,
        "softmax wrote {outside} elements outside its output view"
    );
    y_host[layout.y_offset..layout.y_offset + n].to_vec()
}

/// Checks one case against the reference, panicking with the worst element on failure.
pub fn check_case<T: Element>(
    device: &Device,
    x: &[T],
    rows: usize,
    cols: usize,
    layout: Layout,
    what: &str,
) {
    let x64: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let op = forward();
    let detail = format!(
        "{what}: {} [{rows}x{cols}] {layout:?} on {}",
        T::DTYPE.name(),
        device.name()
    );
    if op.f32_out {
        let got = run_forward::<T, f32>(device, x, rows, cols, layout, |x, y| {
            op.op().forward_f32_into(x, y).expect("forward_f32_into")
        });
        op.check_output(&x64, &got, cols, &detail);
    } else {
        let got = run_softmax(device, x, rows, cols, layout);
        op.check_output(&x64, &got, cols, &detail);
    }
}

/// How outputs compare with the f64 reference rounded once (to nearest even) to the storage
/// type. The tolerances of `compare` admit about an ulp, so they cannot tell a correctly rounded
/// store from truncation or from a second rounding (of 1/sum, or of an intermediate, to the
/// storage type); these statistics can.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RoundingStats {
    /// Distinct (output, reference) pairs considered: in rows whose reference is all finite
    /// (rows with NaN/inf inputs are left out), except where both the output and the rounded
    /// reference are exactly zero.
    pub compared: usize,
    /// Of those, outputs equal to the reference rounded once to the storage type.
    pub exact: usize,
    /// Of those, values whose rounded reference is a normal number (not zero, not subnormal).
    pub normal: usize,
    /// Mean of (got - want) / want over the `normal` values.
    pub mean_signed_rel: f64,
}

impl RoundingStats {
    /// Share of compared values equal to the once-rounded reference (1 when none compared).
    pub fn match_rate(&self) -> f64 {
        if self.compared == 0 {
            1.0
        } else {
            self.exact as f64 / self.compared as f64
        }
    }
}

impl std::fmt::Display for RoundingStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} distinct values ({:.3}%) equal the reference rounded once; mean signed \
             relative error {:+.3e} over {} normal ones",
            self.exact,
            self.compared,
            100.0 * self.match_rate(),
            self.mean_signed_rel,
            self.normal
        )
    }
}

/// The smallest positive normal value of a storage type.
fn min_normal(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F16 => 2f64.powi(-14),
        Dtype::F32 | Dtype::Bf16 => 2f64.powi(-126),
        other => panic!("no minimum normal known for {other:?}"),
    }
}

/// The spacing of a storage type's values just above 1.0: its relative ulp.
pub fn relative_ulp(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 2f64.powi(-23),
        Dtype::F16 => 2f64.powi(-10),
        Dtype::Bf16 => 2f64.powi(-7),
        other => panic!("no ulp known for {other:?}"),
    }
}

/// Fewer elements than this (compared, or normal for the mean) make no statistic.
pub const ROUNDING_MIN_ELEMENTS: usize = 200;
/// f16/bf16: at least this share of outputs must equal the once-rounded reference, give or take
/// ROUNDING_SPARE_MISMATCHES. Kernels compute in f32 and round once when storing, so they miss
/// only where the exact value lies within a few f32 ulps of a rounding boundary of the storage
/// type. Measured on the emulator (seeds 1-25, every case of the suite with 200 values or more):
/// 99.99% overall, 0.021% mismatches in the worst kind of case, and one mismatch at most in any
/// case of fewer than 1000 values (so at least 99.65%). The mutants of tests/rounding_checks.rs
/// reach 45-52% (truncation), 63-98% (1/sum rounded to the storage type) and 72-96%
/// (exponentials rounded).
pub const ROUNDING_MIN_MATCH_RATE: f64 = 0.99;
/// Mismatches allowed on top of the 1%: in a case of 200-300 values, 1% is only 2-3, and a GPU's
/// exp2f (2 ulp) misses a little more often than the emulator's, so the allowance must not hinge
/// on one or two unlucky values.
pub const ROUNDING_SPARE_MISMATCHES: usize = 2;
/// f16/bf16: bound on |mean signed relative error|, in relative ulps of the storage type (f16
/// 2^-10, bf16 2^-7). Round-to-nearest-even errors average out: measured at most 0.030 ulp (f16)
/// and 0.031 ulp (bf16) per case, seeds 1-25 (about 0.015 ulp is one standard deviation at 200
/// values); truncation averages -0.35 to -0.38 ulp.
pub const ROUNDING_MAX_MEAN_ULPS: f64 = 0.1;

/// Elements `rounding_stats` looks at, at most: evenly spaced through larger cases. Plenty for
/// the statistics, and it keeps the check cheap next to the emulated kernels.
pub const ROUNDING_SAMPLE: usize = 50_000;

/// Statistics of `got` against the f64 reference `want` (rows of `cols` elements), over at most
/// ROUNDING_SAMPLE evenly spaced elements. Each distinct (output, reference) pair counts once:
/// equal logits give equal outputs, whose rounding errors are one error, not many independent
/// ones (a row of equal values would otherwise weigh as much as thousands of different ones).
pub fn rounding_stats<T: Element>(got: &[T], want: &[f64], cols: usize) -> RoundingStats {
    assert_eq!(got.len(), want.len(), "rounding_stats: lengths differ");
    let mut s = RoundingStats::default();
    if cols == 0 {
        return s;
    }
    let finite_rows: Vec<bool> = want
        .chunks_exact(cols)
        .map(|row| row.iter().all(|w| w.is_finite()))
        .collect();
    let tiny = min_normal(T::DTYPE);
    let mut seen = std::collections::HashSet::new();
    let mut sum_rel = 0.0;
    for i in (0..want.len()).step_by(want.len().div_ceil(ROUNDING_SAMPLE).max(1)) {
        if !finite_rows[i / cols] {
            continue;
        }
        let (g, w) = (got[i].to_f64(), want[i]);
        let rounded = T::from_f64(w).to_f64();
        if (g == 0.0 && rounded == 0.0) || !seen.insert((g.to_bits(), w.to_bits())) {
            continue;
        }
        s.compared += 1;
        if g == rounded {
            s.exact += 1;
        }
        if rounded.abs() >= tiny {
            s.normal += 1;
            sum_rel += (g - w) / w;
        }
    }
    if s.normal > 0 {
        s.mean_signed_rel = sum_rel / s.normal as f64;
    }
    s
}

/// Checks that f16/bf16 outputs are the reference rounded once to nearest even: at least
/// ROUNDING_MIN_MATCH_RATE of them (less ROUNDING_SPARE_MISMATCHES) equal it exactly, and their
/// mean signed relative error is within ROUNDING_MAX_MEAN_ULPS ulps of zero. Skipped for cases
/// with fewer than ROUNDING_MIN_ELEMENTS values to judge.
///
/// Not applied to f32: f32 results are not correctly rounded (about 18% equal the rounded
/// reference), and their mean signed error is not centred on zero either: measured +0.8 to +0.93
/// ulp over the whole suite and up to +4.9 ulp (+5.8e-7) for one case (2 x 2^20 logits in
/// [-12, 12]), growing with the spread of the logits (kLog2e rounded to f32 is 1.3e-8 low,
/// relatively, which alone biases exp2f((x - m) * kLog2e) by |x - m| * 1.3e-8). A bound loose enough to be safe
/// would be a fraction of the per-element tolerance, which `compare` already enforces, and there
/// is no storage rounding step in f32 for it to guard.
pub fn check_storage_rounding<T: Element>(
    got: &[T],
    want: &[f64],
    cols: usize,
) -> Result<RoundingStats, String> {
    if T::DTYPE == Dtype::F32 {
        return Ok(RoundingStats::default());
    }
    let s = rounding_stats(got, want, cols);
    let allowed = (s.compared as f64 * (1.0 - ROUNDING_MIN_MATCH_RATE)).floor() as usize
        + ROUNDING_SPARE_MISMATCHES;
    if s.compared >= ROUNDING_MIN_ELEMENTS && s.compared - s.exact > allowed {
        return Err(format!(
            "outputs are not the reference rounded once to {} (at most {allowed} may differ): {s}",
            T::DTYPE.name(),
        ));
    }
    let bound = ROUNDING_MAX_MEAN_ULPS * relative_ulp(T::DTYPE);
    if s.normal >= ROUNDING_MIN_ELEMENTS && s.mean_signed_rel.abs() > bound {
        return Err(format!(
            "outputs are biased: |mean signed relative error| above {bound:.2e} \
             ({ROUNDING_MAX_MEAN_ULPS} ulp of {}): {s}",
            T::DTYPE.name()
        ));
    }
    Ok(s)
}

/// Rows for a given row length: more rows for short rows, so that multi-row warps and grid
/// loops are exercised, fewer for long ones.
pub fn rows_for(cols: usize) -> usize {
    match cols {
        0..=64 => 301,
        65..=2048 => 37,
        2049..=10000 => 9,
        _ => 2,
    }
}

pub fn edge_shapes<T: Element>(device: &Device, rng: &mut Rng) {
    for cols in EDGE_COLS {
        let rows = rows_for(cols);
        let x: Vec<T> = rng.logits(rows * cols, 8.0);
        check_case(device, &x, rows, cols, ALIGNED, "edge shape");
    }
}

pub fn huge_row<T: Element>(device: &Device, rng: &mut Rng) {
    let cols = 1 << 20;
    let x: Vec<T> = rng.logits(2 * cols, 12.0);
    check_case(device, &x, 2, cols, ALIGNED, "2^20 columns");
}

pub fn many_rows<T: Element>(device: &Device, rng: &mut Rng) {
    for cols in [3, 40] {
        let rows = 70_001; // more rows than a 16-bit grid dimension holds
        let x: Vec<T> = rng.logits(rows * cols, 6.0);
        check_case(device, &x, rows, cols, ALIGNED, "more than 65535 rows");
    }
}

/// Views that start 1..7 elements off a 16-byte boundary, input and output differently.
pub fn misaligned_views<T: Element>(device: &Device, rng: &mut Rng) {
    for cols in [5, 33, 256, 1024, 1025, 3000, 30_000] {
        let rows = rows_for(cols).min(9);
        for (xo, yo) in [(1, 1), (3, 0), (0, 5), (7, 2), (4, 4), (6, 1)] {
            let x: Vec<T> = rng.logits(rows * cols, 8.0);
            let layout = Layout {
                x_offset: xo,
                y_offset: yo,
            };
            check_case(device, &x, rows, cols, layout, "misaligned view");
        }
    }
}

/// Rows past the block family (split-row for 2 rows, online for a row per SM) with x and y off
/// 16-byte boundaries differently: the two-pass write loops' element-by-element path.
pub fn misaligned_long_rows<T: Element>(device: &Device, rng: &mut Rng) {
    let cols = block_family_max_cols::<T>(device) + 1;
    let sm = device.limits().sm_count as usize;
    for rows in [2, sm] {
        let x: Vec<T> = rng.logits(rows * cols, 8.0);
        for (x_offset, y_offset) in [(0, 1), (3, 0)] {
            let layout = Layout { x_offset, y_offset };
            check_case(device, &x, rows, cols, layout, "misaligned long rows");
        }
    }
}

/// NaN rows, all -inf rows, one +inf, masked (-inf) entries, extreme magnitudes, rows far below 0.
pub fn special_values<T: Element>(device: &Device, rng: &mut Rng) {
    for cols in [1, 7, 32, 100, 1024, 2049, 8003, 30_000] {
        let x = special_rows::<T>(rng, cols);
        check_case(device, &x, SPECIAL_ROWS, cols, ALIGNED, "special values");
    }
}

/// Rows `special_rows` makes.
pub const SPECIAL_ROWS: usize = 8;

/// SPECIAL_ROWS rows of `cols`: one NaN; all -inf; one +inf; all but one masked; magnitudes
/// near the dtype's maximum; large and close together; far below zero; close together near
/// the most negative finite value.
pub fn special_rows<T: Element>(rng: &mut Rng, cols: usize) -> Vec<T> {
    let ninf = T::from_f64(f64::NEG_INFINITY);
    let rows = SPECIAL_ROWS;
    let mut x: Vec<T> = rng.logits(rows * cols, 4.0);
    let row = |r: usize| r * cols..(r + 1) * cols;
    // Row 0: one NaN somewhere.
    x[rng.below(cols)] = T::from_f64(f64::NAN);
    // Row 1: every element -inf.
    x[row(1)].fill(ninf);
    // Row 2: one +inf.
    x[cols * 2 + rng.below(cols)] = T::from_f64(f64::INFINITY);
    // Row 3: all but one element masked.
    let keep = rng.below(cols);
    for (i, v) in x[row(3)].iter_mut().enumerate() {
        if i != keep {
            *v = ninf;
        }
    }
    // Row 4: magnitudes near the dtype's maximum, both signs.
    for v in x[row(4)].iter_mut() {
        *v = T::from_f64((rng.uniform() * 2.0 - 1.0) * T::MAX_FINITE * 0.999);
    }
    // Row 5: large and close together (differences of a few units near the maximum of f16,
    // of many orders of magnitude less than the values for f32/bf16).
    let top = T::MAX_FINITE * 0.99;
    for v in x[row(5)].iter_mut() {
        *v = T::from_f64(top - (rng.uniform() * 0.01 * top.min(1000.0)));
    }
    // Row 6: every element far below zero (a maximum or max identity that starts at 0
    // instead of -inf turns every exponential into 0 here).
    for v in x[row(6)].iter_mut() {
        *v = T::from_f64(-1000.0 - 4.0 * rng.uniform());
    }
    // Row 7: row 5 mirrored, close together near the most negative finite value.
    for v in x[row(7)].iter_mut() {
        *v = T::from_f64(-top + rng.uniform() * 0.01 * top.min(1000.0));
    }
    x
}

/// Higher-rank tensors, in-place operation, and an empty batch.
pub fn shapes_and_in_place<T: Element>(device: &Device, rng: &mut Rng) {
    // Rank 3: softmax over the last dimension of [4, 5, 77].
    let x: Vec<T> = rng.logits(4 * 5 * 77, 5.0);
    let op = forward();
    let xt = DeviceTensor::from_host(device, &x, &[4, 5, 77]).unwrap();
    let x64: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    if op.f32_out {
        let y = op.op().forward_f32(&xt).unwrap();
        assert_eq!(y.shape(), &[4, 5, 77]);
        op.check_output(&x64, &y.to_host().unwrap(), 77, "rank 3");
        // No in place with a wider output; an empty batch is still Ok.
        let empty = DeviceTensor::<T>::from_host(device, &[], &[0, 5]).unwrap();
        assert_eq!(op.op().forward_f32(&empty).unwrap().shape(), &[0, 5]);
        return;
    }
    let y = op.op().forward(&xt).unwrap();
    assert_eq!(y.shape(), &[4, 5, 77]);
    let got = y.to_host().unwrap();
    let want = op.expected::<T>(&x64, 77, &got);
    let c = compare(&got, &want, op.tolerance(T::DTYPE));
    assert!(c.passed(), "rank 3: {c}");

    // In place, for each family.
    for cols in [7, 500, 4000, 30_000] {
        let x: Vec<T> = rng.logits(3 * cols, 5.0);
        let t = DeviceTensor::from_host(device, &x, &[3, cols]).unwrap();
        let mut same = t.view(0, &[3, cols]).unwrap();
        op.op().forward_into(&t, &mut same).unwrap();
        let got = t.to_host().unwrap();
        let want = op.expected::<T>(
            &x.iter().map(|v| v.to_f64()).collect::<Vec<_>>(),
            cols,
            &got,
        );
        let c = compare(&got, &want, op.tolerance(T::DTYPE));
        assert!(c.passed(), "in place, {cols} columns: {c}");
    }

    // Zero rows: Ok, nothing launched, nothing written.
    let empty = DeviceTensor::<T>::from_host(device, &[], &[0, 5]).unwrap();
    let mut out = DeviceTensor::<T>::from_host(device, &[], &[0, 5]).unwrap();
    op.op().forward_into(&empty, &mut out).unwrap();
    assert_eq!(cuda_softmax::softmax(&empty).unwrap().shape(), &[0, 5]);
}

/// Checks each (rows, cols) shape twice: with aligned views, and with views shifted by
/// `shift` = (x offset, y offset) elements.
fn check_shapes<T: Element>(
    device: &Device,
    rng: &mut Rng,
    shapes: impl IntoIterator<Item = (usize, usize)>,
    shift: (usize, usize),
    scale: f64,
    what: &str,
) {
    for (rows, cols) in shapes {
        let x: Vec<T> = rng.logits(rows * cols, scale);
        check_case(device, &x, rows, cols, ALIGNED, what);
        let shifted = Layout {
            x_offset: shift.0,
            y_offset: shift.1,
        };
        check_case(device, &x, rows, cols, shifted, what);
    }
}

/// The longest row the block family holds in shared memory on this device.
fn block_family_max_cols<T: Element>(device: &Device) -> usize {
    cuda_softmax::tools::planner::block_family_max_cols(T::DTYPE, &device.limits())
}

/// One small case per warp configuration and per block family, aligned and misaligned: every
/// entry point the planner can reach, cheaply (for sanitizer runs).
pub fn family_sweep<T: Element>(device: &Device, rng: &mut Rng) {
    let short = [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 700, 1024, 1100, 1400, 1700, 2048, 2049, 5000, 16384,
    ];
    let sm = device.limits().sm_count as usize;
    let block_max = block_family_max_cols::<T>(device);
    // Around the end of the block family: its longest row with a row per SM, then one column
    // more (online with a row per SM, split-row with 2 rows).
    let shapes = short.into_iter().map(|c| (2, c)).chain([
        (sm, block_max),
        (sm, block_max + 1),
        (2, block_max + 1),
    ]);
    check_shapes::<T>(device, rng, shapes, (1, 1), 3.0, "family sweep");
    warp_shape_bounds::<T>(device, rng);
}

/// Every warp kernel at the shortest and the longest row the planner gives it, with a row count
/// that leaves groups past the last row: the kernels load the packs every lane holds in the
/// shortest row without a bounds compare, so a planner that gave them shorter rows, or a kernel
/// that assumed longer ones, reads and writes past the row here.
pub fn warp_shape_bounds<T: Element>(device: &Device, rng: &mut Rng) {
    let lengths = KernelConfig::all()
        .into_iter()
        .filter(|k| k.dtype == T::DTYPE)
        .filter_map(|k| k.warp_row_lengths());
    // The shortest row a vector kernel gets is the shortest whole number of packs.
    let v = T::DTYPE.vector_width();
    let mut cols: Vec<usize> = lengths
        .flat_map(|r| [*r.start(), r.start().next_multiple_of(v), *r.end()])
        .collect();
    cols.sort_unstable();
    cols.dedup();
    let shapes = cols.into_iter().map(|c| (3, c));
    check_shapes::<T>(device, rng, shapes, (1, 1), 3.0, "warp shape bounds");
}

/// Long rows through both long-row paths: split-row (few rows) and online (a row per SM).
pub fn long_rows<T: Element>(device: &Device, rng: &mut Rng) {
    let sm = device.limits().sm_count as usize;
    let shapes = [
        (1, 16384),
        (1, 100_003),
        (5, 65537),
        (sm, block_family_max_cols::<T>(device) + 3),
    ];
    check_shapes::<T>(device, rng, shapes, (3, 6), 10.0, "long rows");
}

/// The single launch the planner picks for `rows x cols` of `T` in `layout` on `device`
/// (buffers start 256-byte aligned on both backends), and the rows one block covers per turn
/// of its grid loop.
fn planned_stage<T: Element>(
    device: &Device,
    rows: usize,
    cols: usize,
    layout: Layout,
) -> (Stage, usize) {
    let aligned = |offset: usize| (offset * T::DTYPE.size_bytes()).is_multiple_of(16);
    let problem = SoftmaxProblem {
        op: cuda_softmax::tools::planner::Op::Softmax,
        rows,
        cols,
        dtype: T::DTYPE,
        aligned16: aligned(layout.x_offset) && aligned(layout.y_offset),
    };
    let plan = plan_softmax(&problem, &device.limits());
    assert_eq!(
        plan.stages.len(),
        1,
        "expected a single-kernel plan: {plan:?}"
    );
    let stage = plan.stages[0];
    let rows_per_block = match stage.kernel.family {
        Family::Warp { width, .. } => (stage.block / 32 * (32 / width)) as usize,
        _ => 1,
    };
    (stage, rows_per_block)
}

/// The most blocks the planner gives a single-kernel launch on `device`: a row count far above
/// it gets exactly that many.
fn grid_cap(device: &Device) -> usize {
    let (stage, _) = planned_stage::<f32>(device, 1 << 40, 4097, ALIGNED);
    assert!(matches!(stage.kernel.family, Family::Block { .. }));
    stage.grid.0 as usize
}

/// Cases with more rows than the grid covers in one pass, so that blocks (or warps) loop over
/// rows: a dropped end-of-row barrier or a wrong row stride shows. Each case asserts that the
/// planner really makes its blocks loop, so that a planner change cannot quietly end the
/// coverage; on the emulator also that the launch that ran had the planned kernel and grid, and
/// moved each row exactly once (a stride that revisits rows gives right values).
///
/// Row counts follow the device's grid cap (256 blocks on the emulator; 4224 on a 132-SM GPU,
/// where the online case is 4228 x 58113, about 1 GB of f32 per tensor).
pub fn grid_loops<T: Element>(device: &Device, rng: &mut Rng) {
    let cap = grid_cap(device);
    let block_max = block_family_max_cols::<T>(device);
    let is_warp = |f: &Family| matches!(f, Family::Warp { .. });
    let is_block = |f: &Family| matches!(f, Family::Block { .. });
    let is_online = |f: &Family| matches!(f, Family::Online { .. });
    let layouts = |pairs: &[(usize, usize)]| -> Vec<Layout> {
        pairs
            .iter()
            .map(|&(x_offset, y_offset)| Layout { x_offset, y_offset })
            .collect()
    };
    type Case = (usize, usize, Vec<Layout>, fn(&Family) -> bool);
    let mut cases: Vec<Case> = vec![
        // Block family (row in shared memory), 128 threads: 300 x 2049 on the emulator. x and y
        // misaligned differently, so a thread's loads and stores touch different columns of the
        // shared row: a missing end-of-row barrier lets the next row overwrite unread values.
        (cap + 44, 2049, layouts(&[(3, 6), (1, 0)]), is_block),
        // Block family, 512 (f32) or 256 (f16/bf16) threads: 300 x 8200 on the emulator.
        (cap + 44, 8200, layouts(&[(2, 5)]), is_block),
        // Online family (row too long for shared memory): 260 x 24577 on the emulator.
        (cap + 4, block_max + 257, layouts(&[(3, 6)]), is_online),
    ];
    // The warp family at every row width (1..16 lanes per row, then a warp per row, scalar and
    // 16-byte access): more rows than the grid's warps hold, ending in a partly filled block.
    for cols in [1, 2, 3, 7, 13, 33, 64] {
        let (_, rows_per_block) = planned_stage::<T>(device, cap, cols, ALIGNED);
        let rows = cap * rows_per_block + 2 * rows_per_block + 3;
        cases.push((rows, cols, layouts(&[(0, 0), (1, 1)]), is_warp));
    }
    for (rows, cols, layouts, family) in cases {
        for layout in layouts {
            let (stage, rows_per_block) = planned_stage::<T>(device, rows, cols, layout);
            assert!(family(&stage.kernel.family), "{rows}x{cols}: {stage:?}");
            let grid = stage.grid.0 as usize;
            assert!(
                rows > grid * rows_per_block,
                "{rows}x{cols} {layout:?}: the grid ({grid} blocks of {rows_per_block} rows) \
                 covers every row in one pass, so nothing loops: {stage:?}"
            );
            let x: Vec<T> = rng.logits(rows * cols, 8.0);
            check_case(device, &x, rows, cols, layout, "grid loop");
            if let Some(stats) = device.last_launch_stats() {
                let what = format!("{rows}x{cols} {layout:?}: {}", stats.kernel);
                assert_eq!(stats.kernel, stage.kernel.name(), "{what}");
                let threads = grid as u64 * stage.block as u64;
                assert_eq!(stats.threads, threads, "{what}: threads");
                // Each row once: a row stride that visits rows twice (blockDim instead of
                // gridDim, when the block is smaller than the grid) gives right values but not
                // this traffic. The online family reads its rows twice.
                let bytes = (rows * cols * T::DTYPE.size_bytes()) as u64;
                let reads = if is_online(&stage.kernel.family) {
                    2
                } else {
                    1
                };
                assert_eq!(stats.kernel_bytes_written, bytes, "{what}: bytes written");
                assert_eq!(stats.kernel_bytes_read, reads * bytes, "{what}: bytes read");
            }
        }
    }
}

/// Few long rows share the device's split-row workspace, allocated once: repeated split-row
/// calls (fresh inputs each, checked against the reference; the workspace keeps what the last
/// call left in it), smaller ones and other families in between allocate no workspace again.
pub fn split_workspace_reused<T: Element>(device: &Device, rng: &mut Rng) {
    let limits = device.limits();
    let cols = cuda_softmax::tools::planner::SPLIT_MIN_COLS + 5;
    let floats = |rows| {
        let problem = SoftmaxProblem {
            op: cuda_softmax::tools::planner::Op::Softmax,
            rows,
            cols,
            dtype: T::DTYPE,
            aligned16: true,
        };
        plan_softmax(&problem, &limits).workspace_floats
    };
    let most = (limits.sm_count as usize).saturating_sub(1).max(1);
    assert!(
        floats(most) > 0 && floats(1) > 0,
        "{most} x {cols} is not split-row"
    );
    let before = device.split_workspace_allocations();
    let x: Vec<T> = rng.logits(most * cols, 10.0);
    check_case(
        device,
        &x,
        most,
        cols,
        ALIGNED,
        "split-row workspace, first call",
    );
    let allocated = device.split_workspace_allocations();
    assert!(
        allocated - before <= 1,
        "one call allocated {} workspaces",
        allocated - before
    );
    assert!(allocated >= 1, "a split-row call ran without a workspace");
    let capacity = device.split_workspace_capacity();
    assert!(capacity >= floats(most), "workspace of {capacity} floats");
    for (rows, cols, what) in [
        (most, cols, "split-row workspace, same shape again"),
        (1, cols, "split-row workspace, fewer rows"),
        (3, 100, "split-row workspace, a warp-family call between"),
        (most, cols, "split-row workspace, third call"),
    ] {
        let x: Vec<T> = rng.logits(rows * cols, 10.0);
        check_case(device, &x, rows, cols, ALIGNED, what);
        assert_eq!(
            device.split_workspace_allocations(),
            allocated,
            "{what}: a repeated call allocated a workspace again"
        );
        assert_eq!(device.split_workspace_capacity(), capacity, "{what}");
    }
}

/// The whole suite for one dtype on one device.
pub fn full_suite<T: Element>(device: &Device, test: &str) {
    let mut rng = seeded_rng(test);
    edge_shapes::<T>(device, &mut rng);
    huge_row::<T>(device, &mut rng);
    long_rows::<T>(device, &mut rng);
    many_rows::<T>(device, &mut rng);
    grid_loops::<T>(device, &mut rng);
    misaligned_views::<T>(device, &mut rng);
    special_values::<T>(device, &mut rng);
    shapes_and_in_place::<T>(device, &mut rng);
    split_workspace_reused::<T>(device, &mut rng);
}
