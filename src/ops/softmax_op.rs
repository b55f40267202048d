//! The `Softmax` op value: softmax or log-softmax of `scale * x` over one dimension, forward
//! and backward. Built with chained setters (nothing is checked until a call); every call
//! checks its inputs before anything is launched, so bad input writes nothing.

use crate::ops::softmax::{
    Rows, backward_new, backward_rows, check_scale, forward_inplace_rows, forward_rows,
    forward_rows_new, forward_rows_to,
};
use crate::planning::Op;
use crate::types::element::{Dtype, Element};
use crate::types::error::{Error, Result};
use crate::types::tensor::DeviceTensor;

/// Softmax (or log-softmax) of `scale * x` over dimension `dim`.
///
/// ```no_run
/// # fn main() -> cuda_softmax::Result<()> {
/// use cuda_softmax::{Device, DeviceTensor, Softmax};
/// let device = Device::emulator();
/// let x = DeviceTensor::<f32>::from_host(&device, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// let y = Softmax::default().scale(0.5).log(true).forward(&x)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Softmax {
    dim: isize,
    scale: f32,
    log: bool,
}

impl Default for Softmax {
    /// Softmax over the last dimension, scale 1.
    fn default() -> Softmax {
        Softmax {
            dim: -1,
            scale: 1.0,
            log: false,
        }
    }
}

impl Softmax {
    /// Softmax over the last dimension, scale 1 (the same as `Softmax::default()`).
    pub fn new() -> Softmax {
        Softmax::default()
    }

    /// The dimension reduced over; negative counts from the end (-1, the default, is the last).
    pub fn dim(self, dim: isize) -> Softmax {
        Softmax { dim, ..self }
    }

    /// The op is taken of `scale * x` (default 1). Must lie in [1e-30, 1e30]
    /// ([`crate::SCALE_MIN`], [`crate::SCALE_MAX`]; [`Error::BadScale`] otherwise, at the
    /// call): for a negative temperature negate the input.
    /// The scale is folded into the exponent's factor, so it costs no pass and no instruction.
    pub fn scale(self, scale: f32) -> Softmax {
        Softmax { scale, ..self }
    }

    /// Log-softmax instead of softmax: `scale * x - max - log(sum(exp(scale * x - max)))`, from
    /// the row's (max, sum), never `log(softmax)` (which underflows).
    pub fn log(self, log: bool) -> Softmax {
        Softmax { log, ..self }
    }

    fn op(&self) -> Op {
        if self.log {
            Op::LogSoftmax
        } else {
            Op::Softmax
        }
    }

    /// Checks the scale and `dim` for a tensor of `shape`, and returns its rows: the size of
    /// `dim` elements each, as far apart as the product of the dimensions after `dim` (1 when
    /// it is the last dimension or only size-1 dimensions follow: contiguous rows; else the
    /// strided family runs, with no transpose).
    fn row_length(&self, shape: &[usize]) -> Result<Rows> {
        check_scale(self.scale)?;
        let rank = shape.len();
        if rank == 0 {
            return Err(Error::ScalarInput {
                op: self.op().name(),
            });
        }
        let resolved = if self.dim < 0 {
            self.dim.checked_add(rank as isize)
        } else {
            Some(self.dim)
        };
        let dim = match resolved {
            Some(d) if d >= 0 && (d as usize) < rank => d as usize,
            _ => {
                return Err(Error::BadDim {
                    dim: self.dim,
                    rank,
                });
            }
        };
        // A product of dimensions of a tensor that exists fits in usize (its length does),
        // unless another dimension is 0, which makes the tensor empty: saturate then.
        let inner = shape[dim + 1..]
            .iter()
            .try_fold(1usize, |p, &d| p.checked_mul(d))
            .unwrap_or(usize::MAX);
        let rows = Rows {
            n: shape[dim],
            inner: inner.max(1),
        };
        let empty = shape.contains(&0);
        if rows.inner > 1 && rows.n > i32::MAX as usize && !empty {
            // The strided kernels count a row's elements in 32-bit registers.
            return Err(Error::Unsupported {
                what: format!(
                    "softmax over dimension {dim} of shape {shape:?}: strided rows of more than 2^31 - 1 \
                     elements are not supported; make that dimension the last"
                ),
            });
        }
        Ok(rows)
    }

    /// The op of `x`, into a new tensor of the same shape.
    pub fn forward<T: Element>(&self, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
        let rows = self.row_length(x.shape())?;
        forward_rows_new(self.op(), self.scale, rows, x)
    }

