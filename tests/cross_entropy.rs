//! Fused cross-entropy on the CPU SIMT emulator against the f64 reference: the shared suite
//! (tests/common/cross_entropy.rs: every option alone and together, every dtype of logits, i32
//! and i64 targets, the vocabulary and batch sizes of the edge list, odd view offsets, values
//! near the dtype's maximum and large offsets) in several thread orders; then the semantics of
//! ignored, invalid, all -inf and zero-weight rows, the bad-input errors (nothing written) and
//! the traffic of each mode.

mod common;

use common::cross_entropy::*;
use common::seeded_rng;
use cuda_softmax::tools::check::Rng;
use cuda_softmax::tools::planner::{
    CrossEntropyMode, CrossEntropyStage, Family, Stage, plan_cross_entropy,
};
use cuda_softmax::tools::reference::cross_entropy::{
    CeOptions, cross_entropy_backward, cross_entropy_forward,
};
use cuda_softmax::{
    CrossEntropy, Device, DeviceTensor, Dtype, Element, EmulatorConfig, Error, Reduction, Schedule,
    bf16, f16,
};

fn emulator(schedule: Schedule) -> Device {
    Device::emulator_with(EmulatorConfig::default().schedule(schedule))
}

macro_rules! suites {
    ($($name:ident: $t:ty, $schedule:expr;)*) => {$(
        #[test]
        fn $name() {
            suite::<$t>(&emulator($schedule), stringify!($name));
        }
    )*};
}

// Every dtype, and the four thread orders between them (a missing barrier changes a result
// under some order). About 30 s of CPU each.
suites! {
    f32_shuffled: f32, Schedule::Shuffled { seed: Rng::seed_from_env() };
    f16_reverse: f16, Schedule::Reverse;
    bf16_warp_ahead: bf16, Schedule::WarpAhead;
    bf16_forward: bf16, Schedule::Forward;
}

#[test]
fn values_near_the_dtype_maximum_emulator() {
    values_near_the_dtype_maximum(&emulator(Schedule::Reverse));
}

#[test]
fn large_common_offset_emulator() {
    large_common_offset(&emulator(Schedule::Forward));
}

/// Every row ignored: loss 0 under Mean and Sum (not NaN), gradient 0; an ignored row of only
/// -inf logits too. A real target on an all -inf row: loss +inf, gradient NaN (documented).
#[test]
fn ignored_and_all_neg_inf_rows() {
    let device = emulator(Schedule::Forward);
    let inf = f32::INFINITY;
    let logits = f32_tensor(
        &device,
        &[1.0, 2.0, 3.0, -inf, -inf, -inf, 0.5, -inf, 2.0],
        &[3, 3],
    );
    let all_ignored = DeviceTensor::<i64>::from_host(&device, &[-100, -100, -100], &[3]).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let ce = CrossEntropy::default().z_loss(0.1).reduction(reduction);
        let (out, grad) = ce.forward_backward(&logits, &all_ignored).unwrap();
        assert_eq!(out.loss.to_host().unwrap(), [0.0]);
        assert_eq!(out.z_loss.to_host().unwrap(), [0.0]);
        assert!(grad.to_host().unwrap().iter().all(|&g| g == 0.0));
    }
    let targets = DeviceTensor::<i32>::from_host(&device, &[2, 0, 1], &[3]).unwrap();
    let ce = CrossEntropy::default().reduction(Reduction::None);
    let (out, grad) = ce.forward_backward(&logits, &targets).unwrap();
    let loss = out.loss.to_host().unwrap();
    assert!(loss[0].is_finite() && loss[1] == inf, "{loss:?}");
    // Row 2's target logit is -inf: +inf loss, a finite gradient.
    assert_eq!(loss[2], inf);
    let g = grad.to_host().unwrap();
    assert!(g[3..6].iter().all(|v| v.is_nan()), "{g:?}");
    assert!(
        g[0..3].iter().chain(&g[6..]).all(|v| v.is_finite()),
        "{g:?}"
    );
    assert_eq!(out.lse.to_host().unwrap()[1], -inf);
    // Ignored, the all -inf row is 0 like any other.
    let targets = DeviceTensor::<i32>::from_host(&device, &[2, -100, 0], &[3]).unwrap();
    let (out, grad) = ce.forward_backward(&logits, &targets).unwrap();
    assert_eq!(out.loss.to_host().unwrap()[1], 0.0);
    assert!(grad.to_host().unwrap()[3..6].iter().all(|&v| v == 0.0));
}

