//! The softmax family over the last dimension: validate, plan, launch. The free functions are
//! the common cases of the [`Softmax`](crate::Softmax) op value.

use crate::planning::{
    DeviceLimits, LaunchPlan, Op, SoftmaxProblem, StridedProblem, plan_softmax, plan_strided,
};
use crate::runtime::launch::{AccessRange, SoftmaxParams};
use crate::types::element::Dtype;
use crate::types::element::Element;
use crate::types::error::{Error, Result};
use crate::types::tensor::{DeviceTensor, Overlap};

/// `softmax(x)` over the last dimension, into a new tensor of the same shape. Asynchronous on a
/// GPU: the result is ready when read back or after `Device::synchronize`.
pub fn softmax<T: Element>(x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    forward_new(Op::Softmax, 1.0, x)
}

/// `softmax(x)` over the last dimension, written to `y` (same shape and device). `y` may be the
/// very same view as `x` (in place: see [`softmax_inplace`], or pass a second view made with
/// `x.view(0, x.shape())`) but must not partly overlap it. On error nothing is written.
pub fn softmax_into<T: Element>(x: &DeviceTensor<T>, y: &mut DeviceTensor<T>) -> Result<()> {
    forward_rows_into(Op::Softmax, 1.0, x, y)
}

/// `softmax(x)` over the last dimension, in place: `x` is overwritten with its probabilities. No
/// memory is allocated (few long rows use the device's workspace, allocated once). Other views of the same
/// memory see the result once the device's stream reaches it.
pub fn softmax_inplace<T: Element>(x: &mut DeviceTensor<T>) -> Result<()> {
    forward_rows_inplace(Op::Softmax, 1.0, x)
}

/// `log_softmax(x)` over the last dimension, into a new tensor: `x - max - log(sum(exp(x - max)))`
/// per row, computed from the row's (max, sum), never as `log(softmax(x))` (which underflows to
/// -inf where a probability rounds to 0).
pub fn log_softmax<T: Element>(x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    forward_new(Op::LogSoftmax, 1.0, x)
}

/// `log_softmax(x)` over the last dimension, written to `y`; in place when `y` is the very same
/// view as `x`. On error nothing is written.
pub fn log_softmax_into<T: Element>(x: &DeviceTensor<T>, y: &mut DeviceTensor<T>) -> Result<()> {
    forward_rows_into(Op::LogSoftmax, 1.0, x, y)
}

/// The scales the ops accept: `scale * x` is taken for scale in [SCALE_MIN, SCALE_MAX].
/// Outside, f32 cannot carry the kernels' arithmetic: above about 2.4e38 the exponent's factor
/// log2(e) * scale overflows (every row NaN); below about 2.6e-37, x - max overflows where
/// scale * (x - max) is still a few units (wrong sums). Within, an overflowed x - max means an
/// exponent below -3e8, whose exp is 0 exactly.
pub const SCALE_MIN: f32 = 1e-30;
/// See [`SCALE_MIN`].
pub const SCALE_MAX: f32 = 1e30;

/// Checks a scale: the ops take `scale * x` with `scale` in [SCALE_MIN, SCALE_MAX] (positive
/// and finite, and far from f32's limits).
pub(crate) fn check_scale(scale: f32) -> Result<()> {
    if (SCALE_MIN..=SCALE_MAX).contains(&scale) {
        Ok(())
    } else {
        Err(Error::BadScale { scale })
    }
}

/// How an op's rows lie in a contiguous tensor: `n` elements a row, `inner` apart. `inner` is 1
/// for the last dimension (or one with only size-1 dimensions after it): contiguous rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rows {
    /// Elements a row: the size of the reduced dimension.
    pub n: usize,
    /// The distance between a row's elements: the product of the dimensions after it.
    pub inner: usize,
}

impl Rows {
    /// Contiguous rows of `n` elements.
    pub(crate) fn contiguous(n: usize) -> Rows {
        Rows { n, inner: 1 }
    }

