//! f64 CPU reference implementations, the ground truth every kernel is checked against.
//! They follow the numerics policy of docs/architecture.md exactly:
//! - a NaN anywhere in a row makes the whole row NaN;
//! - a row whose every element is -inf gives all zeros;
//! - a +inf element makes the row NaN (exp(inf - inf) is undefined), as in PyTorch.
//!
//! The rest of the softmax family extends that policy:
//! - every function takes rows of `cols` contiguous elements; a trailing partial row (length not a
//!   multiple of `cols`) is not a row: its outputs stay 0 (as `softmax_rows` always did) and
//!   `logsumexp_rows` gives it no value;
//! - `scale` is the s of softmax(s·x) (attention's 1/sqrt(d)); s > 0 and finite is the caller's
//!   business (checked in debug builds only). s·x is formed in f64, so no input that came from
//!   f32, f16 or bf16 storage overflows, and the result equals the unscaled function applied to the
//!   premultiplied input exactly;
//! - log-softmax and logsumexp come from the row's (max, sum) pair, never from ln(softmax), so they
//!   do not underflow; a -inf input gives -inf (its probability is 0) and an all -inf row gives
//!   all -inf;
//! - backward passes treat a position the forward pass masked (softmax output exactly 0,
//!   log-softmax output -inf) as absent: its gradient is exactly 0 and its dy takes no part in the
//!   row's sum, so a masked position never makes NaN, whatever its dy;
//! - [`gather_rows`] / [`scatter_rows`] lay out a softmax over any dimension as rows.

pub mod cross_entropy;

/// Softmax over rows of `cols` elements, in f64.
pub fn softmax_rows(x: &[f64], cols: usize) -> Vec<f64> {
    // 1·v == v exactly, for every v including ±inf and NaN: this is the unscaled function.
    softmax_rows_scaled(x, cols, 1.0)
}

/// softmax(scale·x) over rows of `cols` elements, in f64: the scaled-logit variant that fused
/// attention kernels compute. Same policy as [`softmax_rows`] (NaN or +inf row -> NaN, all -inf
/// row -> zeros, a -inf element -> 0).
pub fn softmax_rows_scaled(x: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    map_rows(x, cols, |xr, yr| match row_stats(xr, scale) {
        RowStats::Nan => yr.fill(f64::NAN),
        RowStats::Masked => yr.fill(0.0),
        RowStats::Finite { m, d } => {
            for (o, &v) in yr.iter_mut().zip(xr) {
                *o = (scale * v - m).exp() / d;
            }
        }
    })
}

/// log softmax(scale·x) over rows of `cols` elements: (s·x - m) - ln d with m = max(s·x) and
/// d = sum exp(s·x - m). Formed from (m, d) rather than as ln(softmax) so that a probability that
/// underflows f64 still has its exact logarithm: [0, -1000] gives [0, -1000], not [0, -inf].
/// Policy: NaN or +inf in a row -> NaN row; an all -inf row -> all -inf (every probability is 0);
/// a -inf element -> -inf.
pub fn log_softmax_rows(x: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    map_rows(x, cols, |xr, yr| match row_stats(xr, scale) {
        RowStats::Nan => yr.fill(f64::NAN),
        RowStats::Masked => yr.fill(f64::NEG_INFINITY),
        RowStats::Finite { m, d } => {
            let ln_d = d.ln();
            for (o, &v) in yr.iter_mut().zip(xr) {
                // (s·v - m) first: it is exact-ish and <= 0; ln d is in [0, ln cols].
                *o = (scale * v - m) - ln_d;
            }
        }
    })
}

/// ln sum exp(scale·x) per row of `cols` elements, one value a row: m + ln d with m = max(s·x),
/// so it neither overflows nor underflows. An all -inf row gives -inf (ln 0), a row with NaN or
/// +inf gives NaN. `cols == 0` has no rows, so the result is empty (whatever `x.len()`).
pub fn logsumexp_rows(x: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    if cols == 0 {
        return Vec::new();
    }
    x.chunks_exact(cols)
        .map(|xr| match row_stats(xr, scale) {
            RowStats::Nan => f64::NAN,
            RowStats::Masked => f64::NEG_INFINITY,
            RowStats::Finite { m, d } => m + d.ln(),
        })
        .collect()
}

