//! Checks of the backward ops against the f64 reference: inputs y that a forward pass could
//! have produced (masked elements included), random dy, poisoned dx, every family.

use cuda_softmax::tools::check::{Rng, Tolerance, compare_with};
use cuda_softmax::tools::reference;
use cuda_softmax::{Device, DeviceTensor, Element, Softmax};

/// A backward case: the op (log or not, scale) and the inputs.
pub struct Case<T: Element> {
    pub log: bool,
    pub scale: f32,
    pub rows: usize,
    pub cols: usize,
    pub y: Vec<T>,
    pub dy: Vec<T>,
}

impl<T: Element> Case<T> {
    /// y = the forward op of random logits (with `masked` elements of each row at -inf, and
    /// every fifth row entirely -inf), stored in T; dy random in [-1, 1], except at masked
    /// positions, where it is +inf (a gradient that must not leak: 0 * inf is NaN).
    pub fn random(
        rng: &mut Rng,
        log: bool,
        scale: f32,
        rows: usize,
        cols: usize,
        masked: usize,
    ) -> Case<T> {
        let mut x: Vec<f64> = (0..rows * cols)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * 6.0)
            .collect();
        let mut is_masked = vec![false; rows * cols];
        for r in 0..rows {
            let n = if r % 5 == 3 {
                cols
            } else {
                masked.min(cols.saturating_sub(1))
            };
            for _ in 0..n {
                let i = r * cols + rng.below(cols);
                x[i] = f64::NEG_INFINITY;
                is_masked[i] = true;
            }
            if n == cols {
                x[r * cols..(r + 1) * cols].fill(f64::NEG_INFINITY);
                is_masked[r * cols..(r + 1) * cols].fill(true);
            }
        }
        let s = f64::from(scale);
        let y64 = if log {
            reference::log_softmax_rows(&x, cols, s)
        } else {
            reference::softmax_rows_scaled(&x, cols, s)
        };
        let y: Vec<T> = y64.iter().map(|&v| T::from_f64(v)).collect();
        let dy: Vec<T> = is_masked
            .iter()
            .map(|&m| {
                T::from_f64(if m {
                    f64::INFINITY
                } else {
                    rng.uniform() * 2.0 - 1.0
                })
            })
            .collect();
        Case {
            log,
            scale,
            rows,
            cols,
            y,
            dy,
        }
    }

    fn op(&self) -> Softmax {
        Softmax::new().log(self.log).scale(self.scale)
    }

    /// Runs the case on `device` with views `offset` elements into their buffers (y, dy, dx),
    /// dx poisoned; `in_place` writes dx over dy. Checks against the reference; nothing outside
    /// dx may change.
    pub fn check(
        &self,
        device: &Device,
        offset: (usize, usize, usize),
        in_place: bool,
        what: &str,
    ) {
        let (rows, cols) = (self.rows, self.cols);
        let n = rows * cols;
        let upload = |data: &[T], off: usize, fill: T| {
            let mut buf = vec![fill; n + off + 3];
            buf[off..off + n].copy_from_slice(data);
            DeviceTensor::from_host(device, &buf, &[buf.len()]).expect("upload")
        };
        let zero = T::from_f64(0.0);
        let y_all = upload(&self.y, offset.0, zero);
        let dy_all = upload(&self.dy, offset.1, zero);
        let y = y_all.view(offset.0, &[rows, cols]).unwrap();
        let dy = dy_all.view(offset.1, &[rows, cols]).unwrap();
        let (got, outside) = if in_place {
            let mut dx = dy_all.view(offset.1, &[rows, cols]).unwrap();
            self.op()
                .backward_into(&y, &dy, &mut dx)
                .expect("backward_into (in place)");
            let all = dy_all.to_host().unwrap();
            (all[offset.1..offset.1 + n].to_vec(), 0)
        } else {
            let dx_all = upload(&vec![T::poison(); n], offset.2, T::poison());
            let mut dx = dx_all.view(offset.2, &[rows, cols]).unwrap();
            self.op()
                .backward_into(&y, &dy, &mut dx)
                .expect("backward_into");
            let all = dx_all.to_host().unwrap();
            let outside = all[..offset.2]
                .iter()
                .chain(&all[offset.2 + n..])
                .filter(|v| !v.is_poison())
                .count();
            (all[offset.2..offset.2 + n].to_vec(), outside)
        };
        assert_eq!(outside, 0, "{what}: backward wrote outside dx");
        let detail = format!(
            "offsets {offset:?} in place {in_place} on {}",
            device.name()
        );
        self.verify(&got, what, &detail);
    }

    /// Checks dx (rows of `cols`, in the case's order) against the f64 reference.
    pub fn verify(&self, got: &[T], what: &str, detail: &str) {
        let (rows, cols) = (self.rows, self.cols);
        let y64: Vec<f64> = self.y.iter().map(|v| v.to_f64()).collect();
        let dy64: Vec<f64> = self.dy.iter().map(|v| v.to_f64()).collect();
        let s = f64::from(self.scale);
        let want = if self.log {
            reference::log_softmax_backward_rows(&y64, &dy64, cols, s)
        } else {
            reference::softmax_backward_rows(&y64, &dy64, cols, s)
        };
        // Allowance: the storage type's rounding of the result, plus f32 arithmetic on the terms
        // that cancel (dy against the row sum), scaled by their size.
        let tol = Tolerance::softmax(T::DTYPE);
        let eps = 4e-6;
        let row_terms: Vec<f64> = (0..rows)
            .map(|r| {
                (r * cols..(r + 1) * cols)
                    .filter(|&i| !masked(self.log, y64[i]))
                    .map(|i| {
                        if self.log {
                            dy64[i].abs()
                        } else {
                            (dy64[i] * y64[i]).abs()
                        }
                    })
                    .sum()
            })
            .collect();
        let c = compare_with(got, &want, |i, w| {
            let (yi, dyi) = (y64[i], dy64[i]);
            let terms = if masked(self.log, yi) {
                0.0
            } else if self.log {
                dyi.abs() + yi.exp() * row_terms[i / cols]
            } else {
                yi.abs() * (dyi.abs() + row_terms[i / cols])
            };
            tol.atol + tol.rtol * w.abs() + eps * s * terms
        });
        assert!(
            c.passed(),
            "{what}: {} backward (log {}, scale {}) [{rows}x{cols}] {detail}: {c}",
            T::DTYPE.name(),
            self.log,
            self.scale,
        );
    }
}

