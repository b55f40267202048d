//! Every kernel family and dtype on the CPU SIMT emulator, in three thread-schedule orders:
//! forward, reverse, and a seeded random order per block.

mod common;

use common::{emulator, shuffled};

use cuda_softmax::{Device, EmulatorConfig, Schedule, bf16, f16};

/// One test per (dtype, schedule), so that a failure names both.
macro_rules! suite {
    ($name:ident, $dtype:ty, $device:expr) => {
        #[test]
        fn $name() {
            let device: Device = $device(stringify!($name));
            common::full_suite::<$dtype>(&device, stringify!($name));
        }
    };
}

suite!(f32_forward_schedule, f32, |_| emulator(Schedule::Forward));
suite!(f32_reverse_schedule, f32, |_| emulator(Schedule::Reverse));
suite!(f32_shuffled_schedule, f32, shuffled);
suite!(f16_forward_schedule, f16, |_| emulator(Schedule::Forward));
suite!(f16_reverse_schedule, f16, |_| emulator(Schedule::Reverse));
suite!(f16_shuffled_schedule, f16, shuffled);
suite!(bf16_forward_schedule, bf16, |_| emulator(Schedule::Forward));
suite!(bf16_reverse_schedule, bf16, |_| emulator(Schedule::Reverse));
suite!(bf16_shuffled_schedule, bf16, shuffled);
suite!(f32_warp_ahead_schedule, f32, |_| emulator(
    Schedule::WarpAhead
));
suite!(f16_warp_ahead_schedule, f16, |_| emulator(
    Schedule::WarpAhead
));
suite!(bf16_warp_ahead_schedule, bf16, |_| emulator(
    Schedule::WarpAhead
));

/// The special values (NaN, -inf, +inf, masked rows, magnitudes near the dtype's maximum) and
/// the edge shapes on the emulator build that contracts a * b + c into FMA, as nvcc does.
macro_rules! fma_suite {
    ($name:ident, $dtype:ty) => {
        #[test]
        #[cfg_attr(
            not(feature = "emulator-fma"),
            ignore = "needs the crate feature emulator-fma (on for this crate's own tests)"
        )]
        fn $name() {
            let device = Device::emulator_with(EmulatorConfig::default().fma_contraction(true));
            let mut rng = common::seeded_rng(stringify!($name));
            common::special_values::<$dtype>(&device, &mut rng);
            common::edge_shapes::<$dtype>(&device, &mut rng);
        }
    };
}

fma_suite!(f32_fma_contraction, f32);
fma_suite!(f16_fma_contraction, f16);
fma_suite!(bf16_fma_contraction, bf16);

/// One small case per warp configuration and per block family, aligned and misaligned, including
/// the longest row the block family holds (static + dynamic shared memory at the limit).
#[test]
fn family_sweep_every_dtype() {
    let device = emulator(Schedule::WarpAhead);
    let mut rng = common::seeded_rng("family_sweep_every_dtype");
    common::family_sweep::<f32>(&device, &mut rng);
    common::family_sweep::<f16>(&device, &mut rng);
    common::family_sweep::<bf16>(&device, &mut rng);
}

/// The split-row workspace: none until a split-row call, allocated once, reused by repeated
/// calls, grown (once) only by a call that needs more than it holds; clones share it.
#[test]
fn split_workspace_is_allocated_once_and_grows_only_when_needed() {
    use cuda_softmax::tools::planner::{SPLIT_MIN_COLS, SoftmaxProblem, plan_softmax};
    let device = emulator(Schedule::Forward);
    let mut rng = common::seeded_rng("split_workspace_is_allocated_once");
    let floats = |rows, cols| {
        let problem = SoftmaxProblem {
            op: cuda_softmax::tools::planner::Op::Softmax,
            rows,
            cols,
            dtype: cuda_softmax::Dtype::F32,
            aligned16: true,
        };
        plan_softmax(&problem, &device.limits()).workspace_floats
    };
    let check = |rng: &mut cuda_softmax::tools::check::Rng, rows, cols, what| {
        let x: Vec<f32> = rng.logits(rows * cols, 8.0);
        common::check_case(&device, &x, rows, cols, common::ALIGNED, what);
    };
    // Warp, block and online calls need no workspace.
    for (rows, cols) in [(4, 100), (9, 3000), (9, 30_000)] {
        assert_eq!(floats(rows, cols), 0);
        check(&mut rng, rows, cols, "no workspace");
    }
    assert_eq!(device.split_workspace_allocations(), 0);
    assert_eq!(device.split_workspace_capacity(), 0);
    // One long row: a small workspace, allocated by the first call and reused by the second.
    let cols = SPLIT_MIN_COLS + 5;
    for _ in 0..2 {
        check(&mut rng, 1, cols, "one long row");
        assert_eq!(device.split_workspace_allocations(), 1);
        assert_eq!(device.split_workspace_capacity(), floats(1, cols));
    }
    // More rows need more (max, sum) states: the workspace grows once, then is reused, by
    // clones of the device too.
    let most = device.limits().sm_count as usize - 1;
    assert!(floats(most, cols) > floats(1, cols));
    common::split_workspace_reused::<f32>(&device, &mut rng);
    assert_eq!(device.split_workspace_allocations(), 2);
    common::split_workspace_reused::<f16>(&device.clone(), &mut rng);
    check(&mut rng, 2, 4 * cols, "four times longer rows");
    assert_eq!(device.split_workspace_allocations(), 2);
}

