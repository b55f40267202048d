//! Fused softmax cross-entropy: the loss, each row's logsumexp and the gradient with respect to
//! the logits, in passes over the logits that never materialise probabilities
//! (kernels/cross_entropy.cu). PyTorch's `F.cross_entropy` semantics (class weights, label
//! smoothing, ignore_index, None/Sum/Mean), plus PaLM's z-loss and Gemma 2's logit softcap.
//!
//! ```no_run
//! # fn main() -> cuda_softmax::Result<()> {
//! use cuda_softmax::{CrossEntropy, Device, DeviceTensor};
//! let device = Device::emulator();
//! let mut logits = DeviceTensor::<f32>::from_host(&device, &[1.0, 2.0, 0.5, 0.0, 3.0, 1.0], &[2, 3])?;
//! let targets = DeviceTensor::<i64>::from_host(&device, &[1, 2], &[2])?;
//! // A training step's loss and gradient; the gradient overwrites the logits.
//! let out = CrossEntropy::default().label_smoothing(0.1).forward_backward_inplace(&mut logits, &targets)?;
//! let loss = out.loss.to_host()?[0];
//! # Ok(()) }
//! ```

use crate::planning::{CrossEntropyMode, plan_cross_entropy};
use crate::runtime::launch::{AccessRange, CrossEntropyParams, SoftmaxParams};
use crate::types::element::{Element, Index};
use crate::types::error::{Error, Result};
use crate::types::tensor::DeviceTensor;

/// How the rows' losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// One loss a row.
    None,
    /// The sum over the rows.
    Sum,
    /// The weighted mean: the sum over the rows divided by the total weight of the rows that
    /// are not ignored (their number without class weights); the z-loss term divided by their
    /// number. 0 (and a zero gradient) when every row is ignored.
    #[default]
    Mean,
}

/// Flag bits of the kernels' `ce_flags` (kernels/cross_entropy.cu).
const FLAG_TARGETS_I64: i32 = 1;
const FLAG_HAS_IGNORE: i32 = 2;
const FLAG_REDUCTION_SHIFT: i32 = 2;
const FLAG_GRAD_FROM_LSE: i32 = 16;

/// What `CrossEntropy::forward` returns. All f32.
#[derive(Debug)]
#[non_exhaustive]
pub struct CrossEntropyOutput {
    /// The loss, z-loss term included: `[N]` for `Reduction::None`, `[1]` otherwise.
    pub loss: DeviceTensor<f32>,
    /// Each row's logsumexp of the (softcapped) logits, `[N]`: what `backward` takes.
    pub lse: DeviceTensor<f32>,
    /// The z-loss term alone (`z * lse^2`, reduced like the loss), the loss's shape.
    pub z_loss: DeviceTensor<f32>,
}

/// Softmax cross-entropy of logits `[.., V]` (rows of `V` classes over the last dimension)
/// against one target class a row. Built with chained setters; nothing is checked until a call,
/// and every call checks its inputs before anything is written. An input that shares memory with
/// what the call writes (class weights or targets over the logits of
/// `forward_backward_inplace`, whose gradient overwrites them) is [`Error::PartialOverlap`].
///
/// Per row with target `t`, smoothing `e`, class weights `w` (1 without) and z-loss `z`:
/// `loss = (1 - e) * w[t] * (lse - x[t]) + (e / V) * sum_j w[j] * (lse - x[j]) + z * lse^2`,
/// with `x` the logits after the softcap. Rows whose target is `ignore_index` get loss 0 and
/// gradient 0. A row of only -inf logits with a real target has loss +inf and a NaN gradient
/// (it has no distribution); a target outside `[0, V)` is [`Error::InvalidTarget`] (see
/// [`CrossEntropy::check_targets`]). All sums are f32.
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropy<'w> {
    ignore_index: Option<i64>,
    label_smoothing: f32,
    z_loss: f32,
    softcap: Option<f32>,
    weight: Option<&'w DeviceTensor<f32>>,
    reduction: Reduction,
    check_targets: bool,
}

impl Default for CrossEntropy<'_> {
    /// PyTorch's defaults: ignore_index -100, no smoothing, no weights, Mean; no z-loss, no
    /// softcap; targets checked.
    fn default() -> Self {
        CrossEntropy {
            ignore_index: Some(-100),
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            weight: None,
            reduction: Reduction::Mean,
            check_targets: true,
        }
    }
}

