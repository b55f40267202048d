//! Every capacity boundary of the planners, run on the emulator at the largest size kept on chip
//! and the smallest size that is not: the block family's row (forward, `forward_f32`, and the
//! backward ops holding y and dy), the on-chip cross-entropy, and the strided family's on-chip
//! tiles (one and two rows a lane, forward and backward). Each boundary is found from the
//! planner's own choices (bisection), not from its formula, so a boundary computed without room
//! for a kernel's static shared memory is run exactly where it is wrong: the emulator faults a
//! block whose static plus dynamic shared memory passes the device's limit, and the runtime
//! refuses a plan that would (the planner's shared-memory check). Enough rows that nothing is
//! split across blocks; every result compared with the f64 reference; on each side the launch
//! that ran is the kernel the planner chose.

mod common;

use common::backward::Case;
use common::cross_entropy::{Mode, Options, PLAIN, Values, run_case};
use common::strided::{Placement, check_dim, run_backward};
use common::{ALIGNED, Forward, check_case, seeded_rng, with_forward};
use cuda_softmax::tools::check::Rng;
use cuda_softmax::tools::planner::{
    CrossEntropyMode, CrossEntropyStage, DeviceLimits, Family, KernelConfig, LaunchPlan, Op,
    SoftmaxProblem, StridedProblem, plan_cross_entropy, plan_softmax, plan_strided,
};
use cuda_softmax::{Device, Element, Reduction, bf16, f16};

/// The largest size with `on_chip(size)` true, by bisection in (lo, hi) where `on_chip(lo)`
/// holds and `on_chip(hi)` does not (longer rows never go back on chip).
fn largest_on_chip(lo: usize, hi: usize, on_chip: impl Fn(usize) -> bool) -> usize {
    assert!(on_chip(lo) && !on_chip(hi), "no boundary in ({lo}, {hi})");
    let (mut lo, mut hi) = (lo, hi);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if on_chip(mid) { lo = mid } else { hi = mid }
    }
    lo
}

/// The last operation on the emulator ran the kernels of `plan`, in order.
fn assert_ran(device: &Device, plan: &LaunchPlan, what: &str) {
    let stats = device
        .last_launch_stats()
        .expect("the emulator keeps launch stats");
    let planned: Vec<String> = plan.stages.iter().map(|s| s.kernel.name()).collect();
    assert_eq!(
        stats.kernel,
        planned.join("+"),
        "{what}: the kernels that ran"
    );
}

/// The kernel of a one-stage plan.
fn only_kernel(plan: &LaunchPlan) -> KernelConfig {
    assert_eq!(plan.stages.len(), 1, "{plan:?}");
    plan.stages[0].kernel
}

/// The planner's choice for `op` over `rows` aligned rows of `cols` elements of T.
fn last_dim_plan<T: Element>(
    op: Op,
    rows: usize,
    cols: usize,
    limits: &DeviceLimits,
) -> LaunchPlan {
    let p = SoftmaxProblem {
        op,
        rows,
        cols,
        dtype: T::DTYPE,
        aligned16: true,
    };
    plan_softmax(&p, limits)
}

/// The longest row `op`'s block family holds on chip for `rows` rows (the next goes online).
fn block_edge<T: Element>(op: Op, rows: usize, limits: &DeviceLimits) -> usize {
    let family = |cols| only_kernel(&last_dim_plan::<T>(op, rows, cols, limits)).family;
    let edge = largest_on_chip(4096, 1 << 22, |cols| {
        matches!(family(cols), Family::Block { .. })
    });
    assert!(matches!(family(edge + 1), Family::Online { .. }));
    edge
}

/// The forward ops (softmax, log-softmax, and their f32 outputs from 16-bit inputs) at the
/// longest row the block family holds in shared memory, and one element longer.
fn forward_boundary<T: Element>(device: &Device, rng: &mut Rng) {
    let limits = device.limits();
    let rows = limits.sm_count as usize; // fewer rows than SMs would split long rows
    let mut forwards = vec![(Op::Softmax, Forward::new(false, 1.0))];
    forwards.push((Op::LogSoftmax, Forward::new(true, 1.0)));
    if T::DTYPE.size_bytes() == 2 {
        for (op, log) in [(Op::SoftmaxToF32, false), (Op::LogSoftmaxToF32, true)] {
            forwards.push((
                op,
                Forward {
                    f32_out: true,
                    ..Forward::new(log, 1.0)
                },
            ));
        }
    }
    for (op, forward) in forwards {
        let plan = |cols| last_dim_plan::<T>(op, rows, cols, &limits);
        let edge = block_edge::<T>(op, rows, &limits);
        for cols in [edge, edge + 1] {
            let what = format!("{op:?} {} [{rows}x{cols}]", T::DTYPE.name());
            let x: Vec<T> = rng.logits(rows * cols, 8.0);
            with_forward(forward, || {
                check_case(device, &x, rows, cols, ALIGNED, &what)
            });
            assert_ran(device, &plan(cols), &what);
        }
    }
}