fn masked(log: bool, y: f64) -> bool {
    if log {
        y == f64::NEG_INFINITY
    } else {
        y == 0.0
    }
}

/// Every backward family (warp shapes at their bounds, the block family with y and dy on chip up
/// to its longest row, the two-pass block kernel past it, split-row for few long rows), both
/// ops, scales 1 and 3.7, aligned and misaligned views, in place over dy, masked elements and
/// fully masked rows.
pub fn backward_suite<T: Element>(device: &Device, rng: &mut Rng) {
    let sm = device.limits().sm_count as usize;
    let split_cols = cuda_softmax::tools::planner::SPLIT_MIN_COLS + 5;
    // The longest row the block family holds (y and dy on chip), and one more (two-pass).
    let block_max = cuda_softmax::tools::planner::block_family_max_cols_of(
        cuda_softmax::tools::planner::Op::SoftmaxBackward,
        T::DTYPE,
        &device.limits(),
    );
    let shapes = [
        (301, 1),
        (301, 3),
        (37, 8),
        (37, 9),
        (37, 65),
        (37, 128),
        (9, 129),
        (9, 257),
        (9, 1000),
        (9, 2048),
        (5, 2049),
        (4, 6000),
        (sm, 20_000),
        (sm, 30_000),
        (sm, block_max),
        (sm, block_max + 1),
        (2, split_cols),
    ];
    for log in [false, true] {
        for scale in [1.0, 3.7] {
            for &(rows, cols) in &shapes {
                let case = Case::<T>::random(rng, log, scale, rows, cols, cols / 7);
                case.check(device, (0, 0, 0), false, "aligned");
                case.check(device, (1, 1, 1), false, "shifted together");
                case.check(device, (3, 0, 5), false, "misaligned");
                case.check(device, (0, 2, 0), true, "in place over dy");
            }
        }
    }
}