impl<'w> CrossEntropy<'w> {
    /// The same as `CrossEntropy::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows whose target equals this index are ignored (loss 0, gradient 0, not counted by
    /// Mean); `None` ignores nothing. Default `Some(-100)`.
    pub fn ignore_index(self, ignore_index: Option<i64>) -> Self {
        CrossEntropy {
            ignore_index,
            ..self
        }
    }

    /// Label smoothing `e` in [0, 1]: the target distribution is `(1 - e)` on the target plus
    /// `e / V` on every class. Default 0.
    pub fn label_smoothing(self, label_smoothing: f32) -> Self {
        CrossEntropy {
            label_smoothing,
            ..self
        }
    }

    /// The z-loss coefficient `z >= 0` (PaLM): adds `z * lse^2` a row, unweighted. Default 0.
    pub fn z_loss(self, z_loss: f32) -> Self {
        CrossEntropy { z_loss, ..self }
    }

    /// Logit softcap `c > 0` (Gemma 2): every logit becomes `c * tanh(x / c)` first; the
    /// gradient is with respect to the logits before the cap. Default `None`.
    pub fn softcap(self, softcap: Option<f32>) -> Self {
        CrossEntropy { softcap, ..self }
    }

    /// Per-class weights, f32 of length V on the logits' device (PyTorch semantics: they scale
    /// the cross-entropy terms, and Mean divides by the targets' total weight). Default `None`.
    pub fn weight<'a>(self, weight: Option<&'a DeviceTensor<f32>>) -> CrossEntropy<'a> {
        CrossEntropy {
            ignore_index: self.ignore_index,
            label_smoothing: self.label_smoothing,
            z_loss: self.z_loss,
            softcap: self.softcap,
            weight,
            reduction: self.reduction,
            check_targets: self.check_targets,
        }
    }

    /// How the rows' losses are combined. Default `Reduction::Mean`.
    pub fn reduction(self, reduction: Reduction) -> Self {
        CrossEntropy { reduction, ..self }
    }

    /// Whether each call first checks every target (default true): a target outside `[0, V)`
    /// that is not `ignore_index` is then [`Error::InvalidTarget`], naming the first such row,
    /// and nothing is written. The check is one small kernel over the targets and an 8-byte
    /// read back, which waits for the stream (turn it off inside CUDA graph capture or a
    /// fully asynchronous training step). Unchecked, the call does not wait: such a row's
    /// loss and gradient are NaN (and so is a reduced loss); the kernels never use an invalid
    /// target as an address either way.
    pub fn check_targets(self, check_targets: bool) -> Self {
        CrossEntropy {
            check_targets,
            ..self
        }
    }

    /// The loss and each row's logsumexp. Reads the logits once.
    pub fn forward<T: Element, I: Index>(
        &self,
        logits: &DeviceTensor<T>,
        targets: &DeviceTensor<I>,
    ) -> Result<CrossEntropyOutput> {
        let rows = self.check(logits, targets)?;
        let out = self.outputs(logits, rows)?;
        if rows.n == 0 {
            return Ok(out);
        }
        self.launch(
            Launch {
                mode: CrossEntropyMode::Loss {
                    reduce: self.reduction != Reduction::None,
                },
                logits_addr: logits.addr(),
                logits_range: logits.access_range(false),
                grad: None,
                lse_in: None,
                dloss: None,
            },
            targets,
            rows,
            Some(&out),
            logits,
        )?;
        Ok(out)
    }

    /// The gradient with respect to the logits, from the forward's `lse` (`[N]`) and the
    /// upstream gradient `dloss` of the loss's shape (`[N]` for `Reduction::None`, else `[1]`).
    /// Reads the logits once and writes the gradient once. Probabilities are `exp(x - lse)`:
    /// accurate while `|lse| * 2^-24` is small against 1 (logits below about 10^4 in
    /// magnitude); `forward_backward` keeps the row's max and sum apart and has no such limit.
    pub fn backward<T: Element, I: Index>(
        &self,
        logits: &DeviceTensor<T>,
        targets: &DeviceTensor<I>,
        lse: &DeviceTensor<f32>,
        dloss: &DeviceTensor<f32>,
    ) -> Result<DeviceTensor<T>> {
        let rows = self.check(logits, targets)?;
        let device = logits.device();
        if !device.same_as(lse.device()) || !device.same_as(dloss.device()) {
            return Err(Error::DeviceMismatch);
        }
        if lse.len() != rows.n {
            return Err(Error::ShapeMismatch {
                what: "cross-entropy backward: lse must hold one value a row",
                left: vec![rows.n],
                right: lse.shape().to_vec(),
            });
        }
        let loss_len = self.loss_len(rows.n);
        if dloss.len() != loss_len {
            return Err(Error::ShapeMismatch {
                what: "cross-entropy backward: dloss must have the loss's shape",
                left: vec![loss_len],
                right: dloss.shape().to_vec(),
            });
        }
        let grad = DeviceTensor::<T>::uninit(device, logits.shape())?;
        if rows.n == 0 {
            return Ok(grad);
        }
        self.launch(
            Launch {
                mode: CrossEntropyMode::GradientFromLse,
                logits_addr: logits.addr(),
                logits_range: logits.access_range(false),
                grad: Some(grad.access_range(true)),
                lse_in: Some(lse.access_range(false)),
                dloss: Some(dloss.access_range(false)),
            },
            targets,
            rows,
            None,
            logits,
        )?;
        Ok(grad)
    }

    /// The loss and its gradient for an upstream gradient of 1, into a new tensor. Reads the
    /// logits once and writes the gradient once where a row fits in shared memory (and is not
    /// split across blocks); else reads them twice.
    pub fn forward_backward<T: Element, I: Index>(
        &self,
        logits: &DeviceTensor<T>,
        targets: &DeviceTensor<I>,
    ) -> Result<(CrossEntropyOutput, DeviceTensor<T>)> {
        let rows = self.check(logits, targets)?;
        let grad = DeviceTensor::<T>::uninit(logits.device(), logits.shape())?;
        let out = self.loss_and_gradient(logits, targets, rows, grad.access_range(true))?;
        Ok((out, grad))
    }

    /// `forward_backward` with the gradient written over the logits (no second tensor of the
    /// logits' size: the memory large-vocabulary training relies on). The targets and class
    /// weights must not share memory with the logits ([`Error::PartialOverlap`]). On an error
    /// nothing is written.
    pub fn forward_backward_inplace<T: Element, I: Index>(
        &self,
        logits: &mut DeviceTensor<T>,
        targets: &DeviceTensor<I>,
    ) -> Result<CrossEntropyOutput> {
        let rows = self.check(logits, targets)?;
        self.loss_and_gradient(logits, targets, rows, logits.access_range(true))
    }

    /// The loss, and the gradient into `grad` (a new tensor, or the logits themselves).
    fn loss_and_gradient<T: Element, I: Index>(
        &self,
        logits: &DeviceTensor<T>,
        targets: &DeviceTensor<I>,
        rows: Rows,
        grad: AccessRange,
    ) -> Result<CrossEntropyOutput> {
        let out = self.outputs(logits, rows)?;
        if rows.n == 0 {
            return Ok(out);
        }
        let in_place = grad.addr == logits.addr();
        self.launch(
            Launch {
                mode: CrossEntropyMode::LossAndGradient {
                    reduce: self.reduction != Reduction::None,
                },
                logits_addr: logits.addr(),
                logits_range: logits.access_range(in_place),
                grad: Some(grad),
                lse_in: None,
                dloss: None,
            },
            targets,
            rows,
            Some(&out),
            logits,
        )?;
        Ok(out)
    }

    fn loss_len(&self, rows: usize) -> usize {
        if self.reduction == Reduction::None {
            rows
        } else {
            1
        }
    }

    /// Checks the options and the shapes and devices of the logits, targets and weights;
    /// returns the rows.
    fn check<T: Element, I: Index>(
        &self,
        logits: &DeviceTensor<T>,
        targets: &DeviceTensor<I>,
    ) -> Result<Rows> {
        let bad = |what: String| Err(Error::BadArgument { what });
        let e = self.label_smoothing;
        if !(0.0..=1.0).contains(&e) {
            return bad(format!(
                "cross-entropy label_smoothing {e} is outside [0, 1]"
            ));
        }
        let z = self.z_loss;
        if !(z >= 0.0 && z.is_finite()) {
            return bad(format!(
                "cross-entropy z_loss {z} is not a finite number >= 0"
            ));
        }
        if let Some(c) = self.softcap
            && !(c >= f32::MIN_POSITIVE && c.is_finite())
        {
            // (A subnormal cap would make 1 / c infinite.)
            return bad(format!(
                "cross-entropy softcap {c} is not a finite number >= 1.2e-38 (use None for no cap)"
            ));
        }
        let Some(&classes) = logits.shape().last() else {
            return Err(Error::ScalarInput {
                op: "cross_entropy",
            });
        };
        if classes == 0 {
            return bad(
                "cross-entropy over logits with 0 classes (last dimension 0): there is no distribution"
                    .into(),
            );
        }
        let n = logits.len() / classes;
        if targets.len() != n {
            return Err(Error::ShapeMismatch {
                what: "cross-entropy: one target a row of logits (targets [N] for logits [N, V])",
                left: logits.shape()[..logits.shape().len() - 1].to_vec(),
                right: targets.shape().to_vec(),
            });
        }
        if !logits.device().same_as(targets.device()) {
            return Err(Error::DeviceMismatch);
        }
        if let Some(w) = self.weight {
            if !logits.device().same_as(w.device()) {
                return Err(Error::DeviceMismatch);
            }
            if w.len() != classes {
                return bad(format!(
                    "cross-entropy class weights of shape {:?}: need one weight a class ({classes})",
                    w.shape()
                ));
            }
        }
        Ok(Rows { n, classes })
    }

    /// New output tensors for `rows`: for no rows, a Sum/Mean loss of 0.
    fn outputs<T: Element>(
        &self,
        logits: &DeviceTensor<T>,
        rows: Rows,
    ) -> Result<CrossEntropyOutput> {
        let device = logits.device();
        let loss_len = self.loss_len(rows.n);
        let (loss, z_loss) = if rows.n == 0 && loss_len == 1 {
            (
                DeviceTensor::from_host(device, &[0.0], &[1])?,
                DeviceTensor::from_host(device, &[0.0], &[1])?,
            )
        } else {
            (
                DeviceTensor::uninit(device, &[loss_len])?,
                DeviceTensor::uninit(device, &[loss_len])?,
            )
        };
        Ok(CrossEntropyOutput {
            loss,
            lse: DeviceTensor::uninit(device, &[rows.n])?,
            z_loss,
        })
    }

    /// The target check (when on): the prepare stage alone, then the first invalid row read
    /// back. Nothing but a scratch word is written.
    fn check_target_values<T: Element, I: Index>(
        &self,
        logits: &DeviceTensor<T>,
        targets: &DeviceTensor<I>,
        rows: Rows,
    ) -> Result<()> {
        if !self.check_targets {
            return Ok(());
        }
        let device = logits.device();
        let status = DeviceTensor::<i64>::uninit(device, &[1])?;
        let plan = plan_cross_entropy(
            rows.n,
            rows.classes,
            T::DTYPE,
            CrossEntropyMode::CheckTargets,
            &device.planner_limits(),
        );
        let mut ranges = vec![status.access_range(true), targets.access_range(false)];
        ranges.extend(self.weight.map(|w| w.access_range(false)));
        let params = CrossEntropyParams {
            status: status.addr(),
            ..self.params(targets, rows, plan.chunk_cols)
        };
        device.launch(&plan.stages, params, &ranges, plan.workspace_floats)?;
        let bad = status.to_host()?[0];
        if bad < 0 {
            return Ok(());
        }
        let row = bad as usize;
        let target = targets
            .view_any(row, &[1])
            .and_then(|t| t.to_host())
            .map(|t| t[0].to_i64())?;
        Err(Error::InvalidTarget {
            row,
            target,
            classes: rows.classes,
        })
    }

    /// The parameters every stage shares (addresses of the outputs left 0).
    fn params<I: Index>(
        &self,
        targets: &DeviceTensor<I>,
        rows: Rows,
        chunk_cols: usize,
    ) -> CrossEntropyParams {
        let mut flags = (self.reduction as i32) << FLAG_REDUCTION_SHIFT;
        if I::IS_I64 {
            flags |= FLAG_TARGETS_I64;
        }
        if self.ignore_index.is_some() {
            flags |= FLAG_HAS_IGNORE;
        }
        CrossEntropyParams {
            base: SoftmaxParams {
                rows: rows.n as i64,
                cols: rows.classes as i64,
                chunk_cols: chunk_cols as i64,
                scale: 1.0,
                ..SoftmaxParams::default()
            },
            targets: targets.addr(),
            weight: self.weight.map_or(0, |w| w.addr()),
            ignore_index: self.ignore_index.unwrap_or(0),
            smoothing: self.label_smoothing,
            z: self.z_loss,
            softcap: self.softcap.unwrap_or(0.0),
            ce_flags: flags,
            ..CrossEntropyParams::default()
        }
    }

    /// Checks that nothing `l` writes is read as another input, then the target values (when
    /// on); plans and enqueues the stages of `l`. Nothing is written before both checks pass.
    fn launch<T: Element, I: Index>(
        &self,
        l: Launch,
        targets: &DeviceTensor<I>,
        rows: Rows,
        out: Option<&CrossEntropyOutput>,
        logits: &DeviceTensor<T>,
    ) -> Result<()> {
        let ranges = self.ranges(&l, targets, out);
        // First: targets under the in-place gradient must be refused as such, whatever values
        // the logits make of them.
        check_no_aliasing(&ranges)?;
        self.check_target_values(logits, targets, rows)?;
        let device = logits.device();
        let plan = plan_cross_entropy(
            rows.n,
            rows.classes,
            T::DTYPE,
            l.mode,
            &device.planner_limits(),
        );
        let mut params = self.params(targets, rows, plan.chunk_cols);
        params.base.x = l.logits_addr;
        params.base.y = l.grad.map_or(0, |g| g.addr);
        if let Some(out) = out {
            params.loss = out.loss.addr();
            params.lse = out.lse.addr();
            params.z_loss = out.z_loss.addr();
        } else {
            params.lse = l.lse_in.map_or(0, |r| r.addr);
            params.dloss = l.dloss.map_or(0, |r| r.addr);
            params.ce_flags |= FLAG_GRAD_FROM_LSE;
        }
        device.launch(&plan.stages, params, &ranges, plan.workspace_floats)
    }

    /// Every range the launch of `l` touches, those it writes marked writable.
    fn ranges<I: Index>(
        &self,
        l: &Launch,
        targets: &DeviceTensor<I>,
        out: Option<&CrossEntropyOutput>,
    ) -> Vec<AccessRange> {
        let mut ranges = vec![l.logits_range, targets.access_range(false)];
        ranges.extend(self.weight.map(|w| w.access_range(false)));
        if let Some(out) = out {
            ranges.push(out.loss.access_range(true));
            ranges.push(out.lse.access_range(true));
            ranges.push(out.z_loss.access_range(true));
        }
        // The in-place gradient is the logits' own range, already listed (writable).
        ranges.extend(l.grad.filter(|g| g.addr != l.logits_range.addr));
        ranges.extend(l.lse_in);
        ranges.extend(l.dloss);
        ranges
    }
}

