//! f64 CPU reference for fused softmax cross-entropy.
//!
//! Semantics are PyTorch's `F.cross_entropy` (class weights, `ignore_index`,
//! weighted label smoothing, `none`/`sum`/`mean`) extended with a z-loss term
//! `z * lse^2` and logit softcapping `c * tanh(x / c)`. Everything is f64 so it
//! can judge the f32 GPU kernels. Next to every value we return a "scale": the
//! sum of the absolute values of the terms that were added up to make it. Any
//! implementation's rounding error is proportional to that sum (not to the
//! possibly cancelled value), so tests use `|got - want| <= rtol * scale`.
//!
//! A valid row's loss is a list of terms `c_k * (lse - x~_k)` (the target's and,
//! with smoothing, one a class) plus `z * lse^2`; a term whose coefficient is
//! exactly 0 is not in the list. The forward sums the list and the backward
//! differentiates the same list term by term, independently of how a kernel
//! factors the gradient: a NaN or infinite weight that only a left-out term
//! would multiply (a class no row targets, without smoothing) changes nothing.

use crate::Reduction;

/// Options, mirroring the GPU op's builder.
#[derive(Debug, Clone, Copy)]
pub struct CeOptions<'a> {
    /// Rows whose target equals this contribute nothing (PyTorch default `-100`).
    pub ignore_index: Option<i64>,
    /// Label smoothing `e` in `[0, 1]`.
    pub label_smoothing: f64,
    /// z-loss coefficient `z >= 0`: each valid row adds `z * lse^2` (unweighted).
    pub z_loss: f64,
    /// Softcap `c > 0`: logits become `c * tanh(x / c)` before everything else.
    pub softcap: Option<f64>,
    /// Per-class weights, length `V` (all 1 when `None`).
    pub weight: Option<&'a [f64]>,
    /// How the per-row losses are combined.
    pub reduction: Reduction,
}

impl Default for CeOptions<'_> {
    /// PyTorch's defaults: `ignore_index = -100`, no smoothing, mean reduction.
    fn default() -> Self {
        CeOptions {
            ignore_index: Some(-100),
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            weight: None,
            reduction: Reduction::Mean,
        }
    }
}

/// Result of [`cross_entropy_forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct CeForward {
    /// `[N]` for `Reduction::None`, `[1]` otherwise; includes the z term.
    pub loss: Vec<f64>,
    /// Same shape as `loss`: the z term alone.
    pub z_loss: Vec<f64>,
    /// `[N]`: logsumexp of each row's (softcapped) logits, for every row.
    pub lse: Vec<f64>,
    /// Same shape as `loss`: sum of |terms| making up each loss value.
    pub loss_scale: Vec<f64>,
    /// Same shape as `z_loss`: sum of |terms| making up each z value.
    pub z_scale: Vec<f64>,
}

/// Result of [`cross_entropy_backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct CeGradient {
    /// `[N * V]`: dL/dlogits with respect to the raw (pre-softcap) logits.
    pub grad: Vec<f64>,
    /// `[N * V]`: `|softcap'| * sum |terms|` of each element of `grad`.
    pub grad_scale: Vec<f64>,
}

/// What a row's target makes of it.
#[derive(Debug, Clone, Copy)]
enum Row {
    Ignored,
    Invalid,
    Valid(usize),
}

fn classify(t: i64, v: usize, o: &CeOptions) -> Row {
    // The ignore check comes first: ignore_index is usually out of range.
    if o.ignore_index == Some(t) {
        return Row::Ignored;
    }
    match usize::try_from(t) {
        Ok(t) if t < v => Row::Valid(t),
        _ => Row::Invalid,
    }
}

fn class_weight(o: &CeOptions, j: usize) -> f64 {
    o.weight.map_or(1.0, |w| w[j])
}

/// One term `c * (lse - x~_k)` of a valid row's loss: the target's (`k = t`,
/// `c = (1 - e) w_t`) or class `j`'s smoothing term (`k = j`, `c = (e / V) w_j`).
#[derive(Debug, Clone, Copy)]
struct Term {
    c: f64,
    k: usize,
}

/// The coefficient `a * b` of a term, or `None` when a factor is exactly 0: the
/// term is then not part of the loss, so neither a NaN or infinite other factor
/// (`0 * NaN`) nor an infinite logit it would multiply (`0 * inf`) reaches the
/// loss or its gradient.
fn coefficient(a: f64, b: f64) -> Option<f64> {
    (a != 0.0 && b != 0.0).then_some(a * b)
}