/// A target outside [0, V) that is not ignore_index: an error naming the row and the target
/// before anything is written (negative, == V, huge; i32 and i64); unchecked, the row's loss
/// and gradient are NaN and the other rows are right.
#[test]
fn invalid_targets_are_reported_and_never_used() {
    let device = emulator(Schedule::Reverse);
    let v = 40;
    let mut rng = seeded_rng("invalid_targets_are_reported_and_never_used");
    let x: Vec<f32> = rng.logits(5 * v, 3.0);
    for bad in [-1i64, v as i64, 1 << 40, i64::MAX, i64::MIN] {
        let targets = [3, 7, bad, 1, bad];
        let t = DeviceTensor::<i64>::from_host(&device, &targets, &[5]).unwrap();
        let (x_all, mut logits) = upload(&device, &x, &[5, v], 1);
        let err = CrossEntropy::default()
            .forward_backward_inplace(&mut logits, &t)
            .unwrap_err();
        assert_eq!(
            err,
            Error::InvalidTarget {
                row: 2,
                target: bad,
                classes: v
            }
        );
        assert!(err.to_string().contains("row 2"), "{err}");
        assert_eq!(logits.to_host().unwrap(), x, "nothing written");
        untouched_outside(&x_all, 1, 5 * v);
        // Unchecked: NaN rows, the others as the reference says (Mean over the valid rows).
        let ce = CrossEntropy::default()
            .check_targets(false)
            .reduction(Reduction::None);
        let (out, grad) = ce.forward_backward(&logits, &t).unwrap();
        let loss = out.loss.to_host().unwrap();
        assert!(loss[2].is_nan() && loss[4].is_nan(), "{loss:?}");
        let g = grad.to_host().unwrap();
        assert!(g[2 * v..3 * v].iter().all(|x| x.is_nan()));
        let mean = CrossEntropy::default().check_targets(false);
        let (out, grad) = mean.forward_backward(&logits, &t).unwrap();
        assert!(out.loss.to_host().unwrap()[0].is_nan());
        let x64: Vec<f64> = x.iter().map(|&v| v.into()).collect();
        let want = cross_entropy_backward(&x64, v, &targets, &CeOptions::default(), &[1.0]);
        check_grad(&grad.to_host().unwrap(), &want, "invalid rows");
    }
    let t32 = DeviceTensor::<i32>::from_host(&device, &[0, i32::MAX, 0, 0, 0], &[5]).unwrap();
    let (_, logits) = upload(&device, &x, &[5, v], 0);
    assert_eq!(
        CrossEntropy::default().forward(&logits, &t32).unwrap_err(),
        Error::InvalidTarget {
            row: 1,
            target: i32::MAX.into(),
            classes: v
        }
    );
    // ignore_index inside the vocabulary: that class is ignored, not invalid.
    let t = DeviceTensor::<i32>::from_host(&device, &[0, 1, 2, 0, 1], &[5]).unwrap();
    let out = CrossEntropy::default()
        .ignore_index(Some(0))
        .reduction(Reduction::None)
        .forward(&logits, &t)
        .unwrap();
    let loss = out.loss.to_host().unwrap();
    assert_eq!((loss[0], loss[3]), (0.0, 0.0));
    assert!(loss[1] > 0.0 && loss[2] > 0.0);
}