    /// The plan for `len` elements of such rows (`len`, `n` and `inner` non-zero) with inputs
    /// of `dtype` at `inputs` and the output at `output`.
    fn plan(
        &self,
        op: Op,
        len: usize,
        dtype: Dtype,
        (inputs, output): (&[u64], u64),
        limits: &DeviceLimits,
    ) -> LaunchPlan {
        let aligned_to = |bytes: usize| {
            inputs
                .iter()
                .chain([&output])
                .all(|a| a.is_multiple_of(bytes as u64))
        };
        if self.inner == 1 {
            let problem = SoftmaxProblem {
                op,
                rows: len / self.n,
                cols: self.n,
                dtype,
                aligned16: aligned_to(16),
            };
            plan_softmax(&problem, limits)
        } else {
            let problem = StridedProblem {
                op,
                outer: len / (self.n * self.inner),
                n: self.n,
                inner: self.inner,
                dtype,
                // Two elements of each tensor move as one word of its own type.
                aligned_pairs: inputs
                    .iter()
                    .all(|a| a.is_multiple_of(2 * dtype.size_bytes() as u64))
                    && output.is_multiple_of(2 * op.output_dtype(dtype).size_bytes() as u64),
            };
            plan_strided(&problem, limits)
        }
    }
}

/// The rows of an op over the last dimension of `x`.
fn last_dim<T: Element>(op: Op, x: &DeviceTensor<T>) -> Result<Rows> {
    x.shape()
        .last()
        .map(|&n| Rows::contiguous(n))
        .ok_or(Error::ScalarInput { op: op.name() })
}

fn forward_new<T: Element>(op: Op, scale: f32, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    forward_rows_new(op, scale, last_dim(op, x)?, x)
}

fn forward_rows_into<T: Element>(
    op: Op,
    scale: f32,
    x: &DeviceTensor<T>,
    y: &mut DeviceTensor<T>,
) -> Result<()> {
    forward_rows(op, scale, last_dim(op, x)?, x, y)
}

fn forward_rows_inplace<T: Element>(op: Op, scale: f32, x: &mut DeviceTensor<T>) -> Result<()> {
    forward_inplace_rows(op, scale, last_dim(op, x)?, x)
}

/// A forward op over rows of `cols` contiguous elements, into a new tensor.
/// The output's type `O` is `op.output_dtype(T)` (f32 for the `_to_f32` ops, else `T`).
pub(crate) fn forward_rows_new<T: Element, O: Element>(
    op: Op,
    scale: f32,
    rows: Rows,
    x: &DeviceTensor<T>,
) -> Result<DeviceTensor<O>> {
    check_scale(scale)?;
    let mut y = DeviceTensor::uninit(x.device(), x.shape())?;
    forward_rows_to(op, scale, rows, x, &mut y)?;
    Ok(y)
}

/// A forward op over rows of `cols` contiguous elements, in place.
pub(crate) fn forward_inplace_rows<T: Element>(
    op: Op,
    scale: f32,
    rows: Rows,
    x: &mut DeviceTensor<T>,
) -> Result<()> {
    // A second view of exactly the same elements: identical views are the in-place case.
    let input = x.view_any(0, x.shape())?;
    forward_rows(op, scale, rows, &input, x)
}

/// A forward op over the rows of `x` (contiguous or strided) into `y`: every check before
/// anything is launched, so that bad input writes nothing.
pub(crate) fn forward_rows<T: Element>(
    op: Op,
    scale: f32,
    shape: Rows,
    x: &DeviceTensor<T>,
    y: &mut DeviceTensor<T>,
) -> Result<()> {
    forward_rows_to(op, scale, shape, x, y)
}