/// The terms of a valid row with target `t`, zero coefficients left out: the
/// one list the loss and its gradient are both built from.
fn row_terms(v: usize, t: usize, o: &CeOptions) -> Vec<Term> {
    let e = o.label_smoothing;
    let target = coefficient(1.0 - e, class_weight(o, t)).map(|c| Term { c, k: t });
    let k = e / v as f64;
    let smoothing =
        (0..v).filter_map(|j| coefficient(k, class_weight(o, j)).map(|c| Term { c, k: j }));
    target.into_iter().chain(smoothing).collect()
}

/// A valid row's `z * lse^2`, left out (0) when `z = 0`, whatever `lse`.
fn z_term(o: &CeOptions, lse: f64) -> f64 {
    let z = o.z_loss;
    if z == 0.0 { 0.0 } else { z * lse * lse }
}

/// `d/dx~_j z lse^2 = 2 z lse p_j`: the factor `2 z lse` of `p_j`, or `None`
/// when `z = 0` (the term is left out).
fn z_derivative_factor(o: &CeOptions, lse: f64) -> Option<f64> {
    (o.z_loss != 0.0).then_some(2.0 * o.z_loss * lse)
}

/// Mean's `num / d` for a denominator `d` (D_w or D_n) when `dn` rows count.
/// Every row ignored (`dn == 0`) gives 0 rather than PyTorch's NaN, unless the
/// numerator is NaN: an invalid row must poison the reduced loss even when no
/// valid row is left to count. Rows that count but weigh 0 in total give NaN,
/// as PyTorch's 0 / 0.
fn div0(num: f64, d: f64, dn: f64) -> f64 {
    match (d == 0.0, dn == 0.0, num.is_nan()) {
        (false, _, _) => num / d,
        (true, true, false) => 0.0,
        _ => f64::NAN,
    }
}

/// The factor 1 / d of the gradient under Mean (see `div0`).
fn mean_factor(d: f64, dn: f64) -> f64 {
    match (d == 0.0, dn == 0.0) {
        (false, _) => 1.0 / d,
        (true, true) => 0.0,
        (true, false) => f64::NAN,
    }
}

/// Softcapped logits of one row with their max `m`, `s = sum exp(x~ - m)`
/// and `lse = m + ln s`.
struct Stats {
    xt: Vec<f64>,
    m: f64,
    s: f64,
    lse: f64,
}

fn row_stats(row: &[f64], o: &CeOptions) -> Stats {
    let xt: Vec<f64> = match o.softcap {
        Some(c) => row.iter().map(|&x| c * (x / c).tanh()).collect(),
        None => row.to_vec(),
    };
    // f64::max skips NaN, so NaN must be propagated by hand.
    if xt.iter().any(|x| x.is_nan()) {
        let (m, s, lse) = (f64::NAN, f64::NAN, f64::NAN);
        return Stats { xt, m, s, lse };
    }
    let m = xt.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        // exp(-inf - -inf) would be NaN; the limit of logsumexp is -inf.
        let (s, lse) = (0.0, m);
        return Stats { xt, m, s, lse };
    }
    // Shifting by the max keeps every exp in (0, 1], so nothing overflows
    // even at |x| ~ f32::MAX, and s >= 1 so ln s is benign.
    let s: f64 = xt.iter().map(|&x| (x - m).exp()).sum();
    let lse = m + s.ln();
    Stats { xt, m, s, lse }
}

/// Per-row loss parts and their scales: `[ce, ce_scale, z, z_scale]`.
type RowLoss = [f64; 4];

/// The sum of a valid row's terms (PyTorch's weighted smoothing included:
/// `(e/V) * sum_j w_j * (-log p_j)`).
fn row_loss(st: &Stats, terms: &[Term], o: &CeOptions) -> RowLoss {
    let lse = st.lse;
    let z = z_term(o, lse);
    if lse == f64::NEG_INFINITY {
        // Every class has probability 0/0; the loss is defined as +inf.
        return [f64::INFINITY, f64::INFINITY, z, z.abs()];
    }
    let (mut ce, mut ce_scale) = (0.0, 0.0);
    for &Term { c, k } in terms {
        let x = st.xt[k];
        ce += c * (lse - x);
        ce_scale += c.abs() * (lse.abs() + x.abs());
    }
    [ce, ce_scale, z, z.abs()]
}

/// A row's terms gathered for their derivatives: term `k` gives
/// `d/dx~_j c_k (lse - x~_k) = c_k (p_j - [j = k])`, so the row's sum over its
/// terms is `sum * p_j - at[j]`, with `at[j]` the coefficients of the terms on
/// class `j`; `abs_sum` and `abs_at` the same of `|c_k|`, for the scale.
struct TermSums {
    sum: f64,
    abs_sum: f64,
    at: Vec<f64>,
    abs_at: Vec<f64>,
}