/// Each bad input is an error, and nothing is written (the logits of the in-place op are
/// unchanged).
#[test]
fn bad_input_is_rejected_and_nothing_written() {
    let device = emulator(Schedule::Forward);
    let other = emulator(Schedule::Forward);
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.25).collect();
    let targets = DeviceTensor::<i64>::from_host(&device, &[0, 1, 2], &[3]).unwrap();
    let weight = f32_tensor(&device, &[1.0; 4], &[4]);
    let short_weight = f32_tensor(&device, &[1.0; 3], &[3]);
    let foreign_weight = f32_tensor(&other, &[1.0; 4], &[4]);
    let foreign_targets = DeviceTensor::<i64>::from_host(&other, &[0, 1, 2], &[3]).unwrap();
    let two_targets = DeviceTensor::<i64>::from_host(&device, &[0, 1], &[2]).unwrap();
    let base = CrossEntropy::default();
    let cases: Vec<(&str, CrossEntropy, &DeviceTensor<i64>)> = vec![
        ("smoothing -0.1", base.label_smoothing(-0.1), &targets),
        ("smoothing 1.5", base.label_smoothing(1.5), &targets),
        ("smoothing NaN", base.label_smoothing(f32::NAN), &targets),
        ("z -1", base.z_loss(-1.0), &targets),
        ("z inf", base.z_loss(f32::INFINITY), &targets),
        ("softcap 0", base.softcap(Some(0.0)), &targets),
        ("softcap -2", base.softcap(Some(-2.0)), &targets),
        (
            "weight length 3",
            base.weight(Some(&short_weight)),
            &targets,
        ),
        (
            "weight elsewhere",
            base.weight(Some(&foreign_weight)),
            &targets,
        ),
        ("targets elsewhere", base, &foreign_targets),
        ("targets length 2", base, &two_targets),
    ];
    for (what, ce, t) in cases {
        let mut logits = f32_tensor(&device, &x, &[3, 4]);
        let err = ce.forward_backward_inplace(&mut logits, t).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadArgument { .. } | Error::DeviceMismatch | Error::ShapeMismatch { .. }
            ),
            "{what}: {err:?}"
        );
        assert_eq!(logits.to_host().unwrap(), x, "{what}: logits changed");
        assert!(ce.forward(&logits, t).is_err(), "{what}: forward");
    }
    let _ = weight;
    // V == 0 and a scalar.
    let empty = DeviceTensor::<f32>::zeros(&device, &[3, 0]).unwrap();
    assert!(matches!(
        base.forward(&empty, &targets).unwrap_err(),
        Error::BadArgument { .. }
    ));
    // backward: lse and dloss shapes.
    let logits = f32_tensor(&device, &x, &[3, 4]);
    let lse = f32_tensor(&device, &[0.0; 3], &[3]);
    let dloss = f32_tensor(&device, &[1.0], &[1]);
    let dloss3 = f32_tensor(&device, &[1.0; 3], &[3]);
    assert!(base.backward(&logits, &targets, &lse, &dloss3).is_err());
    assert!(base.backward(&logits, &targets, &dloss, &dloss).is_err());
    assert!(
        base.reduction(Reduction::None)
            .backward(&logits, &targets, &lse, &dloss)
            .is_err()
    );
    let foreign_lse = f32_tensor(&other, &[0.0; 3], &[3]);
    assert_eq!(
        base.backward(&logits, &targets, &foreign_lse, &dloss)
            .unwrap_err(),
        Error::DeviceMismatch
    );
}

/// No rows: Sum and Mean give 0, None an empty loss; nothing is launched.
#[test]
fn empty_batch() {
    let device = emulator(Schedule::Forward);
    let logits = DeviceTensor::<bf16>::zeros(&device, &[0, 7]).unwrap();
    let targets = DeviceTensor::<i32>::zeros(&device, &[0]).unwrap();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let (out, grad) = CrossEntropy::default()
            .reduction(reduction)
            .forward_backward(&logits, &targets)
            .unwrap();
        assert_eq!(out.loss.to_host().unwrap(), [0.0]);
        assert_eq!(out.lse.shape(), [0]);
        assert_eq!(grad.shape(), [0, 7]);
    }
    let out = CrossEntropy::default()
        .reduction(Reduction::None)
        .forward(&logits, &targets)
        .unwrap();
    assert_eq!(out.loss.shape(), [0]);
}