    /// The op of `x`, written to `y` (same shape and device; the very same view as `x` for in
    /// place, never a partly overlapping one).
    pub fn forward_into<T: Element>(
        &self,
        x: &DeviceTensor<T>,
        y: &mut DeviceTensor<T>,
    ) -> Result<()> {
        let rows = self.row_length(x.shape())?;
        forward_rows(self.op(), self.scale, rows, x, y)
    }

    /// The gradient with respect to the input: from the forward output `y` and the upstream
    /// gradient `dy`, `dx = scale * y * (dy - sum(dy * y))` (softmax) or
    /// `dx = scale * (dy - exp(y) * sum(dy))` (log-softmax), row sums in f32. Masked elements
    /// (softmax `y == 0`, log-softmax `y == -inf`) took no part in the forward pass: they get 0
    /// and add nothing to the sum, whatever their `dy`; a fully masked row gives 0.
    pub fn backward<T: Element>(
        &self,
        y: &DeviceTensor<T>,
        dy: &DeviceTensor<T>,
    ) -> Result<DeviceTensor<T>> {
        let rows = self.row_length(y.shape())?;
        backward_new(self.backward_op(), self.scale, rows, y, dy)
    }

    /// The gradient into `dx`, which may be the very same view as `dy` (or `y`).
    pub fn backward_into<T: Element>(
        &self,
        y: &DeviceTensor<T>,
        dy: &DeviceTensor<T>,
        dx: &mut DeviceTensor<T>,
    ) -> Result<()> {
        let rows = self.row_length(y.shape())?;
        backward_rows(self.backward_op(), self.scale, rows, y, dy, dx)
    }

    fn backward_op(&self) -> Op {
        if self.log {
            Op::LogSoftmaxBackward
        } else {
            Op::SoftmaxBackward
        }
    }