/// Gradient of softmax(scale·x) per row: dx = s·y·(dy - sum_j dy_j·y_j), where `y` is the
/// forward output ([`softmax_rows_scaled`]) and `dy` the gradient of the loss with respect to it.
///
/// Masking: a position with y == 0 exactly (a -inf input, or a probability that underflowed, whose
/// true gradient s·y·(..) is 0 as well) gets dx = 0 exactly and its dy is left out of the row's
/// sum, so neither a huge nor an infinite nor a NaN dy there can make NaN. A row of all-zero y
/// (fully masked) therefore gives dx = 0 throughout.
///
/// NaN: a NaN y (a NaN forward row) or a NaN dy at an unmasked position makes the row's sum NaN,
/// hence dx NaN at every unmasked position of the row, per the formula; masked positions stay 0.
pub fn softmax_backward_rows(y: &[f64], dy: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    map_row_pairs(y, dy, cols, |yr, dyr, dxr| {
        let live = yr.iter().zip(dyr).filter(|&(&yj, _)| yj != 0.0);
        let dot: f64 = live.map(|(&yj, &g)| g * yj).sum();
        for ((o, &yj), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
            *o = if yj == 0.0 {
                0.0
            } else {
                scale * yj * (g - dot)
            };
        }
    })
}

/// Gradient of log softmax(scale·x) per row: dx = s·(dy - exp(y)·sum_j dy_j), where `y` is the
/// forward output ([`log_softmax_rows`]) and `dy` the gradient of the loss with respect to it.
///
/// Masking: a position with y == -inf (a -inf input) took no part in the forward pass, so it gets
/// dx = 0 exactly (not the formula's s·dy) and the sum over dy skips it: a dy there, however large,
/// infinite or NaN, changes nothing. (Skipping is what makes this the gradient of a loss that
/// ignores masked positions; counting them would move every other gradient by dy_masked·exp(y).)
/// A fully masked row (every y == -inf) gives dx = 0 throughout.
///
/// NaN: a NaN y (a NaN forward row) gives NaN at that position through exp(y); a NaN dy at an
/// unmasked position makes the row's sum NaN, hence dx NaN at every unmasked position of the row.
pub fn log_softmax_backward_rows(y: &[f64], dy: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    map_row_pairs(y, dy, cols, |yr, dyr, dxr| {
        let live = yr
            .iter()
            .zip(dyr)
            .filter(|&(&yj, _)| yj != f64::NEG_INFINITY);
        let sum: f64 = live.map(|(_, &g)| g).sum();
        for ((o, &yj), &g) in dxr.iter_mut().zip(yr).zip(dyr) {
            *o = if yj == f64::NEG_INFINITY {
                0.0
            } else {
                scale * (g - yj.exp() * sum)
            };
        }
    })
}

/// (outer, n, inner) of a softmax over `shape[dim]` of a contiguous tensor: the product of the
/// dimensions before `dim`, its size, and the product of those after (an empty product is 1, so a
/// rank-1 shape `[n]` gives (1, n, 1)). Panics if `dim` is not a dimension of `shape`.
pub fn dims_around(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    assert!(
        dim < shape.len(),
        "dim {dim} out of range for rank {}",
        shape.len()
    );
    let outer = shape[..dim].iter().product();
    let inner = shape[dim + 1..].iter().product();
    (outer, shape[dim], inner)
}

