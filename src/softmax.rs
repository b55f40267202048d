//! Forward softmax over the last dimension: validate, plan, launch.

use crate::element::Element;
use crate::error::{Error, Result};
use crate::kernel::{Launch, SoftmaxParams};
use crate::planner::{SoftmaxProblem, plan_softmax};
use crate::tensor::{DeviceTensor, Overlap};

/// `softmax(x)` over the last dimension, into a new tensor of the same shape. Asynchronous on a
/// GPU: the result is ready when read back or after `Device::synchronize`.
pub fn softmax<T: Element>(x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    if x.shape().is_empty() {
        return Err(Error::ScalarInput { op: "softmax" });
    }
    let mut y = DeviceTensor::uninit(x.device(), x.shape())?;
    softmax_into(x, &mut y)?;
    Ok(y)
}

/// `softmax(x)` over the last dimension, written to `y` (same shape and device). `y` may be the
/// very same view as `x` (in place: see [`softmax_inplace`], or pass a second view made with
/// `x.view(0, x.shape())`) but must not partly overlap it. On error nothing is written.
pub fn softmax_into<T: Element>(x: &DeviceTensor<T>, y: &mut DeviceTensor<T>) -> Result<()> {
    let Some(&cols) = x.shape().last() else {
        return Err(Error::ScalarInput { op: "softmax" });
    };
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
    if x.overlap(y) == Overlap::Partial {
        return Err(Error::PartialOverlap);
    }
    let rows = x.len().checked_div(cols).unwrap_or(0);
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (x_addr, y_addr) = (x.addr(), y.addr());
    let problem = SoftmaxProblem {
        rows,
        cols,
        dtype: T::DTYPE,
        aligned16: x_addr % 16 == 0 && y_addr % 16 == 0,
    };
    let plan = plan_softmax(&problem, &x.device().limits());
    let mut ranges = vec![y.access_range(true)];
    if x_addr != y_addr {
        ranges.push(x.access_range(false));
    }
    // Split-row plans share a small scratch buffer of per-chunk (max, sum) states.
    let workspace = match plan.workspace_floats {
        0 => None,
        n => Some(DeviceTensor::<f32>::uninit(x.device(), &[n])?),
    };
    if let Some(w) = &workspace {
        ranges.push(w.access_range(true));
    }
    let params = SoftmaxParams {
        x: x_addr,
        y: y_addr,
        rows: rows as i64,
        cols: cols as i64,
        workspace: workspace.as_ref().map_or(0, |w| w.addr()),
        chunk_cols: plan.chunk_cols as i64,
    };
    let launches: Vec<Launch> = plan
        .stages
        .iter()
        .map(|&stage| Launch {
            stage,
            params,
            ranges: ranges.clone(),
        })
        .collect();
    // The workspace is freed (stream-ordered on a GPU) after the launches are enqueued.
    x.device().launch(&launches)
}

/// `softmax(x)` over the last dimension, in place: `x` is overwritten with its probabilities. No
/// memory is allocated (beyond the small workspace of few long rows). Other views of the same
/// memory see the result once the device's stream reaches it.
pub fn softmax_inplace<T: Element>(x: &mut DeviceTensor<T>) -> Result<()> {
    if x.shape().is_empty() {
        return Err(Error::ScalarInput { op: "softmax" });
    }
    // A second view of exactly the same elements: identical views are the in-place case.
    let input = x.view(0, x.shape())?;
    softmax_into(&input, x)
}