/// The backward ops hold y and dy on chip: at the longest row whose two fit, and one longer.
fn backward_boundary<T: Element>(device: &Device, rng: &mut Rng) {
    let limits = device.limits();
    let rows = limits.sm_count as usize;
    for (op, log) in [(Op::SoftmaxBackward, false), (Op::LogSoftmaxBackward, true)] {
        let plan = |cols| last_dim_plan::<T>(op, rows, cols, &limits);
        let edge = block_edge::<T>(op, rows, &limits);
        for cols in [edge, edge + 1] {
            let what = format!("{op:?} {} [{rows}x{cols}]", T::DTYPE.name());
            let case = Case::<T>::random(rng, log, 1.0, rows, cols, cols / 7);
            case.check(device, (0, 0, 0), false, &what);
            assert_ran(device, &plan(cols), &what);
        }
    }
}

/// Cross-entropy keeps a row on chip (one read of the logits) up to a vocabulary that fits in
/// shared memory beside the kernel's static memory: forward_backward and in place at that
/// vocabulary and one class more.
fn cross_entropy_boundary<T: Element>(device: &Device, rng: &mut Rng) {
    let limits = device.limits();
    // Enough rows that no row is split into chunks (4 blocks an SM).
    let rows = 4 * limits.sm_count as usize;
    let on_chip_kernel = KernelConfig {
        op: Op::CrossEntropy,
        dtype: T::DTYPE,
        family: Family::CrossEntropy {
            stage: CrossEntropyStage::OnChip,
        },
    };
    let mode = CrossEntropyMode::LossAndGradient { reduce: false };
    let plan = |v| plan_cross_entropy(rows, v, T::DTYPE, mode, &limits);
    let on_chip = |v| plan(v).stages.iter().any(|s| s.kernel == on_chip_kernel);
    let edge = largest_on_chip(1000, 1 << 22, on_chip);
    let options = Options {
        reduction: Reduction::None,
        ..PLAIN
    };
    for v in [edge, edge + 1] {
        assert_eq!(on_chip(v), v == edge, "{v} classes: {:?}", plan(v));
        for mode in [Mode::ForwardBackward, Mode::InPlace] {
            run_case::<T, i64>(device, rng, rows, v, &options, mode, 0, Values::Random);
            let what = format!("cross-entropy {mode:?} {} [{rows}x{v}]", T::DTYPE.name());
            assert_ran(device, &plan(v), &what);
        }
    }
}

/// The strided family keeps a tile's rows on chip up to a row length: at that length and one
/// more, one row a lane (odd `inner`) and two (even `inner`, tensors aligned to pairs), for the
/// forward and the backward ops.
fn strided_boundary<T: Element>(device: &Device, rng: &mut Rng) {
    let limits = device.limits();
    for (inner, aligned_pairs, placement) in [
        (33, false, Placement::Separate(1, 5)),
        (64, true, Placement::Separate(0, 2)),
    ] {
        for op in [Op::Softmax, Op::SoftmaxBackward] {
            let outer = 2;
            let plan = |n| {
                let p = StridedProblem {
                    op,
                    outer,
                    n,
                    inner,
                    dtype: T::DTYPE,
                    aligned_pairs,
                };
                plan_strided(&p, &limits)
            };
            let on_chip = |n| {
                matches!(
                    only_kernel(&plan(n)).family,
                    Family::Strided { on_chip: true, .. }
                )
            };
            let edge = largest_on_chip(2, 1 << 20, on_chip);
            for n in [edge, edge + 1] {
                let shape = [outer, n, inner];
                let what = format!("strided {op:?} {} {shape:?}", T::DTYPE.name());
                if op == Op::Softmax {
                    let x: Vec<T> = rng.logits(outer * n * inner, 8.0);
                    check_dim(device, &x, &shape, 1, placement, &what);
                } else {
                    let case = Case::<T>::random(rng, false, 1.0, outer * inner, n, n / 7);
                    let offsets = if aligned_pairs { (0, 2, 4) } else { (1, 2, 3) };
                    let got = run_backward(device, &case, &shape, 1, offsets, false);
                    case.verify(&got, "strided backward", &what);
                }
                assert_ran(device, &plan(n), &what);
            }
        }
    }
}

macro_rules! boundaries {
    ($name:ident, $dtype:ty) => {
        #[test]
        fn $name() {
            let device = Device::emulator();
            let mut rng = seeded_rng(stringify!($name));
            forward_boundary::<$dtype>(&device, &mut rng);
            backward_boundary::<$dtype>(&device, &mut rng);
            cross_entropy_boundary::<$dtype>(&device, &mut rng);
            strided_boundary::<$dtype>(&device, &mut rng);
        }
    };
}

boundaries!(f32_boundaries, f32);
boundaries!(f16_boundaries, f16);
boundaries!(bf16_boundaries, bf16);