/// Leading dimensions are rows: logits [2, 3, V] with targets [6] (or [2, 3]).
#[test]
fn leading_dimensions_are_rows() {
    let device = emulator(Schedule::Forward);
    let mut rng = seeded_rng("leading_dimensions_are_rows");
    let v = 50;
    let x: Vec<f32> = rng.logits(6 * v, 3.0);
    let t: Vec<i64> = (0..6).map(|_| rng.below(v) as i64).collect();
    let logits = f32_tensor(&device, &x, &[2, 3, v]);
    let flat = f32_tensor(&device, &x, &[6, v]);
    let t_2d = DeviceTensor::from_host(&device, &t, &[2, 3]).unwrap();
    let t_1d = DeviceTensor::from_host(&device, &t, &[6]).unwrap();
    let a = CrossEntropy::default().forward(&logits, &t_2d).unwrap();
    let b = CrossEntropy::default().forward(&flat, &t_1d).unwrap();
    assert_eq!(a.loss.to_host().unwrap(), b.loss.to_host().unwrap());
}

/// Traffic per mode (emulator counters over every stage): the loss reads the logits once, for
/// every vocabulary size and row count (split or not); forward_backward reads them once and
/// writes the gradient once where rows fit on chip (1.0x of one read and one write), else reads
/// them twice (1.5x). The targets and the per-row states are counted as the small extra they
/// are.
#[test]
fn traffic_per_mode() {
    let device = emulator(Schedule::Forward);
    let mut rng = seeded_rng("traffic_per_mode");
    for &(n, v) in &[(64, 1000), (2, 100_000), (1, 262_147)] {
        let x: Vec<bf16> = rng.logits(n * v, 3.0);
        let t: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
        let logits = DeviceTensor::from_host(&device, &x, &[n, v]).unwrap();
        let targets = DeviceTensor::from_host(&device, &t, &[n]).unwrap();
        let ce = CrossEntropy::default().check_targets(false);
        let bytes = (n * v * 2) as f64;
        ce.forward(&logits, &targets).unwrap();
        let s = device.last_launch_stats().unwrap();
        // Besides the logits: about 60 bytes a row (the target twice, its logit, the chunk
        // and row states) and the single blocks' few words.
        let extra = (64 * n + 4096) as u64;
        let logits_bytes = (n * v * 2) as u64;
        assert!(
            (logits_bytes..logits_bytes + extra).contains(&s.kernel_bytes_read),
            "[{n}, {v}] forward read {} bytes",
            s.kernel_bytes_read
        );
        assert!(s.kernel_bytes_written < extra);
        ce.forward_backward(&logits, &targets).unwrap();
        let s = device.last_launch_stats().unwrap();
        let on_chip = s.kernel.contains("on_chip");
        assert_eq!(on_chip, n == 64, "[{n}, {v}]: {}", s.kernel);
        let reads = if on_chip { 1 } else { 2 };
        let (read, written) = (
            s.kernel_bytes_read as f64 / bytes,
            s.kernel_bytes_written as f64 / bytes,
        );
        assert!(
            (reads * logits_bytes..reads * logits_bytes + extra).contains(&s.kernel_bytes_read),
            "[{n}, {v}] read {read:.4}x"
        );
        assert!(
            (logits_bytes..logits_bytes + extra).contains(&s.kernel_bytes_written),
            "[{n}, {v}] wrote {written:.4}x"
        );
        println!(
            "[{n}, {v}] bf16: forward reads 1x; forward_backward ({}) read {read:.4}x + wrote {written:.4}x = {:.3}x of read+write; {:.1}% of accesses 16 bytes wide",
            if on_chip { "on chip" } else { "two reads" },
            (read + written) / 2.0,
            100.0 * s.accesses_16b as f64 / s.accesses as f64
        );
    }
}