impl TermSums {
    fn new(terms: &[Term], v: usize) -> Self {
        let mut s = TermSums {
            sum: 0.0,
            abs_sum: 0.0,
            at: vec![0.0; v],
            abs_at: vec![0.0; v],
        };
        for &Term { c, k } in terms {
            s.sum += c;
            s.abs_sum += c.abs();
            s.at[k] += c;
            s.abs_at[k] += c.abs();
        }
        s
    }

    /// `sum_k c_k (p_j - [j = k])` and `sum_k |c_k| (p_j + [j = k])`.
    fn derivative(&self, j: usize, p: f64) -> (f64, f64) {
        (self.sum * p - self.at[j], self.abs_sum * p + self.abs_at[j])
    }
}

/// Checks shapes and returns N.
fn check_args(logits: &[f64], v: usize, targets: &[i64], o: &CeOptions) -> usize {
    assert!(v >= 1, "V must be at least 1");
    assert_eq!(logits.len(), targets.len() * v, "logits must be [N, V]");
    if let Some(w) = o.weight {
        assert_eq!(w.len(), v, "weight must have V entries");
    }
    targets.len()
}

/// Divisors of the ce and z sums: `(D_w, D_n)` for Mean, `(1, 1)` otherwise.
/// Only valid, non-ignored rows count; invalid rows are excluded so the other
/// rows' gradients stay finite.
fn denominators(v: usize, targets: &[i64], o: &CeOptions) -> (f64, f64) {
    if o.reduction != Reduction::Mean {
        return (1.0, 1.0);
    }
    targets
        .iter()
        .fold((0.0, 0.0), |(dw, dn), &t| match classify(t, v, o) {
            Row::Valid(t) => (dw + class_weight(o, t), dn + 1.0),
            _ => (dw, dn),
        })
}

/// Forward pass: loss (with the z term), z term alone, per-row lse and scales.
pub fn cross_entropy_forward(
    logits: &[f64],
    v: usize,
    targets: &[i64],
    o: &CeOptions,
) -> CeForward {
    check_args(logits, v, targets, o);
    let mut lse = Vec::with_capacity(targets.len());
    let mut rows: Vec<RowLoss> = Vec::with_capacity(targets.len());
    for (row, &t) in logits.chunks_exact(v).zip(targets) {
        let st = row_stats(row, o);
        lse.push(st.lse);
        rows.push(match classify(t, v, o) {
            Row::Ignored => [0.0; 4],
            Row::Invalid => [f64::NAN; 4],
            Row::Valid(t) => row_loss(&st, &row_terms(v, t, o), o),
        });
    }
    // Column k of the per-row parts, reduced: [ce, ce_scale, z, z_scale].
    let part = |k: usize| -> Vec<f64> {
        let col = rows.iter().map(|r| r[k]);
        if o.reduction == Reduction::None {
            return col.collect();
        }
        let (dw, dn) = denominators(v, targets, o);
        // A (negatively weighted) divisor flips signs but scales stay magnitudes.
        let d = [dw, dw.abs(), dn, dn][k];
        vec![div0(col.sum(), d, dn)]
    };
    let add = |a: Vec<f64>, b: &[f64]| a.iter().zip(b).map(|(a, b)| a + b).collect();
    let (z_loss, z_scale) = (part(2), part(3));
    CeForward {
        loss: add(part(0), &z_loss),
        loss_scale: add(part(1), &z_scale),
        z_loss,
        lse,
        z_scale,
    }
}