/// A forward op whose output type `O` may differ from the input's: `op.output_dtype(T)` (f32
/// for the `_to_f32` ops of 16-bit input). In place only when `T` and `O` are the same type.
pub(crate) fn forward_rows_to<T: Element, O: Element>(
    op: Op,
    scale: f32,
    shape: Rows,
    x: &DeviceTensor<T>,
    y: &mut DeviceTensor<O>,
) -> Result<()> {
    if x.shape().is_empty() {
        return Err(Error::ScalarInput { op: op.name() });
    }
    check_scale(scale)?;
    if op.output_dtype(T::DTYPE) != O::DTYPE || !op.dtypes().contains(&T::DTYPE) {
        return Err(Error::Unsupported {
            what: format!(
                "{} takes {} input to {} output, not {} to {}",
                op.name(),
                op.dtypes()
                    .iter()
                    .map(|d| d.name())
                    .collect::<Vec<_>>()
                    .join("/"),
                op.output_dtype(op.dtypes()[0]).name(),
                T::DTYPE.name(),
                O::DTYPE.name()
            ),
        });
    }
    if !x.device().same_as(y.device()) {
        return Err(Error::DeviceMismatch);
    }
    if x.shape() != y.shape() {
        return Err(Error::ShapeMismatch {
            what: "softmax_into: input and output",
            left: x.shape().to_vec(),
            right: y.shape().to_vec(),
        });
    }
    // Different element sizes never line up element for element: any overlap is partial.
    if x.overlap(y) == Overlap::Partial {
        return Err(Error::PartialOverlap);
    }
    let rows = x.len().checked_div(shape.n).unwrap_or(0);
    if rows == 0 {
        return Ok(());
    }
    let (x_addr, y_addr) = (x.addr(), y.addr());
    let plan = shape.plan(
        op,
        x.len(),
        T::DTYPE,
        (&[x_addr], y_addr),
        &x.device().planner_limits(),
    );
    let both = [y.access_range(true), x.access_range(false)];
    let ranges: &[AccessRange] = if x_addr != y_addr { &both } else { &both[..1] };
    let params = SoftmaxParams {
        x: x_addr,
        y: y_addr,
        rows: rows as i64,
        cols: shape.n as i64,
        // Split-row plans share the device's workspace of per-chunk (max, sum) states:
        // `Device::launch` fills in its address.
        workspace: 0,
        chunk_cols: plan.chunk_cols as i64,
        inner: shape.inner as i64,
        scale,
        ..SoftmaxParams::default()
    };
    x.device()
        .launch(&plan.stages, params, ranges, plan.workspace_floats)
}

/// The gradient of [`softmax`] with respect to its input: `dx = y * (dy - sum(dy * y))` per row
/// over the last dimension, from the forward output `y` and the upstream gradient `dy`. Masked
/// elements (`y == 0`) get 0 whatever their `dy`; a fully masked row gives 0.
pub fn softmax_backward<T: Element>(
    y: &DeviceTensor<T>,
    dy: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    backward_new(
        Op::SoftmaxBackward,
        1.0,
        last_dim(Op::SoftmaxBackward, y)?,
        y,
        dy,
    )
}

/// The gradient of [`log_softmax`]: `dx = dy - exp(y) * sum(dy)` per row, from the forward
/// output `y` and `dy`. Masked elements (`y == -inf`) get 0 and add nothing to the sum; a fully
/// masked row gives 0.
pub fn log_softmax_backward<T: Element>(
    y: &DeviceTensor<T>,
    dy: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    backward_new(
        Op::LogSoftmaxBackward,
        1.0,
        last_dim(Op::LogSoftmaxBackward, y)?,
        y,
        dy,
    )
}

/// A backward op over rows of `cols` contiguous elements, into a new tensor.
pub(crate) fn backward_new<T: Element>(
    op: Op,
    scale: f32,
    rows: Rows,
    y: &DeviceTensor<T>,
    dy: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    check_scale(scale)?;
    if !y.device().same_as(dy.device()) {
        return Err(Error::DeviceMismatch);
    }
    let mut dx = DeviceTensor::uninit(y.device(), y.shape())?;
    backward_rows(op, scale, rows, y, dy, &mut dx)?;
    Ok(dx)
}