/// Classes weighted 0, with -inf logits (a masked, zero-weighted padding vocabulary): they add
/// nothing (no 0 * inf = NaN); a target of weight 0 gives loss 0 for its row; under Mean, rows
/// that count but weigh 0 in total give NaN (PyTorch's 0 / 0), while every row ignored gives 0.
#[test]
fn zero_weights() {
    let device = emulator(Schedule::Forward);
    let inf = f32::INFINITY;
    let v = 6;
    let x = [
        1.0, 2.0, 0.5, -1.0, -inf, -inf, //
        0.0, 3.0, 1.0, 2.0, -inf, -inf, //
        2.0, 2.0, 2.0, 1.0, -inf, -inf,
    ];
    let w = [1.0, 0.0, 2.0, 0.5, 0.0, 0.0];
    let logits = f32_tensor(&device, &x, &[3, v]);
    let weight = f32_tensor(&device, &w, &[v]);
    let x64: Vec<f64> = x.iter().map(|&v| v.into()).collect();
    let w64: Vec<f64> = w.iter().map(|&v| v.into()).collect();
    for (targets, reduction) in [
        ([0i64, 1, 3], Reduction::Mean),
        ([1, 2, 3], Reduction::None),
        ([1, 1, 1], Reduction::Sum),
        ([1, 1, 1], Reduction::Mean),
    ] {
        let t = DeviceTensor::from_host(&device, &targets, &[3]).unwrap();
        let ce = CrossEntropy::default()
            .weight(Some(&weight))
            .label_smoothing(0.2)
            .reduction(reduction);
        let (out, grad) = ce.forward_backward(&logits, &t).unwrap();
        let o = CeOptions {
            label_smoothing: 0.2,
            weight: Some(&w64),
            reduction,
            ..CeOptions::default()
        };
        let want = cross_entropy_forward(&x64, v, &targets, &o);
        let detail = format!("targets {targets:?}, {reduction:?}");
        check_loss(&out, &want, &detail);
        let dloss = vec![1.0; want.loss.len()];
        let want_grad = cross_entropy_backward(&x64, v, &targets, &o, &dloss);
        check_grad(&grad.to_host().unwrap(), &want_grad, &detail);
        if targets == [1, 1, 1] && reduction == Reduction::Mean {
            assert!(out.loss.to_host().unwrap()[0].is_nan(), "0 / 0 weight");
        }
    }
}

/// Runs `mode` on a random case whose first classes weigh `unused` and are no row's target
/// (their targets moved past them; ignored rows stay ignored), checked against the reference;
/// returns the gradient.
fn with_untargeted_weights<T: Element>(
    device: &Device,
    rng: &mut Rng,
    (n, v): (usize, usize),
    o: &Options,
    mode: Mode,
    unused: &[f32],
) -> Vec<T> {
    let k = unused.len() as i64;
    let edit = |inputs: &mut Inputs<T, i64>| {
        inputs.weight[..unused.len()].copy_from_slice(unused);
        for t in inputs.targets.iter_mut().filter(|t| (0..k).contains(*t)) {
            *t += k;
        }
    };
    run_case_with(device, rng, n, v, o, mode, 1, Values::Random, edit).1
}

/// The shapes of each family: rows on chip (forward_backward), and rows split into chunks
/// (stats, finish and grad over several blocks a row); backward's grad stage over one chunk a
/// row and over several.
const FAMILY_SHAPES: [(usize, usize); 2] = [(4, 100), (2, 5000)];
const GRADIENT_MODES: [Mode; 3] = [Mode::ForwardBackward, Mode::InPlace, Mode::Backward];

/// FAMILY_SHAPES take the families they stand for on the emulator, in every dtype.
#[test]
fn family_shapes_take_each_family() {
    let limits = emulator(Schedule::Forward).limits();
    let both = CrossEntropyMode::LossAndGradient { reduce: true };
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let plan = |(n, v), mode| plan_cross_entropy(n, v, dtype, mode, &limits).stages;
        let on_chip = |stages: &[Stage]| {
            let on_chip = Family::CrossEntropy {
                stage: CrossEntropyStage::OnChip,
            };
            stages.iter().any(|s| s.kernel.family == on_chip)
        };
        let chunks = |stages: &[Stage]| stages.last().map_or(0, |s| s.grid.0);
        let (small, long) = (FAMILY_SHAPES[0], FAMILY_SHAPES[1]);
        assert!(on_chip(&plan(small, both)), "{dtype:?}");
        assert!(!on_chip(&plan(long, both)) && chunks(&plan(long, both)) > 1);
        let backward = CrossEntropyMode::GradientFromLse;
        assert_eq!(chunks(&plan(small, backward)), 1, "{dtype:?}");
        assert!(chunks(&plan(long, backward)) > 1, "{dtype:?}");
    }
}

#[track_caller]
fn assert_finite<T: Element>(grad: &[T], what: &str) {
    let bad = grad.iter().filter(|g| !g.to_f64().is_finite()).count();
    assert_eq!(
        bad,
        0,
        "{what}: {bad} of {} gradient elements not finite",
        grad.len()
    );
}