    /// The op of `x` with f32 output, for f16/bf16 `x` (like torch's `dtype=torch.float32`):
    /// the same f32 arithmetic as `forward`, rounded once to f32 instead of to the input's
    /// type, so that probabilities for sampling keep their small values (f16 flushes those
    /// below 6e-8 to 0 and keeps 3 significant digits). One kernel reads `x` once and writes
    /// f32: no cast pass. For f32 `x` this is `forward`.
    pub fn forward_f32<T: Element>(&self, x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>> {
        let rows = self.row_length(x.shape())?;
        forward_rows_new(self.f32_output_op::<T>(), self.scale, rows, x)
    }

    /// [`forward_f32`](Self::forward_f32) into `y` (same shape and device). For 16-bit `x`, `y`
    /// must not overlap `x` at all (in place is not possible with a wider output); for f32 `x`
    /// this is `forward_into`, in place included. On error nothing is written.
    pub fn forward_f32_into<T: Element>(
        &self,
        x: &DeviceTensor<T>,
        y: &mut DeviceTensor<f32>,
    ) -> Result<()> {
        let rows = self.row_length(x.shape())?;
        forward_rows_to(self.f32_output_op::<T>(), self.scale, rows, x, y)
    }

    /// The op that writes f32 from `T`: the f32-output variant for 16-bit input, the op itself
    /// for f32 input.
    fn f32_output_op<T: Element>(&self) -> Op {
        let op = self.op();
        if T::DTYPE == Dtype::F32 {
            op
        } else {
            op.with_f32_output().unwrap_or(op)
        }
    }

    /// The op of `x`, in place.
    pub fn forward_inplace<T: Element>(&self, x: &mut DeviceTensor<T>) -> Result<()> {
        let rows = self.row_length(x.shape())?;
        forward_inplace_rows(self.op(), self.scale, rows, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    #[test]
    fn bad_scales_and_dims_are_errors_that_write_nothing() {
        let device = Device::emulator();
        let x = DeviceTensor::<f32>::from_host(&device, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        let mut y = DeviceTensor::<f32>::from_host(&device, &[7.0; 4], &[2, 2]).unwrap();
        // Also scales f32 cannot carry (NaN rows above 2.4e38, wrong sums below 2.6e-37).
        for scale in [
            0.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            9e-31,
            1.1e30,
            f32::MAX,
            1e-38,
        ] {
            let e = Softmax::new()
                .scale(scale)
                .forward_into(&x, &mut y)
                .unwrap_err();
            assert!(matches!(e, Error::BadScale { .. }), "{e}");
        }
        for dim in [2, -3, isize::MIN, isize::MAX] {
            let e = Softmax::new()
                .dim(dim)
                .forward_into(&x, &mut y)
                .unwrap_err();
            assert!(matches!(e, Error::BadDim { .. }), "{dim}: {e}");
        }
        assert_eq!(y.to_host().unwrap(), vec![7.0; 4]);
        // The ends of the range work: at 1e30 a row of two logits 1 apart is one-hot; at 1e-30
        // it is uniform.
        let pair = DeviceTensor::<f32>::from_host(&device, &[0.0, 1.0], &[2]).unwrap();
        let hot = Softmax::new()
            .scale(crate::SCALE_MAX)
            .forward(&pair)
            .unwrap();
        assert_eq!(hot.to_host().unwrap(), vec![0.0, 1.0]);
        let flat = Softmax::new()
            .scale(crate::SCALE_MIN)
            .forward(&pair)
            .unwrap();
        assert_eq!(flat.to_host().unwrap(), vec![0.5, 0.5]);

        // dim 0 of [2, 1] is one row of 2; the last dimension is two rows of 1.
        let col = DeviceTensor::<f32>::from_host(&device, &[0.0, (3.0f32).ln()], &[2, 1]).unwrap();
        let y = Softmax::new()
            .dim(0)
            .forward(&col)
            .unwrap()
            .to_host()
            .unwrap();
        assert!(
            (y[0] - 0.25).abs() < 1e-6 && (y[1] - 0.75).abs() < 1e-6,
            "{y:?}"
        );
        let y = Softmax::new().forward(&col).unwrap().to_host().unwrap();
        assert_eq!(y, vec![1.0, 1.0]);
    }

    /// Rows: contiguous when only size-1 dimensions follow `dim`; strided otherwise, with the
    /// row length limited to what the strided kernels count in 32 bits.
    #[test]
    fn rows_follow_the_dimensions_after_dim() {
        let rows = |dim: isize, shape: &[usize]| Softmax::new().dim(dim).row_length(shape);
        assert_eq!(rows(1, &[2, 3, 4]).unwrap(), Rows { n: 3, inner: 4 });
        assert_eq!(rows(-1, &[2, 3, 4]).unwrap(), Rows { n: 4, inner: 1 });
        assert_eq!(rows(0, &[5, 1, 1]).unwrap(), Rows { n: 5, inner: 1 });
        assert_eq!(rows(0, &[5, 0, 3]).unwrap(), Rows { n: 5, inner: 1 });
        let big = i32::MAX as usize;
        assert_eq!(rows(0, &[big, 2]).unwrap(), Rows { n: big, inner: 2 });
        assert_eq!(
            rows(0, &[big + 1, 1]).unwrap(),
            Rows {
                n: big + 1,
                inner: 1
            }
        );
        let e = rows(0, &[big + 1, 2]).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        // An empty tensor launches nothing, whatever its row length.
        assert!(rows(1, &[0, big + 1, 2]).is_ok());
    }

    /// A strided dimension goes through the same checks before anything is launched: shape
    /// mismatches, partial overlap and bad scales are errors that write nothing.
    #[test]
    fn strided_dims_check_their_inputs_first() {
        let device = Device::emulator();
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.1).collect();
        let x = DeviceTensor::<f32>::from_host(&device, &data, &[2, 3, 4]).unwrap();
        let poison = vec![7.0f32; 30];
        let out = DeviceTensor::<f32>::from_host(&device, &poison, &[30]).unwrap();
        let op = Softmax::new().dim(1);
        let mut wrong = out.view(0, &[2, 4, 3]).unwrap();
        let e = op.forward_into(&x, &mut wrong).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        let y = out.view(0, &[2, 3, 4]).unwrap();
        let mut shifted = out.view(3, &[2, 3, 4]).unwrap();
        let e = op.backward_into(&y, &x, &mut shifted).unwrap_err();
        assert!(matches!(e, Error::PartialOverlap), "{e}");
        let dy = out.view(0, &[2, 4, 3]).unwrap();
        let e = op.backward(&x, &dy).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
        let e = op.scale(0.0).forward(&x).unwrap_err();
        assert!(matches!(e, Error::BadScale { .. }), "{e}");
        assert_eq!(out.to_host().unwrap(), poison);
        // And the op itself: each strided row sums to 1.
        let y = op.forward(&x).unwrap().to_host().unwrap();
        for o in 0..2 {
            for i in 0..4 {
                let sum: f32 = (0..3).map(|k| y[o * 12 + k * 4 + i]).sum();
                assert!((sum - 1.0).abs() < 1e-6, "row ({o}, {i}): {sum}");
            }
        }
    }
}