/// Log-softmax and scaled softmax through the same checks as softmax: every family (the family
/// sweep reaches warp, block, online and split-row kernels), edge shapes, special values
/// (masked, NaN and +inf rows, magnitudes near the dtype's maximum), misaligned views, higher
/// rank and in place, each in a shuffled thread order.
macro_rules! op_suite {
    ($name:ident, $dtype:ty) => {
        #[test]
        fn $name() {
            let device = shuffled(stringify!($name));
            let mut rng = common::seeded_rng(stringify!($name));
            // Log-softmax below scale 1 too: x - max overflows f32 near the range's ends there
            // while the result is finite.
            let ops = [
                (true, 1.0),
                (false, 0.125),
                (true, 3.7),
                (false, 3.7),
                (true, 0.125),
            ];
            for (log, scale) in ops {
                common::with_forward(common::Forward::new(log, scale), || {
                    common::edge_shapes::<$dtype>(&device, &mut rng);
                    common::family_sweep::<$dtype>(&device, &mut rng);
                    common::special_values::<$dtype>(&device, &mut rng);
                    common::misaligned_views::<$dtype>(&device, &mut rng);
                    common::shapes_and_in_place::<$dtype>(&device, &mut rng);
                });
            }
        }
    };
}

op_suite!(f32_log_softmax_and_scale, f32);
op_suite!(f16_log_softmax_and_scale, f16);
op_suite!(bf16_log_softmax_and_scale, bf16);

/// `forward_f32`: f16/bf16 in, f32 out, held to f32's tolerance (a kernel that rounded through the
/// input's type, or flushed the small probabilities it cannot hold, fails). Softmax and
/// log-softmax at several scales through every family (the family sweep), edge shapes, special
/// values, misaligned views, higher rank, and every dimension of rank-1 to rank-4 tensors (the
/// strided family), in a shuffled thread order; f32 input takes the plain forward kernels.
macro_rules! f32_output_suite {
    ($name:ident, $dtype:ty) => {
        #[test]
        fn $name() {
            let device = shuffled(stringify!($name));
            let mut rng = common::seeded_rng(stringify!($name));
            let ops = [(false, 1.0), (true, 1.0), (false, 3.7), (true, 0.125)];
            for (log, scale) in ops {
                let op = common::Forward {
                    f32_out: true,
                    ..common::Forward::new(log, scale)
                };
                common::with_forward(op, || {
                    common::edge_shapes::<$dtype>(&device, &mut rng);
                    common::family_sweep::<$dtype>(&device, &mut rng);
                    common::special_values::<$dtype>(&device, &mut rng);
                    common::misaligned_views::<$dtype>(&device, &mut rng);
                    common::misaligned_long_rows::<$dtype>(&device, &mut rng);
                    common::shapes_and_in_place::<$dtype>(&device, &mut rng);
                    common::strided::forward_dims::<$dtype>(&device, &mut rng);
                });
            }
        }
    };
}

f32_output_suite!(f16_forward_f32, f16);
f32_output_suite!(bf16_forward_f32, bf16);
f32_output_suite!(f32_forward_f32, f32);

/// Softmax and log-softmax backward: every family, masked elements and rows, views, in place.
macro_rules! backward_suite {
    ($name:ident, $dtype:ty) => {
        #[test]
        fn $name() {
            let device = shuffled(stringify!($name));
            let mut rng = common::seeded_rng(stringify!($name));
            common::backward::backward_suite::<$dtype>(&device, &mut rng);
        }
    };
}

backward_suite!(f32_backward, f32);
backward_suite!(f16_backward, f16);
backward_suite!(bf16_backward, bf16);

/// logsumexp: every family, special rows, views, shapes.
macro_rules! logsumexp_suite {
    ($name:ident, $dtype:ty) => {
        #[test]
        fn $name() {
            let device = shuffled(stringify!($name));
            let mut rng = common::seeded_rng(stringify!($name));
            common::backward::logsumexp_suite::<$dtype>(&device, &mut rng);
        }
    };
}

logsumexp_suite!(f32_logsumexp, f32);
logsumexp_suite!(f16_logsumexp, f16);
logsumexp_suite!(bf16_logsumexp, bf16);

/// Every op over every dimension of rank-1 to rank-4 tensors (the strided family for dimensions
/// other than the last): softmax at scales 1 and 0.125, log-softmax at 1 and 3.7, both backward
/// ops, views, in place and special rows, in a shuffled thread order.
macro_rules! dims_suite {
    ($name:ident, $dtype:ty) => {
        #[test]
        fn $name() {
            let device = shuffled(stringify!($name));
            let mut rng = common::seeded_rng(stringify!($name));
            let ops = [(false, 1.0), (true, 1.0), (false, 0.125), (true, 3.7)];
            for (log, scale) in ops {
                common::with_forward(common::Forward::new(log, scale), || {
                    common::strided::forward_dims::<$dtype>(&device, &mut rng);
                });
            }
            common::strided::backward_dims::<$dtype>(&device, &mut rng);
        }
    };
}

dims_suite!(f32_every_dim, f32);
dims_suite!(f16_every_dim, f16);
dims_suite!(bf16_every_dim, bf16);

/// The strided family in the other thread orders (forward, reverse, warp-ahead): its warps
/// meet at barriers to merge their shares of a row, and each thread reads back only the shared
/// memory it wrote.
#[test]
fn every_dim_in_every_schedule() {
    let mut rng = common::seeded_rng("every_dim_in_every_schedule");
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::WarpAhead] {
        let device = emulator(schedule);
        common::with_forward(common::SOFTMAX, || {
            common::strided::forward_dims::<f32>(&device, &mut rng);
        });
        common::with_forward(common::Forward::new(true, 3.7), || {
            common::strided::forward_dims::<bf16>(&device, &mut rng);
        });
        common::strided::backward_dims::<f16>(&device, &mut rng);
    }
}
