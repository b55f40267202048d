//! f64 CPU reference implementations, the ground truth every kernel is checked against.
//! They follow the numerics policy of DESIGN.md exactly:
//! - a NaN anywhere in a row makes the whole row NaN;
//! - a row whose every element is -inf gives all zeros;
//! - a +inf element makes the row NaN (exp(inf - inf) is undefined), as in PyTorch.

/// Softmax over rows of `cols` elements, in f64.
pub fn softmax_rows(x: &[f64], cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    if cols == 0 {
        return y;
    }
    for (xr, yr) in x.chunks_exact(cols).zip(y.chunks_exact_mut(cols)) {
        if xr.iter().any(|v| v.is_nan()) {
            yr.fill(f64::NAN);
            continue;
        }
        let m = xr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if m == f64::NEG_INFINITY {
            yr.fill(0.0);
            continue;
        }
        if m == f64::INFINITY {
            yr.fill(f64::NAN);
            continue;
        }
        let d: f64 = xr.iter().map(|&v| (v - m).exp()).sum();
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - m).exp() / d;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
