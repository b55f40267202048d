//! The storage-rounding check of the correctness suite (`common::check_storage_rounding`) tells
//! correctly rounded f16/bf16 outputs from the near misses the per-element tolerances let
//! through. Synthetic outputs, built on the host from the f64 reference, stand in for kernels:
//! - correct: the reference rounded once to nearest even, and a host model of the kernels' f32
//!   arithmetic rounded once when stored: both must pass;
//! - truncation instead of round-to-nearest-even (bf16: the f32 with its low 16 bits cleared);
//! - 1/sum rounded to the storage type before the multiply;
//! - the exponentials rounded to the storage type before they are normalized:
//!   each must fail.

mod common;

use common::{RoundingStats, check_storage_rounding, rounding_stats};
use cuda_softmax::tools::check::{Rng, Tolerance, compare};
use cuda_softmax::tools::reference;
use cuda_softmax::{Element, bf16, f16};

/// Fixed seeds, so that the outcome does not depend on the run.
const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];

/// (rows, cols, logit scale): shapes like the suite's, multi-row and single-row.
const SHAPES: [(usize, usize, f64); 6] = [
    (301, 7, 8.0),
    (37, 1024, 8.0),
    (9, 3000, 8.0),
    (2, 8003, 10.0),
    (40, 2049, 8.0),
    (1, 16384, 10.0),
];

/// A storage type that can also be rounded toward zero (the truncation mutant).
trait Storage: Element {
    fn truncate(v: f64) -> Self;
}

impl Storage for bf16 {
    /// What a bf16 store that drops the low half of the f32 produces.
    fn truncate(v: f64) -> Self {
        bf16::from_bits(((v as f32).to_bits() >> 16) as u16)
    }
}

impl Storage for f16 {
    /// Round to nearest, then one step toward zero where that rounded away from zero.
    fn truncate(v: f64) -> Self {
        let r = f16::from_f64(v);
        if r.to_f64().abs() > v.abs() {
            f16::from_bits(r.to_bits() - 1)
        } else {
            r
        }
    }
}

/// One case: the logits (widened from T) and their f64 reference.
struct Case {
    rows: usize,
    cols: usize,
    x: Vec<f64>,
    want: Vec<f64>,
}

fn cases<T: Element>() -> Vec<Case> {
    let mut out = Vec::new();
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        for (rows, cols, scale) in SHAPES {
            let x: Vec<f64> = rng
                .logits::<T>(rows * cols, scale)
                .iter()
                .map(|v| v.to_f64())
                .collect();
            let want = reference::softmax_rows(&x, cols);
            out.push(Case {
                rows,
                cols,
                x,
                want,
            });
        }
    }
    out
}

/// Softmax in f64 with hooks on the exponentials and on 1/sum, rounded once more when stored.
fn softmax_with<T: Element>(
    c: &Case,
    exp_hook: impl Fn(f64) -> f64,
    inv_hook: impl Fn(f64) -> f64,
) -> Vec<T> {
    let mut y = Vec::with_capacity(c.x.len());
    for row in c.x.chunks_exact(c.cols) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
        let inv = inv_hook(1.0 / e.iter().sum::<f64>());
        y.extend(e.iter().map(|&e| T::from_f64(exp_hook(e) * inv)));
    }
    y
}

/// The kernels' arithmetic on the host: f32 throughout (exp as exp2 of a scaled difference,
/// a plain f32 sum), one rounding to T at the store.
fn f32_model<T: Element>(c: &Case) -> Vec<T> {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let mut y = Vec::with_capacity(c.x.len());
    for row in c.x.chunks_exact(c.cols) {
        let row: Vec<f32> = row.iter().map(|&v| v as f32).collect();
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|&v| ((v - m) * LOG2E).exp2()).collect();
        let inv = 1.0 / e.iter().sum::<f32>();
        y.extend(e.iter().map(|&e| T::from_f64((e * inv) as f64)));
    }
    y
}

/// Runs the check on every case's synthetic output; returns (case label, stats, passed).
fn judge<T: Element>(
    what: &str,
    make: impl Fn(&Case) -> Vec<T>,
) -> Vec<(String, RoundingStats, bool)> {
    cases::<T>()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let got = make(c);
            // Every mutant is within the suite's per-element tolerance: only the rounding
            // check can catch it.
            let cmp = compare(&got, &c.want, Tolerance::softmax(T::DTYPE));
            assert!(cmp.passed(), "{what}: tolerance check failed: {cmp}");
            let label = format!(
                "{} {what} seed {} [{}x{}]",
                T::DTYPE.name(),
                SEEDS[i / SHAPES.len()],
                c.rows,
                c.cols
            );
            let stats = rounding_stats(&got, &c.want, c.cols);
            let verdict = check_storage_rounding(&got, &c.want, c.cols);
            println!("{label}: {stats}");
            (label, stats, verdict.is_ok())
        })
        .collect()
}

fn assert_all_pass(results: &[(String, RoundingStats, bool)]) {
    for (label, stats, passed) in results {
        assert!(passed, "{label}: correct outputs rejected: {stats}");
    }
}

fn assert_all_fail(results: &[(String, RoundingStats, bool)]) {
    for (label, stats, passed) in results {
        assert!(!passed, "{label}: mutant accepted: {stats}");
    }
}

fn correct<T: Storage>() {
    assert_all_pass(&judge::<T>("rounded once", |c| {
        c.want.iter().map(|&w| T::from_f64(w)).collect()
    }));
    assert_all_pass(&judge::<T>("f32 model", f32_model::<T>));
}

#[test]
fn correctly_rounded_outputs_pass() {
    correct::<f16>();
    correct::<bf16>();
}

#[test]
fn truncated_outputs_fail() {
    assert_all_fail(&judge::<bf16>("truncated", |c| {
        c.want.iter().map(|&w| bf16::truncate(w)).collect()
    }));
    assert_all_fail(&judge::<f16>("truncated", |c| {
        c.want.iter().map(|&w| f16::truncate(w)).collect()
    }));
}

fn reciprocal_rounded<T: Storage>() {
    let round = |v: f64| T::from_f64(v).to_f64();
    assert_all_fail(&judge::<T>("1/sum rounded", |c| {
        softmax_with::<T>(c, |e| e, round)
    }));
}

#[test]
fn reciprocal_rounded_to_storage_fails() {
    reciprocal_rounded::<f16>();
    reciprocal_rounded::<bf16>();
}

fn exponentials_rounded<T: Storage>() {
    let round = |v: f64| T::from_f64(v).to_f64();
    assert_all_fail(&judge::<T>("exp rounded", |c| {
        softmax_with::<T>(c, round, |inv| inv)
    }));
}

#[test]
fn intermediate_rounded_to_storage_fails() {
    exponentials_rounded::<f16>();
    exponentials_rounded::<bf16>();
}

/// Cases too small to judge are let through, whatever they hold.
#[test]
fn small_cases_are_not_judged() {
    let want = reference::softmax_rows(&[0.1, 0.7, -0.3, 0.2, 0.9, -1.0], 3);
    let truncated: Vec<bf16> = want.iter().map(|&w| bf16::truncate(w)).collect();
    let s = check_storage_rounding(&truncated, &want, 3).expect("too few values to judge");
    assert_eq!(s.compared, 6);
}