/// The rows of a softmax over the middle dimension of a contiguous [outer, n, inner] tensor, laid
/// out contiguously so that the row functions above apply: outer·inner rows of n elements, row
/// r = o·inner + i holding x[o·n·inner + k·inner + i] for k in 0..n. Undo with [`scatter_rows`].
pub fn gather_rows(x: &[f64], outer: usize, n: usize, inner: usize) -> Vec<f64> {
    assert_eq!(
        x.len(),
        outer * n * inner,
        "x is not [{outer}, {n}, {inner}]"
    );
    strided_positions(outer, n, inner).map(|p| x[p]).collect()
}

/// The inverse of [`gather_rows`]: puts outer·inner contiguous rows of n elements back into a
/// contiguous [outer, n, inner] tensor.
pub fn scatter_rows(rows: &[f64], outer: usize, n: usize, inner: usize) -> Vec<f64> {
    assert_eq!(
        rows.len(),
        outer * n * inner,
        "rows are not [{outer}, {n}, {inner}]"
    );
    let mut x = vec![0.0; rows.len()];
    for (&v, p) in rows.iter().zip(strided_positions(outer, n, inner)) {
        x[p] = v;
    }
    x
}

/// For each element of the gathered rows in order, its index in the [outer, n, inner] tensor.
/// One place for the layout, so gather and scatter are inverse by construction.
fn strided_positions(outer: usize, n: usize, inner: usize) -> impl Iterator<Item = usize> {
    (0..outer).flat_map(move |o| {
        (0..inner).flat_map(move |i| (0..n).map(move |k| (o * n + k) * inner + i))
    })
}

/// What softmax(scale·x) of one row reduces to before any element is written: the policy lives
/// here once, and every forward function only says what each case means for its output.
#[derive(Clone, Copy, Debug, PartialEq)]
enum RowStats {
    /// A NaN, or a +inf (exp(inf - inf) is undefined): every output of the row is NaN.
    Nan,
    /// Every element is -inf (fully masked, or an empty row): there is no distribution.
    Masked,
    /// m = max(s·x), finite; d = sum exp(s·x - m), in [1, cols].
    Finite { m: f64, d: f64 },
}

fn row_stats(xr: &[f64], scale: f64) -> RowStats {
    debug_assert!(
        scale > 0.0 && scale.is_finite(),
        "scale must be positive and finite, got {scale}"
    );
    if xr.iter().any(|v| v.is_nan()) {
        return RowStats::Nan;
    }
    // Rounding is monotonic and s > 0, so max(s·x) is s·max(x) rounded: the max of what is used.
    let m = xr
        .iter()
        .map(|&v| scale * v)
        .fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return RowStats::Masked;
    }
    if m == f64::INFINITY {
        return RowStats::Nan;
    }
    let d = xr.iter().map(|&v| (scale * v - m).exp()).sum();
    RowStats::Finite { m, d }
}

/// Output of the same length as `x`, each whole row of `cols` written by `row`; a trailing
/// partial row stays 0.
fn map_rows(x: &[f64], cols: usize, mut row: impl FnMut(&[f64], &mut [f64])) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    if cols == 0 {
        return y;
    }
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        row(xr, yr);
    }
    y
}

