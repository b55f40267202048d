//! Checking kernels against the f64 reference: a small seeded RNG for fresh inputs, per-dtype
//! tolerances, and a comparison that reports the worst element. Used by the tests, the main
//! job's self-check and the GPU check script.

use crate::types::element::{Dtype, Element};

/// SplitMix64: tiny, fast, and good enough for test inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Seed from `CS_TEST_SEED` when set (to replay a failure), else from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("CS_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0x5eed, |d| d.as_nanos() as u64)
            })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [-scale, scale), never all zeros for a non-empty request.
    pub fn logits<T: Element>(&mut self, n: usize, scale: f64) -> Vec<T> {
        (0..n)
            .map(|_| T::from_f64((self.uniform() * 2.0 - 1.0) * scale))
            .collect()
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// |got - want| <= atol + rtol * |want|, per dtype.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Absolute part of the allowance.
    pub atol: f64,
    /// Relative part of the allowance (times |want|).
    pub rtol: f64,
}

impl Tolerance {
    /// fp32 near 1e-6 relative; fp16 about 1e-3; bf16 about 8e-3 (docs/architecture.md). The absolute part
    /// covers probabilities far below the dtype's resolution (f16 subnormals are 6e-8 apart).
    pub fn softmax(dtype: Dtype) -> Tolerance {
        match dtype {
            Dtype::F32 => Tolerance {
                atol: 1e-9,
                rtol: 2e-6,
            },
            Dtype::F16 => Tolerance {
                atol: 1e-7,
                rtol: 1e-3,
            },
            Dtype::Bf16 => Tolerance {
                atol: 1e-9,
                rtol: 8e-3,
            },
        }
    }
}

impl Tolerance {
    /// Log-softmax values are log-probabilities (0 and below): their error is absolute, from
    /// log(sum) (the sum's relative error, about 1e-6, and the MUFU.LG2 approximation, 2^-22),
    /// plus the storage type's rounding relative to the value.
    pub fn log_softmax(dtype: Dtype) -> Tolerance {
        Tolerance {
            atol: 4e-6,
            rtol: Tolerance::softmax(dtype).rtol,
        }
    }
}

/// The outcome of a comparison: the worst element (by error relative to its allowance).
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Index of the element with the largest error relative to its allowance.
    pub worst_index: usize,
    /// What the kernel produced there.
    pub worst_got: f64,
    /// What the reference says there.
    pub worst_want: f64,
    /// Error / allowance at the worst element: <= 1 passes.
    pub worst_ratio: f64,
    /// Largest |got - want| / |want| over elements with want > 1e-3.
    pub max_rel_error: f64,
    /// Elements never written (still holding the poison pattern).
    pub unwritten: usize,
    /// Elements whose NaN-ness differs from the reference (or whose infinities differ).
    pub class_mismatches: usize,
    /// The first element that failed in any way.
    pub first_bad: Option<usize>,
}

impl Comparison {
    /// Every element written, NaN/inf where the reference has them, all within tolerance.
    pub fn passed(&self) -> bool {
        self.unwritten == 0 && self.class_mismatches == 0 && self.worst_ratio <= 1.0
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worst element {} got {:e} want {:e} (error/allowance {:.3}); max rel error {:.2e}; {} unwritten; {} NaN/inf mismatches{}",
            self.worst_index,
            self.worst_got,
            self.worst_want,
            self.worst_ratio,
            self.max_rel_error,
            self.unwritten,
            self.class_mismatches,
            self.first_bad
                .map_or(String::new(), |i| format!(" (first at {i})"))
        )
    }
}

/// Compares kernel output with the f64 reference, element by element.
pub fn compare<T: Element>(got: &[T], want: &[f64], tol: Tolerance) -> Comparison {
    compare_with(got, want, |_, w| tol.atol + tol.rtol * w.abs())
}

/// Compares kernel output with the f64 reference, element `i` (reference value `w`) allowed an
/// error of `allowance(i, w)`: for ops whose error depends on more than the value itself (a
/// backward pass cancels dy against a row sum, so its error scales with the terms).
pub fn compare_with<T: Element>(
    got: &[T],
    want: &[f64],
    allowance: impl Fn(usize, f64) -> f64,
) -> Comparison {
    assert_eq!(got.len(), want.len(), "compare: lengths differ");
    let mut c = Comparison {
        worst_index: 0,
        worst_got: 0.0,
        worst_want: 0.0,
        worst_ratio: 0.0,
        max_rel_error: 0.0,
        unwritten: 0,
        class_mismatches: 0,
        first_bad: None,
    };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g.is_poison() {
            c.unwritten += 1;
            c.first_bad.get_or_insert(i);
            continue;
        }
        let g = g.to_f64();
        if g.is_nan() || w.is_nan() || g.is_infinite() || w.is_infinite() {
            let same = (g.is_nan() && w.is_nan()) || g == w;
            if !same {
                c.class_mismatches += 1;
                c.first_bad.get_or_insert(i);
            }
            continue;
        }
        let err = (g - w).abs();
        let ratio = err / allowance(i, w);
        if ratio > c.worst_ratio {
            c.worst_ratio = ratio;
            c.worst_index = i;
            c.worst_got = g;
            c.worst_want = w;
        }
        if ratio > 1.0 {
            c.first_bad.get_or_insert(i);
        }
        if w.abs() > 1e-3 {
            c.max_rel_error = c.max_rel_error.max(err / w.abs());
        }
    }
    c
}