/// logsumexp against the f64 reference on every family (warp shapes at their bounds, a block
/// per row, split-row), views off 16-byte boundaries, special rows (NaN, +inf, all -inf, values
/// near the dtype's maximum), rank 3 and zero columns.
pub fn logsumexp_suite<T: Element>(device: &Device, rng: &mut Rng) {
    let sm = device.limits().sm_count as usize;
    let split_cols = cuda_softmax::tools::planner::SPLIT_MIN_COLS + 5;
    let mut shapes: Vec<(usize, usize)> = cuda_softmax::tools::planner::KernelConfig::all()
        .into_iter()
        .filter(|k| k.dtype == T::DTYPE && k.op == cuda_softmax::tools::planner::Op::LogSumExp)
        .filter_map(|k| k.warp_row_lengths())
        .flat_map(|r| [(37, *r.start()), (37, *r.end())])
        .collect();
    shapes.extend([(5, 2049), (sm, 9000), (2, split_cols), (1, 70_000)]);
    let tol = Tolerance {
        atol: 4e-6,
        rtol: 2e-6,
    };
    for (rows, cols) in shapes {
        for offset in [0, 1, 3] {
            let mut x: Vec<T> = rng.logits(rows * cols, 8.0);
            if rows >= 5 {
                x[rng.below(cols)] = T::from_f64(f64::NAN);
                x[cols..2 * cols].fill(T::from_f64(f64::NEG_INFINITY));
                x[2 * cols + rng.below(cols)] = T::from_f64(f64::INFINITY);
                for v in x[3 * cols..4 * cols].iter_mut() {
                    *v = T::from_f64((rng.uniform() * 2.0 - 1.0) * T::MAX_FINITE * 0.999);
                }
            }
            let mut buf = vec![T::from_f64(0.0); rows * cols + offset];
            buf[offset..].copy_from_slice(&x);
            let all = DeviceTensor::from_host(device, &buf, &[buf.len()]).unwrap();
            let xv = all.view(offset, &[rows, cols]).unwrap();
            let got = cuda_softmax::logsumexp(&xv).unwrap();
            assert_eq!(got.shape(), &[rows, 1]);
            let got = got.to_host().unwrap();
            let x64: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
            let want = reference::logsumexp_rows(&x64, cols, 1.0);
            let c = cuda_softmax::tools::check::compare(&got, &want, tol);
            assert!(
                c.passed(),
                "logsumexp {} [{rows}x{cols}] offset {offset} on {}: {c}",
                T::DTYPE.name(),
                device.name()
            );
        }
    }
    // Rank 3 keeps the last dimension as 1; zero columns give -inf; zero rows give nothing.
    let x: Vec<T> = rng.logits(2 * 3 * 5, 4.0);
    let t = DeviceTensor::from_host(device, &x, &[2, 3, 5]).unwrap();
    assert_eq!(cuda_softmax::logsumexp(&t).unwrap().shape(), &[2, 3, 1]);
    let empty_rows = DeviceTensor::<T>::from_host(device, &[], &[3, 0]).unwrap();
    let l = cuda_softmax::logsumexp(&empty_rows).unwrap();
    assert_eq!(l.shape(), &[3, 1]);
    assert!(l.to_host().unwrap().iter().all(|v| *v == f32::NEG_INFINITY));
    let no_rows = DeviceTensor::<T>::from_host(device, &[], &[0, 4]).unwrap();
    assert_eq!(cuda_softmax::logsumexp(&no_rows).unwrap().shape(), &[0, 1]);
}

/// What logsumexp is held to (one f32 a row): the tolerance `logsumexp_suite` uses.
pub const LOGSUMEXP_TOLERANCE: Tolerance = Tolerance {
    atol: 4e-6,
    rtol: 2e-6,
};

/// logsumexp of `x` (`rows` x `cols`) viewed `offset` elements into its buffer, into a new
/// (on the emulator, poisoned) output, checked against the f64 reference: panics with `what`
/// and the worst row on failure.
pub fn check_logsumexp<T: Element>(
    device: &Device,
    x: &[T],
    rows: usize,
    cols: usize,
    offset: usize,
    what: &str,
) {
    let mut buf = vec![T::from_f64(0.0); x.len() + offset];
    buf[offset..].copy_from_slice(x);
    let all = DeviceTensor::from_host(device, &buf, &[buf.len()]).unwrap();
    let view = all.view(offset, &[rows, cols]).unwrap();
    let got = cuda_softmax::logsumexp(&view).unwrap();
    assert_eq!(got.shape(), &[rows, 1], "{what}");
    let x64: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let want = reference::logsumexp_rows(&x64, cols, 1.0);
    let c =
        cuda_softmax::tools::check::compare(&got.to_host().unwrap(), &want, LOGSUMEXP_TOLERANCE);
    assert!(
        c.passed(),
        "{what}: logsumexp {} [{rows}x{cols}] offset {offset} on {}: {c}",
        T::DTYPE.name(),
        device.name()
    );
}