/// Without smoothing a class weight enters only the loss of the rows that target it: a NaN or
/// +inf weight on a class no row targets, or two of 3e38 (whose sum overflows f32), leave every
/// gradient element finite and as the reference has it. (The gradient multiplied the weights'
/// sum by e = 0: NaN everywhere while the loss was right.) Every entry point, dtype and family.
#[test]
fn weights_no_loss_term_uses_leave_the_gradient_finite() {
    let device = emulator(Schedule::Reverse);
    let mut rng = seeded_rng("weights_no_loss_term_uses_leave_the_gradient_finite");
    let unused_sets: [&[f32]; 3] = [&[f32::NAN], &[f32::INFINITY], &[3e38, 3e38]];
    for unused in unused_sets {
        for shape in FAMILY_SHAPES {
            for (i, mode) in GRADIENT_MODES.into_iter().enumerate() {
                let reduction = [Reduction::Mean, Reduction::None][i % 2];
                let o = Options {
                    weighted: true,
                    z: 0.01,
                    reduction,
                    ..PLAIN
                };
                let what = format!("weights {unused:?}, {shape:?}, {mode:?}");
                let g = with_untargeted_weights::<f32>(&device, &mut rng, shape, &o, mode, unused);
                assert_finite(&g, &what);
                let g = with_untargeted_weights::<f16>(&device, &mut rng, shape, &o, mode, unused);
                assert_finite(&g, &what);
                let g = with_untargeted_weights::<bf16>(&device, &mut rng, shape, &o, mode, unused);
                assert_finite(&g, &what);
            }
        }
    }
}

/// With smoothing every class weight is used. Two weights of 3e38: their sum overflows f32 but
/// the smoothing needs only sum_j w_j / V, which does not: a finite loss and gradient, as the
/// reference has them (f32, and bf16 whose range holds the gradient). A NaN weight on a class
/// no row targets: every row's loss and gradient are NaN.
#[test]
fn smoothing_uses_every_class_weight() {
    let device = emulator(Schedule::Forward);
    let mut rng = seeded_rng("smoothing_uses_every_class_weight");
    let o = Options {
        weighted: true,
        smoothing: 0.1,
        ignore_index: None,
        ..PLAIN
    };
    let huge: &[f32] = &[3e38, 3e38];
    for shape in FAMILY_SHAPES {
        for mode in GRADIENT_MODES {
            let what = format!("{shape:?}, {mode:?}");
            let g = with_untargeted_weights::<f32>(&device, &mut rng, shape, &o, mode, huge);
            assert_finite(&g, &what);
            let g = with_untargeted_weights::<bf16>(&device, &mut rng, shape, &o, mode, huge);
            assert_finite(&g, &what);
            let nan = &[f32::NAN];
            let g = with_untargeted_weights::<f16>(&device, &mut rng, shape, &o, mode, nan);
            assert!(g.iter().all(|g| g.to_f64().is_nan()), "{what}: NaN weight");
        }
    }
}

/// Logits [3, 4] whose first elements' bit patterns are the i32 targets [1, 3, 0] (tiny
/// subnormals): targets read from the logits' memory are valid ones.
fn logits_holding_targets() -> Vec<f32> {
    let mut x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin()).collect();
    for (x, t) in x.iter_mut().zip([1u32, 3, 0]) {
        *x = f32::from_bits(t);
    }
    x
}

/// Class weights over the logits of forward_backward_inplace: the gradient would be written
/// over weights other blocks still read (loss -0.29 instead of 0.39, results that changed from
/// run to run). Partly overlapping or the very same bytes (one row of logits, its V weights):
/// Error::PartialOverlap, nothing written.
#[test]
fn weights_over_the_inplace_logits_are_refused() {
    let device = emulator(Schedule::Forward);
    let x = logits_holding_targets();
    let targets = DeviceTensor::<i64>::from_host(&device, &[1, 3, 0], &[3]).unwrap();
    for (shape, at) in [([3, 4], 0), ([3, 4], 6), ([3, 4], 8), ([1, 12], 0)] {
        let mut logits = f32_tensor(&device, &x, &shape);
        let weight = logits.view(at, &[shape[1]]).unwrap();
        let ce = CrossEntropy::default().weight(Some(&weight));
        let t = targets.view(0, &[shape[0]]).unwrap();
        let err = ce.forward_backward_inplace(&mut logits, &t).unwrap_err();
        assert_eq!(err, Error::PartialOverlap, "weights at {at} of {shape:?}");
        assert_eq!(logits.to_host().unwrap(), x, "weights at {at} of {shape:?}");
    }
}