/// `Error::PartialOverlap` where a range that is written shares a byte with any other range of
/// the launch. The kernels read the inputs (weights, targets, lse, dloss) in blocks other than
/// those writing over them, unordered with those writes: an input under an output would be read
/// half overwritten, differently from run to run (a race on a GPU). An identical range is
/// refused too: no input may be an output (the in-place gradient over the logits is one range,
/// listed once).
fn check_no_aliasing(ranges: &[AccessRange]) -> Result<()> {
    for (i, written) in ranges.iter().enumerate().filter(|(_, r)| r.writable) {
        let mut others = ranges.iter().enumerate().filter(|&(j, _)| j != i);
        if others.any(|(_, r)| written.overlaps(r)) {
            return Err(Error::PartialOverlap);
        }
    }
    Ok(())
}

/// The rows of a cross-entropy call: `n` rows of `classes` logits.
#[derive(Debug, Clone, Copy)]
struct Rows {
    n: usize,
    classes: usize,
}

/// One launch's mode and the memory it touches besides the targets, weights and outputs.
struct Launch {
    mode: CrossEntropyMode,
    logits_addr: u64,
    logits_range: AccessRange,
    grad: Option<AccessRange>,
    lse_in: Option<AccessRange>,
    dloss: Option<AccessRange>,
}
