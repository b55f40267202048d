//! The ops: what a kernel computes from each row, and the dtypes each has entry points for.

use super::Dtype;

/// What a kernel computes from each row. Every op has entry points in every family, named
/// `{op}_{family}_{dtype}...` (see `KernelConfig::name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// softmax(scale * x).
    Softmax,
    /// log_softmax(scale * x) = scale * (x - max) - log(sum), from the row's (max, sum).
    LogSoftmax,
    /// dx = scale * y * (dy - sum(dy * y)) from the forward output y and the gradient dy.
    SoftmaxBackward,
    /// dx = scale * (dy - exp(y) * sum(dy)) from the log-softmax output y and dy.
    LogSoftmaxBackward,
    /// One f32 a row: scale * max + log(sum(exp(scale * (x - max)))).
    LogSumExp,
    /// Softmax of f16/bf16 input with f32 output (`Softmax::forward_f32`).
    SoftmaxToF32,
    /// Log-softmax of f16/bf16 input with f32 output.
    LogSoftmaxToF32,
    /// Fused softmax cross-entropy (`CrossEntropy`): the stages of
    /// `Family::CrossEntropy`, planned by `plan_cross_entropy`.
    CrossEntropy,
}

impl Op {
    /// Every op, in the order of `KernelConfig::all()`.
    pub const ALL: [Op; 8] = [
        Op::Softmax,
        Op::LogSoftmax,
        Op::SoftmaxBackward,
        Op::LogSoftmaxBackward,
        Op::LogSumExp,
        Op::SoftmaxToF32,
        Op::LogSoftmaxToF32,
        Op::CrossEntropy,
    ];

    /// The prefix of its entry points' names.
    pub fn name(self) -> &'static str {
        match self {
            Op::Softmax => "softmax",
            Op::LogSoftmax => "log_softmax",
            Op::SoftmaxBackward => "softmax_backward",
            Op::LogSoftmaxBackward => "log_softmax_backward",
            Op::LogSumExp => "logsumexp",
            Op::SoftmaxToF32 => "softmax_to_f32",
            Op::LogSoftmaxToF32 => "log_softmax_to_f32",
            Op::CrossEntropy => "cross_entropy",
        }
    }

    /// The input dtypes the op has entry points for: every dtype, except that the f32-output
    /// ops take f16 and bf16 only (f32 input has `Softmax` / `LogSoftmax`).
    pub const fn dtypes(self) -> &'static [Dtype] {
        match self {
            Op::SoftmaxToF32 | Op::LogSoftmaxToF32 => &[Dtype::F16, Dtype::Bf16],
            _ => &Dtype::ALL,
        }
    }

    /// The storage type of the op's output for `input`: f32 for the `_to_f32` ops and
    /// logsumexp, else the input's.
    pub fn output_dtype(self, input: Dtype) -> Dtype {
        match self {
            Op::SoftmaxToF32 | Op::LogSoftmaxToF32 | Op::LogSumExp => Dtype::F32,
            _ => input,
        }
    }

    /// The forward op with f32 output for `Softmax` and `LogSoftmax`; `None` for the others.
    pub fn with_f32_output(self) -> Option<Op> {
        match self {
            Op::Softmax => Some(Op::SoftmaxToF32),
            Op::LogSoftmax => Some(Op::LogSoftmaxToF32),
            _ => None,
        }
    }

    /// Whether the op reads a second input (dy).
    pub fn is_backward(self) -> bool {
        matches!(self, Op::SoftmaxBackward | Op::LogSoftmaxBackward)
    }

    /// Whether the op has a shared-memory block family (the row held on chip). logsumexp needs
    /// none: its block kernel reads x once without holding it.
    pub const fn has_block_family(self) -> bool {
        !matches!(self, Op::LogSumExp | Op::CrossEntropy)
    }

    /// Tensors of a row's shape the op reads: 2 (y and dy) for the backward ops, else 1.
    pub fn inputs(self) -> usize {
        if self.is_backward() { 2 } else { 1 }
    }

    /// Whether the op has the strided-dimension family (rows `inner` apart: a softmax over a
    /// dimension other than the last). logsumexp is over the last dimension only.
    pub const fn has_strided_family(self) -> bool {
        !matches!(self, Op::LogSumExp | Op::CrossEntropy)
    }

    /// Whether the op's row statistics are the (max, sum) of x alone, the same code for every
    /// such op: their split-row stats pass is one entry point a dtype.
    pub fn shares_forward_stats(self) -> bool {
        self.inputs() == 1 && !matches!(self, Op::CrossEntropy)
    }

    #[cfg(feature = "tools")]
    /// Whether the op writes one value a row rather than a row.
    pub fn writes_one_per_row(self) -> bool {
        matches!(self, Op::LogSumExp)
    }
}