/// [`map_rows`] for the backward passes, which read the forward output and its gradient.
fn map_row_pairs(
    y: &[f64],
    dy: &[f64],
    cols: usize,
    mut row: impl FnMut(&[f64], &[f64], &mut [f64]),
) -> Vec<f64> {
    assert_eq!(y.len(), dy.len(), "y and dy differ in length");
    let mut dx = vec![0.0; y.len()];
    if cols == 0 {
        return dx;
    }
    let rows = y.chunks_exact(cols).zip(dy.chunks_exact(cols));
    for ((yr, dyr), dxr) in rows.zip(dx.chunks_exact_mut(cols)) {
        row(yr, dyr, dxr);
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    const NINF: f64 = f64::NEG_INFINITY;
    const SCALES: [f64; 3] = [0.5, 1.0, 3.7];

    /// splitmix64: a deterministic generator, so every run checks the same rows.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in [lo, hi).
        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        fn row(&mut self, cols: usize, lo: f64, hi: f64) -> Vec<f64> {
            (0..cols).map(|_| self.uniform(lo, hi)).collect()
        }
    }

    fn all_nan(v: &[f64]) -> bool {
        v.iter().all(|x| x.is_nan())
    }

    fn close(got: f64, want: f64, tol: f64) -> bool {
        (got - want).abs() <= tol * (1.0 + want.abs())
    }

    #[test]
    fn matches_closed_forms_and_the_edge_policy() {
        let y = softmax_rows(&[0.0, 0.0, (2.0f64).ln(), 0.0], 2);
        assert_eq!(y[0], 0.5);
        approx::assert_relative_eq!(y[2], 2.0 / 3.0, max_relative = 1e-15);
        approx::assert_relative_eq!(y[3], 1.0 / 3.0, max_relative = 1e-15);
        let ninf = f64::NEG_INFINITY;
        assert_eq!(softmax_rows(&[ninf, ninf], 2), vec![0.0, 0.0]);
        assert_eq!(softmax_rows(&[ninf, 1.0], 2), vec![0.0, 1.0]);
        assert!(softmax_rows(&[1.0, f64::NAN], 2).iter().all(|v| v.is_nan()));
        assert!(
            softmax_rows(&[1.0, f64::INFINITY], 2)
                .iter()
                .all(|v| v.is_nan())
        );
        // Shift invariance at extreme magnitudes.
        let y = softmax_rows(&[3e38, 3e38, -3e38], 3);
        assert_eq!(y, vec![0.5, 0.5, 0.0]);
        assert!(softmax_rows(&[], 0).is_empty());
    }

    #[test]
    fn forward_family_closed_forms() {
        let ln2 = 2.0f64.ln();
        // Row [0, ln 2]: probabilities 1/3, 2/3, logsumexp ln 3.
        let y = softmax_rows_scaled(&[0.0, ln2], 2, 1.0);
        assert_relative_eq!(y[0], 1.0 / 3.0, max_relative = 1e-15);
        assert_relative_eq!(y[1], 2.0 / 3.0, max_relative = 1e-15);
        let l = log_softmax_rows(&[0.0, ln2], 2, 1.0);
        assert_relative_eq!(l[0], -(3.0f64.ln()), max_relative = 1e-15);
        assert_relative_eq!(l[1], ln2 - 3.0f64.ln(), max_relative = 1e-15);
        assert_relative_eq!(
            logsumexp_rows(&[0.0, ln2], 2, 1.0)[0],
            3.0f64.ln(),
            max_relative = 1e-15
        );
        // Scale 2 on [0, ln 2] is [0, ln 4]: 1/5, 4/5.
        let y = softmax_rows_scaled(&[0.0, ln2], 2, 2.0);
        assert_relative_eq!(y[0], 0.2, max_relative = 1e-15);
        assert_relative_eq!(y[1], 0.8, max_relative = 1e-15);
        assert_relative_eq!(
            logsumexp_rows(&[0.0, ln2], 2, 2.0)[0],
            5.0f64.ln(),
            max_relative = 1e-15
        );
        // Two rows give two logsumexp values.
        let lse = logsumexp_rows(&[1.0, 1.0, 0.0, NINF], 2, 1.0);
        assert_eq!(lse.len(), 2);
        assert_relative_eq!(lse[0], 1.0 + ln2, max_relative = 1e-15);
        assert_eq!(lse[1], 0.0);
    }

    #[test]
    fn forward_family_follows_the_edge_policy() {
        for s in SCALES {
            for bad in [[1.0, f64::NAN], [1.0, f64::INFINITY], [NINF, f64::NAN]] {
                assert!(all_nan(&softmax_rows_scaled(&bad, 2, s)));
                assert!(all_nan(&log_softmax_rows(&bad, 2, s)));
                assert!(all_nan(&logsumexp_rows(&bad, 2, s)));
            }
            // Fully masked: no probability anywhere.
            assert_eq!(softmax_rows_scaled(&[NINF, NINF], 2, s), vec![0.0, 0.0]);
            assert_eq!(log_softmax_rows(&[NINF, NINF], 2, s), vec![NINF, NINF]);
            assert_eq!(logsumexp_rows(&[NINF, NINF], 2, s), vec![NINF]);
            // One masked element: it gets nothing, the rest is the softmax of the rest.
            assert_eq!(softmax_rows_scaled(&[NINF, 1.0], 2, s), vec![0.0, 1.0]);
            assert_eq!(log_softmax_rows(&[NINF, 1.0], 2, s), vec![NINF, 0.0]);
            assert_eq!(logsumexp_rows(&[NINF, 1.0], 2, s), vec![s]);
            // A NaN row does not leak into its neighbour.
            let y = softmax_rows_scaled(&[f64::NAN, 0.0, 0.0, 0.0], 2, s);
            assert!(all_nan(&y[..2]));
            assert_eq!(&y[2..], &[0.5, 0.5]);
        }
        assert!(logsumexp_rows(&[], 0, 1.0).is_empty());
        assert!(logsumexp_rows(&[1.0, 2.0], 0, 1.0).is_empty());
        assert!(log_softmax_rows(&[], 0, 1.0).is_empty());
    }

    #[test]
    fn log_softmax_comes_from_max_and_sum_so_it_does_not_underflow() {
        // e^-1000 underflows f64, so ln(softmax) would give -inf; the (m, d) form is exact here.
        assert_eq!(
            log_softmax_rows(&[0.0, -1000.0], 2, 1.0),
            vec![0.0, -1000.0]
        );
        assert_eq!(softmax_rows_scaled(&[0.0, -1000.0], 2, 1.0), vec![1.0, 0.0]);
        assert_eq!(log_softmax_rows(&[0.0, -500.0], 2, 2.0), vec![0.0, -1000.0]);
    }

    #[test]
    fn extreme_magnitudes_keep_shift_invariance() {
        let x = [3e38, 3e38, -3e38];
        let ln2 = 2.0f64.ln();
        for s in SCALES {
            assert_eq!(softmax_rows_scaled(&x, 3, s), vec![0.5, 0.5, 0.0]);
            let l = log_softmax_rows(&x, 3, s);
            assert_relative_eq!(l[0], -ln2, max_relative = 1e-15);
            assert_relative_eq!(l[1], -ln2, max_relative = 1e-15);
            assert_relative_eq!(l[2], -2.0 * s * 3e38, max_relative = 1e-15);
            assert_relative_eq!(logsumexp_rows(&x, 3, s)[0], s * 3e38, max_relative = 1e-15);
            let x = [-3e38, -3e38];
            assert_eq!(softmax_rows_scaled(&x, 2, s), vec![0.5, 0.5]);
            assert_relative_eq!(logsumexp_rows(&x, 2, s)[0], -s * 3e38, max_relative = 1e-15);
        }
    }

    #[test]
    fn scaled_softmax_is_softmax_of_the_premultiplied_input() {
        let mut rng = Rng(1);
        for s in [0.125, 0.5, 3.7, 11.0] {
            for cols in 1..9 {
                let x = rng.row(3 * cols, -20.0, 20.0);
                let sx: Vec<f64> = x.iter().map(|v| s * v).collect();
                assert_eq!(softmax_rows_scaled(&x, cols, s), softmax_rows(&sx, cols));
                assert_eq!(
                    log_softmax_rows(&x, cols, s),
                    log_softmax_rows(&sx, cols, 1.0)
                );
                assert_eq!(logsumexp_rows(&x, cols, s), logsumexp_rows(&sx, cols, 1.0));
            }
        }
    }

    #[test]
    fn single_column_rows() {
        for s in SCALES {
            let x = [2.5, -7.0, NINF];
            assert_eq!(softmax_rows_scaled(&x, 1, s), vec![1.0, 1.0, 0.0]);
            assert_eq!(log_softmax_rows(&x, 1, s), vec![0.0, 0.0, NINF]);
            assert_eq!(logsumexp_rows(&x, 1, s), vec![2.5 * s, -7.0 * s, NINF]);
            // A one-element row's output is constant, so its gradient is 0.
            let dy = [3.0, -1e300, 1e300];
            let y = softmax_rows_scaled(&x, 1, s);
            assert_eq!(softmax_backward_rows(&y, &dy, 1, s), vec![0.0; 3]);
            let l = log_softmax_rows(&x, 1, s);
            assert_eq!(log_softmax_backward_rows(&l, &dy, 1, s), vec![0.0; 3]);
        }
    }

    #[test]
    fn forward_identities_hold_on_random_rows() {
        let mut rng = Rng(2);
        for s in SCALES {
            for cols in 1..12 {
                let rows = 4;
                let x = rng.row(rows * cols, -30.0, 30.0);
                let y = softmax_rows_scaled(&x, cols, s);
                let l = log_softmax_rows(&x, cols, s);
                let lse = logsumexp_rows(&x, cols, s);
                assert_eq!(lse.len(), rows);
                for (r, &lse_r) in lse.iter().enumerate() {
                    for j in r * cols..(r + 1) * cols {
                        assert!(close(l[j], s * x[j] - lse_r, 1e-13), "{} {}", l[j], lse_r);
                        assert!(close(l[j].exp(), y[j], 1e-13), "{} {}", l[j].exp(), y[j]);
                    }
                    let total: f64 = y[r * cols..(r + 1) * cols].iter().sum();
                    assert_relative_eq!(total, 1.0, max_relative = 1e-14);
                }
            }
        }
    }

    #[test]
    fn logsumexp_of_equal_values_is_scaled_value_plus_ln_n() {
        for s in SCALES {
            for c in [-1e30, -3.0, 0.0, 0.25, 700.0, 3e38] {
                for n in [1usize, 2, 7, 100] {
                    let lse = logsumexp_rows(&vec![c; n], n, s)[0];
                    let want = s * c + (n as f64).ln();
                    assert_relative_eq!(lse, want, max_relative = 1e-15, epsilon = 1e-15);
                }
            }
        }
    }

    type Forward = fn(&[f64], usize, f64) -> Vec<f64>;
    type Backward = fn(&[f64], &[f64], usize, f64) -> Vec<f64>;

    /// sum dy·f(x) over the unmasked outputs of one row (a masked log-softmax output is -inf and
    /// takes no part in the loss, which is what the backward passes differentiate).
    fn loss(f: Forward, x: &[f64], dy: &[f64], s: f64) -> f64 {
        let out = f(x, x.len(), s);
        let live = out.iter().zip(dy).filter(|(o, _)| o.is_finite());
        live.map(|(o, g)| o * g).sum()
    }

    #[test]
    fn backward_matches_central_differences() {
        let pairs: [(Forward, Backward); 2] = [
            (softmax_rows_scaled, softmax_backward_rows),
            (log_softmax_rows, log_softmax_backward_rows),
        ];
        let mut rng = Rng(3);
        let h = 1e-6;
        for (forward, backward) in pairs {
            for s in SCALES {
                for cols in 1..8 {
                    for trial in 0..6 {
                        let mut x = rng.row(cols, -3.0, 3.0);
                        // Some rows carry masked elements (never all of them): their central
                        // difference is exactly 0 (-inf ± h is -inf), as the gradient must be.
                        if trial % 3 == 2 && cols > 1 {
                            x[rng.below(cols)] = NINF;
                        }
                        let dy = rng.row(cols, -1.0, 1.0);
                        let dx = backward(&forward(&x, cols, s), &dy, cols, s);
                        for j in 0..cols {
                            let (mut xp, mut xm) = (x.clone(), x.clone());
                            xp[j] += h;
                            xm[j] -= h;
                            let fd = (loss(forward, &xp, &dy, s) - loss(forward, &xm, &dy, s))
                                / (2.0 * h);
                            assert!(
                                close(dx[j], fd, 1e-6),
                                "s {s} x {x:?} dy {dy:?} j {j}: {} vs {fd}",
                                dx[j]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn masked_positions_get_exactly_zero_gradient_and_never_nan() {
        let x = [NINF, 0.5, NINF, -1.0, 2.0, NINF];
        let live = [1, 3, 4];
        for s in SCALES {
            for poison in [1e300, -1e300, f64::INFINITY, f64::NAN] {
                let dy = [poison, 0.3, poison, -0.7, 0.1, poison];
                for dx in [
                    softmax_backward_rows(&softmax_rows_scaled(&x, 6, s), &dy, 6, s),
                    log_softmax_backward_rows(&log_softmax_rows(&x, 6, s), &dy, 6, s),
                ] {
                    assert!(dx.iter().all(|v| v.is_finite()), "{dx:?}");
                    for j in [0, 2, 5] {
                        assert_eq!(dx[j], 0.0);
                    }
                    assert!(live.iter().any(|&j| dx[j] != 0.0));
                }
            }
        }
    }

    #[test]
    fn masked_elements_do_not_change_the_gradient_of_the_rest() {
        let mut rng = Rng(4);
        for s in SCALES {
            for cols in 2..8 {
                let mut x = rng.row(cols, -3.0, 3.0);
                let mut dy = rng.row(cols, -1.0, 1.0);
                let masked = rng.below(cols);
                x[masked] = NINF;
                dy[masked] = 1e300;
                let keep = |v: &[f64]| -> Vec<f64> {
                    let kept = v.iter().enumerate().filter(|&(j, _)| j != masked);
                    kept.map(|(_, &e)| e).collect()
                };
                let (xs, dys) = (keep(&x), keep(&dy));
                let n = cols - 1;
                let pairs = [
                    (
                        softmax_backward_rows(&softmax_rows_scaled(&x, cols, s), &dy, cols, s),
                        softmax_backward_rows(&softmax_rows_scaled(&xs, n, s), &dys, n, s),
                    ),
                    (
                        log_softmax_backward_rows(&log_softmax_rows(&x, cols, s), &dy, cols, s),
                        log_softmax_backward_rows(&log_softmax_rows(&xs, n, s), &dys, n, s),
                    ),
                ];
                for (full, short) in pairs {
                    assert_eq!(full[masked], 0.0);
                    assert_eq!(keep(&full), short);
                }
            }
        }
    }

    #[test]
    fn fully_masked_rows_get_zero_gradient() {
        // Row 0 fully masked, row 1 live: the masked row is all 0 whatever dy, the live one is not.
        let x = [NINF, NINF, NINF, 0.0, 1.0, 2.0];
        for s in SCALES {
            for poison in [1e300, f64::INFINITY, f64::NAN] {
                let dy = [poison, -poison, poison, 0.2, -0.4, 0.9];
                let y = softmax_rows_scaled(&x, 3, s);
                let dx = softmax_backward_rows(&y, &dy, 3, s);
                assert_eq!(&dx[..3], &[0.0; 3]);
                assert!(dx[3..].iter().all(|v| v.is_finite() && *v != 0.0));
                let l = log_softmax_rows(&x, 3, s);
                let dx = log_softmax_backward_rows(&l, &dy, 3, s);
                assert_eq!(&dx[..3], &[0.0; 3]);
                assert!(dx[3..].iter().all(|v| v.is_finite() && *v != 0.0));
            }
        }
        assert!(softmax_backward_rows(&[], &[], 0, 1.0).is_empty());
        assert!(log_softmax_backward_rows(&[], &[], 0, 1.0).is_empty());
    }

    #[test]
    fn backward_nan_follows_the_formula_at_unmasked_positions() {
        let x = [0.0, 1.0, NINF];
        let y = softmax_rows_scaled(&x, 3, 1.0);
        let l = log_softmax_rows(&x, 3, 1.0);
        let dy = [f64::NAN, 0.5, 0.5];
        for dx in [
            softmax_backward_rows(&y, &dy, 3, 1.0),
            log_softmax_backward_rows(&l, &dy, 3, 1.0),
        ] {
            assert!(all_nan(&dx[..2]));
            assert_eq!(dx[2], 0.0);
        }
        // A NaN forward row gives a NaN gradient row.
        let y = softmax_rows_scaled(&[f64::NAN, 1.0], 2, 1.0);
        assert!(all_nan(&softmax_backward_rows(&y, &[1.0, 2.0], 2, 1.0)));
        let l = log_softmax_rows(&[f64::NAN, 1.0], 2, 1.0);
        assert!(all_nan(&log_softmax_backward_rows(&l, &[1.0, 2.0], 2, 1.0)));
    }

    #[test]
    fn gather_and_scatter_rows_by_hand_and_round_trip() {
        // Shape [2, 3, 2], x[o][k][i] = 100·o + 10·k + i; rows over k for each (o, i).
        let x: Vec<f64> = (0..2)
            .flat_map(|o| {
                (0..3).flat_map(move |k| (0..2).map(move |i| (100 * o + 10 * k + i) as f64))
            })
            .collect();
        let rows = gather_rows(&x, 2, 3, 2);
        let want = [
            0.0, 10.0, 20.0, // o 0, i 0
            1.0, 11.0, 21.0, // o 0, i 1
            100.0, 110.0, 120.0, // o 1, i 0
            101.0, 111.0, 121.0, // o 1, i 1
        ];
        assert_eq!(rows, want);
        assert_eq!(scatter_rows(&rows, 2, 3, 2), x);

        let mut rng = Rng(5);
        for (outer, n, inner) in [
            (1, 5, 1),
            (3, 1, 4),
            (2, 4, 3),
            (1, 3, 7),
            (4, 2, 1),
            (0, 3, 2),
        ] {
            let x = rng.row(outer * n * inner, -1.0, 1.0);
            let rows = gather_rows(&x, outer, n, inner);
            assert_eq!(scatter_rows(&rows, outer, n, inner), x);
            if inner == 1 {
                assert_eq!(rows, x, "the last dim is already rows");
            }
        }
    }

    #[test]
    fn softmax_over_a_middle_dim_through_gathered_rows() {
        // Softmax over dim 1 of [2, 2, 2]: each (o, i) column of 2 sums to 1.
        let shape = [2, 2, 2];
        let (outer, n, inner) = dims_around(&shape, 1);
        let x = [0.0, 1.0, 2.0f64.ln(), 1.0, 5.0, 5.0, 5.0, 5.0];
        let y = scatter_rows(
            &softmax_rows(&gather_rows(&x, outer, n, inner), n),
            outer,
            n,
            inner,
        );
        assert_relative_eq!(y[0], 1.0 / 3.0, max_relative = 1e-15);
        assert_relative_eq!(y[2], 2.0 / 3.0, max_relative = 1e-15);
        assert_eq!([y[1], y[3]], [0.5, 0.5]);
        assert_eq!(&y[4..], &[0.5; 4]);
    }

    #[test]
    fn dims_around_splits_shapes() {
        assert_eq!(dims_around(&[7], 0), (1, 7, 1));
        assert_eq!(dims_around(&[2, 3, 4], 0), (1, 2, 12));
        assert_eq!(dims_around(&[2, 3, 4], 1), (2, 3, 4));
        assert_eq!(dims_around(&[2, 3, 4], 2), (6, 4, 1));
        assert_eq!(dims_around(&[2, 3, 4, 5], 2), (6, 4, 5));
        assert_eq!(dims_around(&[2, 0, 4], 2), (0, 4, 1));
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn dims_around_rejects_a_missing_dim() {
        dims_around(&[2, 3], 2);
    }
}