/// A backward op over the rows of `y` (contiguous or strided): `y` (the forward output) and `dy`
/// in, `dx` out. `dx` may be the very same view as `dy` or `y` but must not partly overlap either.
/// Every check comes before the launch, so that bad input writes nothing.
pub(crate) fn backward_rows<T: Element>(
    op: Op,
    scale: f32,
    shape: Rows,
    y: &DeviceTensor<T>,
    dy: &DeviceTensor<T>,
    dx: &mut DeviceTensor<T>,
) -> Result<()> {
    if y.shape().is_empty() {
        return Err(Error::ScalarInput { op: op.name() });
    }
    check_scale(scale)?;
    if !y.device().same_as(dy.device()) || !y.device().same_as(dx.device()) {
        return Err(Error::DeviceMismatch);
    }
    if y.shape() != dy.shape() {
        return Err(Error::ShapeMismatch {
            what: "backward: y and dy",
            left: y.shape().to_vec(),
            right: dy.shape().to_vec(),
        });
    }
    if y.shape() != dx.shape() {
        return Err(Error::ShapeMismatch {
            what: "backward: y and dx",
            left: y.shape().to_vec(),
            right: dx.shape().to_vec(),
        });
    }
    if y.overlap(dx) == Overlap::Partial || dy.overlap(dx) == Overlap::Partial {
        return Err(Error::PartialOverlap);
    }
    let rows = y.len().checked_div(shape.n).unwrap_or(0);
    if rows == 0 {
        return Ok(());
    }
    let (y_addr, dy_addr, dx_addr) = (y.addr(), dy.addr(), dx.addr());
    let plan = shape.plan(
        op,
        y.len(),
        T::DTYPE,
        (&[y_addr, dy_addr], dx_addr),
        &y.device().planner_limits(),
    );
    // dx (writable), then the inputs it is not the same view as.
    let mut ranges = [dx.access_range(true); 3];
    let mut n = 1;
    for (addr, range) in [
        (y_addr, y.access_range(false)),
        (dy_addr, dy.access_range(false)),
    ] {
        if addr != dx_addr {
            ranges[n] = range;
            n += 1;
        }
    }
    let params = SoftmaxParams {
        x: y_addr,
        y: dx_addr,
        dy: dy_addr,
        rows: rows as i64,
        cols: shape.n as i64,
        chunk_cols: plan.chunk_cols as i64,
        inner: shape.inner as i64,
        scale,
        ..SoftmaxParams::default()
    };
    y.device()
        .launch(&plan.stages, params, &ranges[..n], plan.workspace_floats)
}

/// `logsumexp(x)` over the last dimension: one f32 a row, `max + log(sum(exp(x - max)))`, in a
/// tensor of `x`'s shape with the last dimension kept as size 1. Reads `x` once. An all -inf row
/// gives -inf (so does a row of zero columns); a NaN or +inf in a row gives NaN.
pub fn logsumexp<T: Element>(x: &DeviceTensor<T>) -> Result<DeviceTensor<f32>> {
    let op = Op::LogSumExp;
    let cols = last_dim(op, x)?.n;
    let mut shape = x.shape().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = 1;
    }
    let rows: usize = shape.iter().product();
    if cols == 0 {
        // The log of an empty sum: -inf, with nothing to launch.
        return DeviceTensor::from_host(x.device(), &vec![f32::NEG_INFINITY; rows], &shape);
    }
    let out = DeviceTensor::<f32>::uninit(x.device(), &shape)?;
    if rows == 0 {
        return Ok(out);
    }
    let problem = SoftmaxProblem {
        op,
        rows,
        cols,
        dtype: T::DTYPE,
        aligned16: x.addr().is_multiple_of(16),
    };
    let plan = plan_softmax(&problem, &x.device().planner_limits());
    let ranges = [out.access_range(true), x.access_range(false)];
    let params = SoftmaxParams {
        x: x.addr(),
        y: out.addr(),
        rows: rows as i64,
        cols: cols as i64,
        chunk_cols: plan.chunk_cols as i64,
        scale: 1.0,
        ..SoftmaxParams::default()
    };
    x.device()
        .launch(&plan.stages, params, &ranges, plan.workspace_floats)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;
    use crate::planning::NAMES_FORMATTED;

    /// A repeated call formats no kernel name (the backends find kernels by index, with names
    /// from a table built once) and allocates no split-row workspace, in every family.
    #[test]
    fn repeated_calls_format_no_names_and_allocate_no_workspace() {
        let device = Device::emulator();
        let limits = device.planner_limits();
        // Warp, block, online and split-row plans on the emulator's limits.
        let shapes = [(4, 100), (9, 3000), (9, 30_000), (2, 20_000)];
        let families: Vec<_> = shapes
            .iter()
            .map(|&(rows, cols)| {
                let problem = SoftmaxProblem {
                    op: Op::Softmax,
                    rows,
                    cols,
                    dtype: crate::Dtype::F32,
                    aligned16: true,
                };
                std::mem::discriminant(&plan_softmax(&problem, &limits).stages[0].kernel.family)
            })
            .collect();
        assert!(families.windows(2).all(|w| w[0] != w[1]), "four families");
        let tensors: Vec<_> = shapes
            .iter()
            .map(|&(rows, cols)| {
                let x: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 * 0.25).collect();
                let x = DeviceTensor::from_host(&device, &x, &[rows, cols]).unwrap();
                let y = DeviceTensor::<f32>::uninit(&device, &[rows, cols]).unwrap();
                (x, y)
            })
            .collect();
        let run_all = |tensors: Vec<(DeviceTensor<f32>, DeviceTensor<f32>)>| {
            tensors
                .into_iter()
                .map(|(x, mut y)| {
                    softmax_into(&x, &mut y).unwrap();
                    (x, y)
                })
                .collect::<Vec<_>>()
        };
        let formatted = || NAMES_FORMATTED.with(|n| n.get());
        let tensors = run_all(tensors);
        assert_eq!(device.split_workspace_allocations(), 1);
        let (names, stats) = (formatted(), device.last_launch_stats());
        let tensors = run_all(tensors);
        assert_eq!(
            formatted(),
            names,
            "a repeated launch formatted kernel names"
        );
        assert_eq!(
            device.split_workspace_allocations(),
            1,
            "a repeated split-row call allocated a workspace"
        );
        // Names are still reported, from the table.
        assert_eq!(device.last_launch_stats(), stats);
        let kernel = stats.map(|s| s.kernel).unwrap_or_default();
        assert_eq!(
            kernel,
            "softmax_split_stats_f32_b256+softmax_split_write_f32_b256"
        );
        let y = tensors[3].1.to_host().unwrap();
        assert!(y.iter().all(|v| v.is_finite() && *v > 0.0));
    }
}