/// Backward pass: gradient of `sum_i dloss_i * loss_i` with respect to the raw
/// logits. `dloss` is `[N]` for `Reduction::None`, `[1]` otherwise. Each row's
/// is the sum of its loss terms' derivatives (the same terms as the forward's),
/// times the upstream factor and the softcap's derivative.
pub fn cross_entropy_backward(
    logits: &[f64],
    v: usize,
    targets: &[i64],
    o: &CeOptions,
    dloss: &[f64],
) -> CeGradient {
    let n = check_args(logits, v, targets, o);
    let per_row = o.reduction == Reduction::None;
    assert_eq!(
        dloss.len(),
        if per_row { n } else { 1 },
        "dloss has the wrong length"
    );
    let (dw, dn) = denominators(v, targets, o);
    let mut grad = vec![0.0; n * v];
    let mut grad_scale = vec![0.0; n * v];
    let rows = logits
        .chunks_exact(v)
        .zip(grad.chunks_exact_mut(v))
        .zip(grad_scale.chunks_exact_mut(v));
    for (i, ((row, g_row), s_row)) in rows.enumerate() {
        let st = row_stats(row, o);
        let t = match classify(targets[i], v, o) {
            Row::Ignored => continue,
            Row::Valid(t) if st.lse != f64::NEG_INFINITY => t,
            // An invalid target, or an all -inf row (every p_j is 0/0).
            _ => {
                g_row.fill(f64::NAN);
                s_row.fill(f64::NAN);
                continue;
            }
        };
        let g = if per_row { dloss[i] } else { dloss[0] };
        // Zero denominators as in the forward (`div0`).
        let a_ce = g * mean_factor(dw, dn);
        let terms = TermSums::new(&row_terms(v, t, o), v);
        let zc = z_derivative_factor(o, st.lse).map_or(0.0, |f| g * mean_factor(dn, dn) * f);
        for (j, (&x, &xt)) in row.iter().zip(&st.xt).enumerate() {
            // p_j = exp(x~_j - m) / s rather than exp(x~_j - lse): lse = m + ln s
            // loses ln s entirely once |m| >> 1 (e.g. m = 1e30), while this
            // form has a relative error of a few ulps at any magnitude.
            let p = (xt - st.m).exp() / st.s;
            let (ce, ce_scale) = terms.derivative(j, p);
            let d = a_ce * ce + zc * p;
            let sc = a_ce.abs() * ce_scale + (zc * p).abs();
            // d/dx c*tanh(x/c) = 1 - tanh^2 = sech^2(x/c); sech^2 avoids the
            // cancellation of 1 - tanh^2 when tanh ~ 1, and cosh overflowing
            // to inf correctly gives 0.
            let f = match o.softcap {
                Some(c) => (x / c).cosh().powi(2).recip(),
                None => 1.0,
            };
            g_row[j] = f * d;
            s_row[j] = f.abs() * sc;
        }
    }
    CeGradient { grad, grad_scale }
}

#[cfg(test)]
mod tests {
    use super::{CeOptions, cross_entropy_backward as bwd, cross_entropy_forward as fwd};
    use crate::Reduction::{self, Mean, Sum};
    use std::f64::consts::LN_2;
    const NONE: Reduction = Reduction::None;
    const ALL: [Reduction; 3] = [NONE, Sum, Mean];
    const NI: f64 = f64::NEG_INFINITY;

