//! Fused cross-entropy on the CPU SIMT emulator against the f64 reference: the shared suite
//! (tests/common/cross_entropy.rs: every option alone and together, every dtype of logits, i32
//! and i64 targets, the vocabulary and batch sizes of the edge list, odd view offsets, values
//! near the dtype's maximum and large offsets) in several thread orders; then the semantics of
//! ignored, invalid, all -inf and zero-weight rows, the bad-input errors (nothing written) and
//! the traffic of each mode.

mod common;

use common::cross_entropy::*;
use common::seeded_rng;
use cuda_softmax::check::Rng;
use cuda_softmax::reference::cross_entropy::{
    CeOptions, cross_entropy_backward, cross_entropy_forward,
};
use cuda_softmax::{
    CrossEntropy, Device, DeviceTensor, EmulatorConfig, Error, Reduction, Schedule, bf16, f16,
};

fn emulator(schedule: Schedule) -> Device {
    Device::emulator_with(EmulatorConfig {
        schedule,
        ..EmulatorConfig::default()
    })
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