#[cfg(test)]
mod strided_kernels {
    use crate::planning::{Family, KernelConfig, Op, Stage};
    use crate::runtime::launch::SoftmaxParams;
    use crate::tools::check::{Rng, Tolerance, compare_with};
    use crate::tools::reference;
    use crate::{Device, DeviceTensor, Element, bf16, f16};

    /// The inputs of one strided case as f64 rows (gathered: row r = o * inner + i) and the
    /// reference output rows.
    struct Case {
        a: Vec<f64>,
        b: Vec<f64>,
        want: Vec<f64>,
    }

    fn case(rng: &mut Rng, op: Op, rows: usize, n: usize, scale: f64) -> Case {
        let logits: Vec<f64> = (0..rows * n)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * 6.0)
            .collect();
        let dy: Vec<f64> = (0..rows * n).map(|_| rng.uniform() * 2.0 - 1.0).collect();
        match op {
            Op::Softmax | Op::SoftmaxToF32 => Case {
                want: reference::softmax_rows_scaled(&logits, n, scale),
                a: logits,
                b: Vec::new(),
            },
            Op::LogSoftmax | Op::LogSoftmaxToF32 => Case {
                want: reference::log_softmax_rows(&logits, n, scale),
                a: logits,
                b: Vec::new(),
            },
            Op::SoftmaxBackward => {
                let y = reference::softmax_rows_scaled(&logits, n, scale);
                Case {
                    want: reference::softmax_backward_rows(&y, &dy, n, scale),
                    a: y,
                    b: dy,
                }
            }
            Op::LogSoftmaxBackward => {
                let y = reference::log_softmax_rows(&logits, n, scale);
                Case {
                    want: reference::log_softmax_backward_rows(&y, &dy, n, scale),
                    a: y,
                    b: dy,
                }
            }
            Op::LogSumExp | Op::CrossEntropy => unreachable!("{op:?} has no strided family"),
        }
    }

    /// Launches `kernel` directly on [outer, n, inner] with `grid` blocks (in place: y over x,
    /// or dx over dy) and checks it against the reference and its traffic.
    /// `O` is the output's storage type (f32 for the `_to_f32` ops); those have no in place.
    fn check_kernel<T: Element, O: Element>(
        device: &Device,
        rng: &mut Rng,
        kernel: KernelConfig,
        (outer, n, inner): (usize, usize, usize),
        grid: u32,
        in_place: bool,
    ) -> bool {
        assert_eq!(
            kernel.op.output_dtype(T::DTYPE),
            O::DTYPE,
            "{}",
            kernel.name()
        );
        if in_place && O::DTYPE != T::DTYPE {
            return false;
        }
        let rows = outer * inner;
        let scale = 1.7;
        let c = case(rng, kernel.op, rows, n, scale);
        // Inputs rounded to T first: the reference then sees exactly what the kernel reads.
        let round =
            |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| T::from_f64(x).to_f64()).collect() };
        let (a, b) = (round(&c.a), round(&c.b));
        let c = Case {
            want: case_want(kernel.op, &a, &b, n, scale),
            a,
            b,
        };
        let upload = |rows_data: &[f64]| {
            let data: Vec<T> = reference::scatter_rows(rows_data, outer, n, inner)
                .iter()
                .map(|&v| T::from_f64(v))
                .collect();
            DeviceTensor::from_host(device, &data, &[outer, n, inner]).unwrap()
        };
        let backward = kernel.op.is_backward();
        let x = upload(&c.a);
        let dy = if backward { upload(&c.b) } else { upload(&c.a) };
        let poisoned =
            DeviceTensor::from_host(device, &vec![O::poison(); rows * n], &[outer, n, inner])
                .unwrap();
        // The output: a poisoned tensor, or the input it overwrites.
        let out_range = match (in_place, backward) {
            (false, _) => poisoned.access_range(true),
            (true, false) => x.access_range(true),
            (true, true) => dy.access_range(true),
        };
        let Family::Strided {
            on_chip,
            vec,
            slices,
        } = kernel.family
        else {
            unreachable!()
        };
        let inputs = if backward { 2 } else { 1 };
        let stage = Stage {
            kernel,
            grid: (grid, 1),
            block: kernel.threads_per_block(),
            shared_mem_bytes: if on_chip {
                (32 * vec as usize * n * inputs * T::DTYPE.size_bytes()) as u32
            } else {
                0
            },
        };
        let limit = device.planner_limits().max_shared_mem_per_block as usize;
        let static_smem = crate::planning::strided_static_smem_bytes(slices, vec);
        if stage.shared_mem_bytes as usize + static_smem > limit {
            return false; // more shared memory than the emulator's 96 KiB: not a launch the planner makes
        }
        let params = SoftmaxParams {
            x: x.addr(),
            y: out_range.addr,
            dy: if backward { dy.addr() } else { 0 },
            rows: rows as i64,
            cols: n as i64,
            inner: inner as i64,
            scale: scale as f32,
            ..SoftmaxParams::default()
        };
        let mut ranges = vec![out_range];
        if out_range.addr != x.addr() {
            ranges.push(x.access_range(false));
        }
        if backward && out_range.addr != dy.addr() {
            ranges.push(dy.access_range(false));
        }
        device.launch(&[stage], params, &ranges, 0).unwrap();
        // Traffic: each input read once and the output written once on chip; the inputs read
        // twice by the two-pass kernels.
        let stats = device.last_launch_stats().unwrap();
        let tensor_bytes = (rows * n * T::DTYPE.size_bytes()) as u64;
        let out_bytes = (rows * n * O::DTYPE.size_bytes()) as u64;
        let reads = if on_chip { 1 } else { 2 };
        assert_eq!(
            stats.kernel_bytes_read,
            reads * inputs as u64 * tensor_bytes,
            "{}",
            kernel.name()
        );
        assert_eq!(stats.kernel_bytes_written, out_bytes, "{}", kernel.name());
        let to_f64 = |v: &[_]| -> Vec<f64> { v.iter().map(|v: &T| v.to_f64()).collect() };
        let got: Vec<f64> = match (in_place, backward) {
            (false, _) => poisoned
                .to_host()
                .unwrap()
                .iter()
                .map(|v| v.to_f64())
                .collect(),
            (true, false) => to_f64(&x.to_host().unwrap()),
            (true, true) => to_f64(&dy.to_host().unwrap()),
        };
        let got: Vec<O> = reference::gather_rows(&got, outer, n, inner)
            .iter()
            .map(|&v| O::from_f64(v))
            .collect();
        let tol = match kernel.op {
            Op::LogSoftmax | Op::LogSoftmaxToF32 => Tolerance::log_softmax(O::DTYPE),
            _ => Tolerance::softmax(O::DTYPE),
        };
        // Backward: f32 arithmetic on the terms that cancel (dy against the row sum), as
        // tests/common/backward.rs allows: softmax 4e-6 s |y| (|dy| + sum|y dy|), log-softmax
        // 4e-6 s (|dy| + e^y sum|dy|).
        let row_terms: Vec<f64> = (0..rows)
            .map(|r| {
                (r * n..(r + 1) * n)
                    .map(|i| match kernel.op {
                        Op::SoftmaxBackward => (c.a[i] * c.b[i]).abs(),
                        Op::LogSoftmaxBackward => c.b[i].abs(),
                        _ => 0.0,
                    })
                    .sum()
            })
            .collect();
        let cmp = compare_with(&got, &c.want, |i, w| {
            let cancel = match kernel.op {
                Op::SoftmaxBackward => c.a[i].abs() * (c.b[i].abs() + row_terms[i / n]),
                Op::LogSoftmaxBackward => c.b[i].abs() + c.a[i].exp() * row_terms[i / n],
                _ => 0.0,
            };
            tol.atol + tol.rtol * w.abs() + 4e-6 * scale * cancel
        });
        assert!(
            cmp.passed(),
            "{} [{outer}, {n}, {inner}] grid {grid} in place {in_place}: {cmp}",
            kernel.name()
        );
        true
    }

    fn case_want(op: Op, a: &[f64], b: &[f64], n: usize, scale: f64) -> Vec<f64> {
        match op {
            Op::Softmax | Op::SoftmaxToF32 => reference::softmax_rows_scaled(a, n, scale),
            Op::LogSoftmax | Op::LogSoftmaxToF32 => reference::log_softmax_rows(a, n, scale),
            Op::SoftmaxBackward => reference::softmax_backward_rows(a, b, n, scale),
            Op::LogSoftmaxBackward => reference::log_softmax_backward_rows(a, b, n, scale),
            Op::LogSumExp | Op::CrossEntropy => unreachable!(),
        }
    }

    /// Every strided kernel of input type T whose output type is O.
    fn every_kernel<T: Element, O: Element>(device: &Device, rng: &mut Rng) {
        let kernels: Vec<KernelConfig> = KernelConfig::all()
            .into_iter()
            .filter(|k| k.dtype == T::DTYPE && matches!(k.family, Family::Strided { .. }))
            .filter(|k| k.op.output_dtype(T::DTYPE) == O::DTYPE)
            .collect();
        // Four ops, and f32 output of softmax and log-softmax for 16-bit input.
        let ops = if O::DTYPE == T::DTYPE { 4 } else { 2 };
        assert_eq!(
            kernels.len(),
            ops * 12,
            "{} -> {} strided kernels",
            T::DTYPE.name(),
            O::DTYPE.name()
        );
        // Partial last tiles, rows shorter than the slices (idle warps), rows that are not a
        // whole number of batches, one row element, and a grid smaller than the tiles (the
        // kernel loops over tiles).
        for kernel in kernels {
            let Family::Strided { vec, .. } = kernel.family else {
                unreachable!()
            };
            // Two rows a lane need an even inner dimension. The last shapes have more tiles than
            // blocks (the block loops, reusing its shared memory) and full batches of 8 a warp.
            let shapes: &[((usize, usize, usize), u32)] = if vec == 1 {
                &[
                    ((3, 37, 11), 2),
                    ((2, 5, 40), 3),
                    ((1, 130, 3), 1),
                    ((4, 1, 9), 1),
                    ((1, 300, 70), 2),
                    ((1, 280, 101), 1),
                ]
            } else {
                &[
                    ((3, 37, 10), 1),
                    ((2, 5, 40), 3),
                    ((1, 130, 2), 1),
                    ((4, 1, 18), 1),
                    ((1, 150, 70), 2),
                    ((1, 280, 200), 1),
                    ((2, 140, 100), 1),
                ]
            };
            let mut checked = 0;
            for &(shape, grid) in shapes {
                for in_place in [false, true] {
                    checked +=
                        check_kernel::<T, O>(device, rng, kernel, shape, grid, in_place) as usize;
                }
            }
            // (No in place for a wider output: half the cases.)
            let least = if O::DTYPE == T::DTYPE { 8 } else { 4 };
            assert!(
                checked >= least,
                "{}: {checked} cases fit the emulator",
                kernel.name()
            );
        }
    }

    /// Every strided entry point (1, 8 and 32 warps a block, on chip and two-pass, every op and
    /// dtype), launched directly rather than through the planner, against the f64 reference.
    #[test]
    fn every_strided_kernel_matches_the_reference() {
        let device = Device::emulator();
        let mut rng = Rng::new(Rng::seed_from_env());
        every_kernel::<f32, f32>(&device, &mut rng);
        every_kernel::<f16, f16>(&device, &mut rng);
        every_kernel::<bf16, bf16>(&device, &mut rng);
        every_kernel::<f16, f32>(&device, &mut rng);
        every_kernel::<bf16, f32>(&device, &mut rng);
    }
}