    /// xorshift64* with a Box-Muller normal; enough for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (1.0 - self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
        /// Logits ~ N(0, 2^2), ~20% of targets ignored, dloss ~ N(0, 1).
        fn case(&mut self, n: usize, v: usize, r: Reduction) -> (Vec<f64>, Vec<i64>, Vec<f64>) {
            let x = (0..n * v).map(|_| 2.0 * self.normal()).collect();
            let target = |s: &mut Self| match s.uniform() < 0.2 {
                true => -100,
                false => (s.next() % v as u64) as i64,
            };
            let t = (0..n).map(|_| target(self)).collect();
            let m = if r == NONE { n } else { 1 };
            (x, t, (0..m).map(|_| self.normal()).collect())
        }
    }

    /// Options with reduction `r`, label smoothing `e` and z-loss `z`.
    fn opts<'a>(r: Reduction, e: f64, z: f64) -> CeOptions<'a> {
        let mut o = CeOptions::default();
        (o.reduction, o.label_smoothing, o.z_loss) = (r, e, z);
        o
    }

    #[track_caller]
    fn close(got: f64, want: f64, tol: f64) {
        assert!(
            (got - want).abs() <= tol,
            "got {got}, want {want}, tol {tol}"
        );
    }

    /// Checks `grad` against central differences (h = 1e-5) of `f` within
    /// 1e-6 of `scale`; the FD error itself is ~1e-10 here.
    #[track_caller]
    fn check_fd(f: impl Fn(&[f64]) -> f64, x: &[f64], grad: &[f64], scale: &[f64]) {
        let (h, mut xp) = (1e-5, x.to_vec());
        for k in 0..x.len() {
            xp[k] = x[k] + h;
            let fp = f(&xp);
            xp[k] = x[k] - h;
            let fm = f(&xp);
            xp[k] = x[k];
            close(grad[k], (fp - fm) / (2.0 * h), 1e-6 * scale[k] + 1e-9);
        }
    }

    /// `sum_i dloss_i * loss_i` (or of the z part alone): what bwd differentiates.
    fn objective(x: &[f64], v: usize, t: &[i64], o: &CeOptions, dl: &[f64], z: bool) -> f64 {
        let f = fwd(x, v, t, o);
        let l = if z { f.z_loss } else { f.loss };
        l.iter().zip(dl).map(|(l, d)| l * d).sum()
    }

    /// Option combination from the bits of `i`: smoothing, z, softcap, weights.
    fn combo(r: Reduction, i: usize, w: &[f64]) -> CeOptions<'_> {
        let mut o = opts(r, 0.1 * (i & 1) as f64, 0.05 * (i >> 1 & 1) as f64);
        o.softcap = (i & 4 != 0).then_some(2.0);
        o.weight = (i & 8 != 0).then_some(w);
        o
    }

    #[test]
    fn gradient_matches_central_differences() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Every V in {1, 2, 3, 7}, N in {1, 3, 5}, reduction and option combination.
        for k in 0..4 * 3 * 3 * 16 {
            let (v, n, r) = ([1, 2, 3, 7][k % 4], [1, 3, 5][k / 4 % 3], ALL[k / 12 % 3]);
            let w: Vec<f64> = (0..v).map(|_| 0.5 + 2.0 * rng.uniform()).collect();
            let o = combo(r, k / 36, &w);
            let (x, t, dl) = rng.case(n, v, r);
            let g = bwd(&x, v, &t, &o, &dl);
            let f = |x: &[f64]| objective(x, v, &t, &o, &dl, false);
            check_fd(f, &x, &g.grad, &g.grad_scale);
        }
    }

    #[test]
    fn z_term_is_separate_and_differentiated() {
        let (mut rng, w) = (Rng(12345), [0.7, 1.9, 1.2, 0.4]);
        for r in ALL {
            let (o, (x, t, dl)) = (combo(r, 15, &w), rng.case(6, 4, r));
            let mut o0 = o;
            o0.z_loss = 0.0;
            let (with, without) = (fwd(&x, 4, &t, &o), fwd(&x, 4, &t, &o0));
            for (i, &ti) in t.iter().enumerate().take(with.loss.len()) {
                // The ce part does not depend on z; z parts are >= 0 and within their scale.
                let ce = with.loss[i] - with.z_loss[i];
                close(ce, without.loss[i], 1e-14 * with.loss_scale[i]);
                assert!(with.z_loss[i] >= 0.0 && with.z_scale[i] >= with.z_loss[i]);
                assert_eq!(without.z_loss[i], 0.0);
                if r == NONE {
                    let want = 0.05 * with.lse[i].powi(2) * (ti != -100) as u8 as f64;
                    close(with.z_loss[i], want, 1e-15 * want);
                }
            }
            assert!(with.z_loss.iter().any(|&z| z > 0.0));
            // The z part of the gradient alone matches FD of the z loss alone.
            let (gw, g0) = (bwd(&x, 4, &t, &o, &dl), bwd(&x, 4, &t, &o0, &dl));
            let gz: Vec<f64> = gw.grad.iter().zip(&g0.grad).map(|(a, b)| a - b).collect();
            assert!(gz.iter().any(|g| g.abs() > 1e-3), "z must matter: {gz:?}");
            check_fd(
                |x| objective(x, 4, &t, &o, &dl, true),
                &x,
                &gz,
                &gw.grad_scale,
            );
        }
    }

    #[test]
    fn hand_computed_two_classes() {
        // logits [0, ln 3], target 0: sum exp = 1 + 3 = 4, lse = ln 4,
        // p = [1/4, 3/4]; ce = ln 4 - 0; grad = p - onehot = [-3/4, 3/4].
        let (x, l4, o) = ([0.0, 3f64.ln()], 2.0 * LN_2, opts(Sum, 0.0, 0.0));
        close(fwd(&x, 2, &[0], &o).loss[0], l4, 1e-15);
        assert_eq!(bwd(&x, 2, &[0], &o, &[1.0]).grad, [-0.75, 0.75]);
        // e = 0.5: ce = 0.5 (ln 4 - 0) + 0.25 ((ln 4 - 0) + (ln 4 - ln 3))
        //   = ln 4 - 0.25 ln 3; grad = p - 0.5 onehot - 0.25 = [-1/2, 1/2].
        let o = opts(Sum, 0.5, 0.0);
        close(fwd(&x, 2, &[0], &o).loss[0], l4 - 0.25 * 3f64.ln(), 1e-15);
        let g = bwd(&x, 2, &[0], &o, &[1.0]).grad;
        close(g[0], -0.5, 1e-15);
        close(g[1], 0.5, 1e-15);
        // z = 0.1, e = 0: loss = ln 4 + 0.1 ln^2 4; grad adds 0.2 ln 4 * p.
        let (o, z) = (opts(Sum, 0.0, 0.1), 0.1 * l4 * l4);
        let f = fwd(&x, 2, &[0], &o);
        close(f.z_loss[0], z, 1e-15);
        close(f.loss[0], l4 + z, 1e-15);
        close(
            bwd(&x, 2, &[0], &o, &[1.0]).grad[1],
            0.75 + 0.2 * l4 * 0.75,
            1e-15,
        );
        // Softcap c = 1, logits [0, atanh 0.5] -> x~ = [0, 0.5], target 1:
        // ce = ln(1 + e^0.5) - 0.5; grad = [p0 * 1, (p1 - 1) * (1 - 0.5^2)].
        let (mut o, x, s) = (
            opts(Sum, 0.0, 0.0),
            [0.0, 0.5f64.atanh()],
            1.0 + 0.5f64.exp(),
        );
        o.softcap = Some(1.0);
        close(fwd(&x, 2, &[1], &o).loss[0], s.ln() - 0.5, 1e-15);
        let g = bwd(&x, 2, &[1], &o, &[1.0]).grad;
        close(g[0], 1.0 / s, 1e-15);
        close(g[1], -0.75 / s, 1e-15);
    }

    #[test]
    fn hand_computed_weighted_smoothing_three_classes() {
        // w = [1, 2, 3]. Row A: [0, 0, ln 2], t = 2: sum exp = 4, p = [1/4, 1/4, 1/2],
        // -log p = [ln 4, ln 4, ln 2]. Row B: [0, 0, 0], t = 0: -log p = ln 3.
        // e = 0: Mean = (3 ln 2 + 1 ln 3) / (3 + 1)    (PyTorch: / sum w_t).
        // e = 0.3: A = 0.7*3 ln 2 + 0.1 (1 ln 4 + 2 ln 4 + 3 ln 2) = 3 ln 2,
        //          B = 0.7*1 ln 3 + 0.1 (1 + 2 + 3) ln 3 = 1.3 ln 3; Mean / 4.
        let (x, t, w) = ([0.0, 0.0, LN_2, 0.0, 0.0, 0.0], [2, 0], [1.0, 2.0, 3.0]);
        let (mut o, l3) = (opts(Mean, 0.0, 0.0), 3f64.ln());
        o.weight = Some(&w);
        close(fwd(&x, 3, &t, &o).loss[0], (3.0 * LN_2 + l3) / 4.0, 1e-15);
        o.label_smoothing = 0.3;
        close(
            fwd(&x, 3, &t, &o).loss[0],
            (3.0 * LN_2 + 1.3 * l3) / 4.0,
            1e-15,
        );
        // Sum, row A: grad = (2.1 + 0.1*6) p - [0, 0, 2.1] - 0.1 w = [0.575, 0.475, -1.05].
        o.reduction = Sum;
        let g = bwd(&x, 3, &t, &o, &[1.0]).grad;
        (0..3).for_each(|j| close(g[j], [0.575, 0.475, -1.05][j], 1e-15));
    }

    #[test]
    fn uniform_logits_give_ln_v() {
        // Every -log p_j = ln V, so both the target and the smoothing parts
        // are ln V: loss = (1 - e) ln V + e ln V for any target and e.
        for k in 0..6 * 4 * 3 {
            let (v, e, c) = (
                k % 6 + 1,
                [0.0, 0.1, 0.5, 1.0][k / 6 % 4],
                [0.0, -7.5, 1e3][k / 24],
            );
            let t: Vec<i64> = (0..v as i64).collect();
            let f = fwd(&vec![c; v * v], v, &t, &opts(NONE, e, 0.0));
            for (l, s) in f.loss.iter().zip(&f.loss_scale) {
                close(*l, (v as f64).ln(), 1e-14 * s);
            }
        }
    }

    #[test]
    fn all_ignored_rows_give_zero() {
        let x = [1.0, -2.0, 0.5, 3.0, 0.0, 1.0];
        for r in [Sum, Mean] {
            let o = opts(r, 0.1, 0.05);
            let f = fwd(&x, 3, &[-100, -100], &o);
            assert_eq!((f.loss, f.z_loss), (vec![0.0], vec![0.0]));
            assert_eq!(bwd(&x, 3, &[-100, -100], &o, &[1.0]).grad, [0.0; 6]);
        }
    }

    #[test]
    fn invalid_targets_are_nan_and_excluded_from_mean() {
        let x: Vec<f64> = (0..15).map(|k| (k as f64 * 0.7).sin() * 3.0).collect();
        let (t, mut o) = ([0, -1, 3, i64::MAX, 2], opts(NONE, 0.0, 0.05));
        for (i, l) in fwd(&x, 3, &t, &o).loss.iter().enumerate() {
            assert_eq!(l.is_nan(), (1..4).contains(&i), "row {i}: {l}");
        }
        o.reduction = Mean;
        assert!(fwd(&x, 3, &t, &o).loss[0].is_nan());
        // Rows 0 and 4 get exactly what a batch of just them would get.
        let g = bwd(&x, 3, &t, &o, &[1.0]).grad;
        let xs: Vec<f64> = x[..3].iter().chain(&x[12..]).copied().collect();
        let gs = bwd(&xs, 3, &[0, 2], &o, &[1.0]).grad;
        assert_eq!((&g[..3], &g[12..]), (&gs[..3], &gs[3..]));
        assert!(g[3..12].iter().all(|g| g.is_nan()));
        // Without an ignore_index, -100 is just out of range.
        o.ignore_index = None;
        assert!(fwd(&x[..3], 3, &[-100], &o).loss[0].is_nan());
    }

    #[test]
    fn all_neg_inf_rows() {
        let x = [NI, NI, NI, 0.0, 1.0, 2.0];
        for z in [0.0, 0.05] {
            let o = opts(NONE, 0.1, z);
            let f = fwd(&x, 3, &[1, 0], &o);
            assert_eq!((f.lse[0], f.loss[0]), (NI, f64::INFINITY));
            assert_eq!(f.z_loss[0], if z > 0.0 { f64::INFINITY } else { 0.0 });
            let g = bwd(&x, 3, &[1, 0], &o, &[1.0, 1.0]).grad;
            assert!(g[..3].iter().all(|g| g.is_nan()) && g[3..].iter().all(|g| g.is_finite()));
            // Ignored, the same row is simply 0.
            let f = fwd(&x, 3, &[-100, 0], &o);
            assert_eq!((f.lse[0], f.loss[0], f.z_loss[0]), (NI, 0.0, 0.0));
            assert_eq!(bwd(&x, 3, &[-100, 0], &o, &[1.0, 1.0]).grad[..3], [0.0; 3]);
        }
    }

    #[test]
    fn neg_inf_target_logit_gives_inf_loss_finite_grad() {
        let x = [NI, 0.0, LN_2];
        for e in [0.0, 0.2] {
            let o = opts(Sum, e, 0.0);
            assert_eq!(fwd(&x, 3, &[0], &o).loss[0], f64::INFINITY);
            // p = [0, 1/3, 2/3]; grad = p - (1 - e) onehot - e/3.
            let g = bwd(&x, 3, &[0], &o, &[1.0]).grad;
            let want = [-1.0 + e - e / 3.0, 1.0 / 3.0 - e / 3.0, 2.0 / 3.0 - e / 3.0];
            (0..3).for_each(|j| close(g[j], want[j], 1e-15));
        }
    }

    #[test]
    fn empty_batch() {
        for r in ALL {
            let (o, m) = (opts(r, 0.0, 0.0), if r == NONE { 0 } else { 1 });
            let f = fwd(&[], 4, &[], &o);
            assert_eq!(
                (f.loss, f.z_loss, f.lse),
                (vec![0.0; m], vec![0.0; m], vec![])
            );
            assert!(bwd(&[], 4, &[], &o, &vec![1.0; m]).grad.is_empty());
        }
    }

    #[test]
    fn huge_logits_do_not_overflow() {
        let big = f32::MAX as f64;
        let x = [big, -big, 1e38, -1e38, -big, -big, -3e38, 3e38];
        let o = opts(Mean, 0.1, 0.05);
        let f = fwd(&x, 4, &[1, 3], &o);
        assert_eq!((f.lse[0], f.lse[1]), (big, 3e38));
        assert!(f.loss[0].is_finite() && f.loss_scale[0].is_finite());
        let g = bwd(&x, 4, &[1, 3], &o, &[1.0]);
        assert!(g.grad.iter().chain(&g.grad_scale).all(|g| g.is_finite()));
        // Plain Sum, row 0: p = onehot(0), so grad = [1, -1, 0, 0] exactly.
        let g = bwd(&x[..4], 4, &[1], &opts(Sum, 0.0, 0.0), &[1.0]).grad;
        assert_eq!(g, [1.0, -1.0, 0.0, 0.0]);
    }

    #[test]
    fn probabilities_accurate_at_large_offset() {
        // lse = 1e30 + ln 2 rounds to 1e30, so exp(x - lse) would give p = 1.
        let g = bwd(&[1e30, 1e30], 2, &[0], &opts(Sum, 0.0, 0.0), &[1.0]).grad;
        assert_eq!(g, [-0.5, 0.5]);
    }

    /// Without smoothing a weight enters only the target's term: a NaN or
    /// infinite weight (or f64::MAX, whose sum with another overflows) on a
    /// class no row targets gives exactly the loss and gradient of a weight of
    /// 1 there, finite and matching central differences.
    #[test]
    fn weights_of_left_out_terms_change_nothing() {
        let (mut rng, v, t) = (Rng(4242), 5, [0, 4, -100, 3, 1, 3]);
        for (r, cap) in [(NONE, None), (Sum, Some(3.0)), (Mean, None)] {
            let (x, _, dl) = rng.case(t.len(), v, r);
            let run = |w2: f64| {
                let w = [0.7, 1.3, w2, 2.0, 0.4];
                let mut o = opts(r, 0.0, 0.05);
                (o.softcap, o.weight) = (cap, Some(&w[..]));
                let g = bwd(&x, v, &t, &o, &dl);
                check_fd(
                    |x| objective(x, v, &t, &o, &dl, false),
                    &x,
                    &g.grad,
                    &g.grad_scale,
                );
                (fwd(&x, v, &t, &o).loss, g)
            };
            let (loss, g) = run(1.0);
            assert!(g.grad.iter().chain(&g.grad_scale).all(|g| g.is_finite()));
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX] {
                assert_eq!(run(bad), (loss.clone(), g.clone()), "weight {bad}, {r:?}");
            }
        }
    }

    /// Finite weights whose sum overflows f32 (two of 3e38), with and without
    /// smoothing, and f64::MAX ones (whose sum overflows f64) without: a finite
    /// gradient that matches central differences.
    #[test]
    fn weights_whose_sum_overflows() {
        let (mut rng, v, t) = (Rng(31), 4, [2, 3, 2]);
        for (big, e) in [(3e38, 0.0), (3e38, 0.1), (f64::MAX, 0.0)] {
            let w = [big, big, 1.0, 2.0];
            for r in ALL {
                let (x, _, dl) = rng.case(t.len(), v, r);
                let mut o = opts(r, e, 0.0);
                o.weight = Some(&w);
                let g = bwd(&x, v, &t, &o, &dl);
                let all_finite = g.grad.iter().chain(&g.grad_scale).all(|g| g.is_finite());
                assert!(all_finite, "{big} {e} {r:?}: {:?}", g.grad);
                check_fd(
                    |x| objective(x, v, &t, &o, &dl, false),
                    &x,
                    &g.grad,
                    &g.grad_scale,
                );
            }
        }
    }

    /// With smoothing every weight is used: a NaN weight on a class no row
    /// targets makes every valid row's loss and gradient NaN (ignored rows stay 0).
    #[test]
    fn smoothing_uses_every_weight() {
        let (mut rng, v, t) = (Rng(5), 4, [0, -100, 3]);
        let w = [1.0, f64::NAN, 0.5, 2.0];
        let (x, _, dl) = rng.case(t.len(), v, NONE);
        let mut o = opts(NONE, 0.1, 0.0);
        o.weight = Some(&w);
        let loss = fwd(&x, v, &t, &o).loss;
        assert!(
            loss[0].is_nan() && loss[1] == 0.0 && loss[2].is_nan(),
            "{loss:?}"
        );
        let g = bwd(&x, v, &t, &o, &dl).grad;
        assert!(g[..4].iter().chain(&g[8..]).all(|g| g.is_nan()), "{g:?}");
        assert_eq!(g[4..8], [0.0; 4]);
    }

    #[test]
    fn mean_divides_ce_by_weight_sum_and_z_by_count() {
        let (mut rng, w, t) = (Rng(777), [2.0, 0.5, 1.25], [0, -100, 2, 1]);
        let x: Vec<f64> = (0..12).map(|_| rng.normal()).collect();
        let (dw, dn) = (2.0 + 1.25 + 0.5, 3.0);
        let mut o = opts(Mean, 0.1, 0.05);
        o.weight = Some(&w);
        let rows = fwd(
            &x,
            3,
            &t,
            &CeOptions {
                reduction: NONE,
                ..o
            },
        );
        let ce: f64 = rows.loss.iter().zip(&rows.z_loss).map(|(l, z)| l - z).sum();
        let z: f64 = rows.z_loss.iter().sum();
        let f = fwd(&x, 3, &t, &o);
        close(f.z_loss[0], z / dn, 1e-15);
        close(f.loss[0], ce / dw + z / dn, 1e-14);
        // The gradient is linear in the two parts: the ce part at dloss / D_w
        // plus the z part (z minus no z) at dloss / D_n, each per row.
        let none = |z: f64, d: f64| {
            let (mut o, dl) = (o, [d; 4]);
            (o.z_loss, o.reduction) = (z, NONE);
            bwd(&x, 3, &t, &o, &dl).grad
        };
        let (ce_g, z_g, z0_g) = (
            none(0.0, 0.7 / dw),
            none(0.05, 0.7 / dn),
            none(0.0, 0.7 / dn),
        );
        let g = bwd(&x, 3, &t, &o, &[0.7]).grad;
        (0..12).for_each(|k| close(g[k], ce_g[k] + z_g[k] - z0_g[k], 1e-14));
    }
}