/// Targets over the logits of forward_backward_inplace (i32 and i64, read as valid classes):
/// Error::PartialOverlap, checked before the targets' values, nothing written.
#[test]
fn targets_over_the_inplace_logits_are_refused() {
    let device = emulator(Schedule::Forward);
    let x = logits_holding_targets();
    let mut logits = f32_tensor(&device, &x, &[3, 4]);
    let addr = logits.device_addr();
    // SAFETY: the views read 12 and 24 bytes inside the logits' 48, which outlive them; the
    // calls below are refused before anything is written (and the emulator finishes every
    // launch before it returns, so even a wrong write would not overlap a read).
    let (t32, t64) = unsafe {
        (
            DeviceTensor::<i32>::from_raw_parts(&device, addr, &[3]).unwrap(),
            DeviceTensor::<i64>::from_raw_parts(&device, addr + 8, &[3]).unwrap(),
        )
    };
    assert_eq!(t32.to_host().unwrap(), [1, 3, 0], "valid targets");
    let ce = CrossEntropy::default();
    assert_eq!(
        ce.forward_backward_inplace(&mut logits, &t32).unwrap_err(),
        Error::PartialOverlap
    );
    assert_eq!(
        ce.check_targets(false)
            .forward_backward_inplace(&mut logits, &t64)
            .unwrap_err(),
        Error::PartialOverlap
    );
    assert_eq!(logits.to_host().unwrap(), x);
}

/// Inputs that share memory with other inputs but with nothing written are accepted, and give
/// the results of separate copies bit for bit: class weights and targets over the logits of
/// forward_backward, and backward's lse, dloss, weights and targets over its logits. (backward
/// and forward_backward write only tensors they make, so none of their inputs can alias an
/// output; the in-place op is the one whose output is caller memory.)
#[test]
fn inputs_may_share_memory_with_inputs() {
    let device = emulator(Schedule::Forward);
    let x = logits_holding_targets();
    let logits = f32_tensor(&device, &x, &[3, 4]);
    // SAFETY: reads the logits' first 12 bytes, alive (and never written) for the whole test.
    let t_alias =
        unsafe { DeviceTensor::<i32>::from_raw_parts(&device, logits.device_addr(), &[3]) };
    let t_alias = t_alias.unwrap();
    let targets = DeviceTensor::<i32>::from_host(&device, &[1, 3, 0], &[3]).unwrap();
    let w_alias = logits.view(4, &[4]).unwrap();
    let w_copy = f32_tensor(&device, &x[4..8], &[4]);
    let (lse_alias, dloss_alias) = (
        logits.view(8, &[3]).unwrap(),
        logits.view(11, &[1]).unwrap(),
    );
    let (lse_copy, dloss_copy) = (
        f32_tensor(&device, &x[8..11], &[3]),
        f32_tensor(&device, &x[11..], &[1]),
    );
    let shared = CrossEntropy::default()
        .label_smoothing(0.1)
        .weight(Some(&w_alias));
    let apart = shared.weight(Some(&w_copy));
    let (out_shared, g_shared) = shared.forward_backward(&logits, &t_alias).unwrap();
    let (out_apart, g_apart) = apart.forward_backward(&logits, &targets).unwrap();
    assert_eq!(
        out_shared.loss.to_host().unwrap(),
        out_apart.loss.to_host().unwrap()
    );
    assert_eq!(g_shared.to_host().unwrap(), g_apart.to_host().unwrap());
    let g_shared = shared
        .backward(&logits, &t_alias, &lse_alias, &dloss_alias)
        .unwrap();
    let g_apart = apart
        .backward(&logits, &targets, &lse_copy, &dloss_copy)
        .unwrap();
    assert_eq!(g_shared.to_host().unwrap(), g_apart.to_host().unwrap());
    assert_eq!(logits.to_host().unwrap(), x);
}
