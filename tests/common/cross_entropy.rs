//! The cross-entropy correctness suite, shared by the emulator tests (tests/cross_entropy.rs)
//! and the GPU harness (tests/softmax_gpu.rs): fresh random inputs (seed printed; replay with
//! CS_TEST_SEED), poisoned outputs and margins, every output compared with the f64 reference
//! (`reference::cross_entropy`, whose gradient its own tests check by central finite
//! differences).

use cuda_softmax::tools::check::{Rng, Tolerance, compare_with};
use cuda_softmax::tools::reference::cross_entropy::{
    CeForward, CeGradient, CeOptions, cross_entropy_backward, cross_entropy_forward,
};
use cuda_softmax::{
    CrossEntropy, CrossEntropyOutput, Device, DeviceTensor, Dtype, Element, Index, Reduction,
    TensorElement, bf16, f16,
};

use super::seeded_rng;

/// The options of one case, as plain values (the op and the reference are built from them).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub ignore_index: Option<i64>,
    pub smoothing: f32,
    pub z: f32,
    pub softcap: Option<f32>,
    pub weighted: bool,
    pub reduction: Reduction,
}

pub const PLAIN: Options = Options {
    ignore_index: Some(-100),
    smoothing: 0.0,
    z: 0.0,
    softcap: None,
    weighted: false,
    reduction: Reduction::Mean,
};

/// Every option alone, then all together (with an ignored class inside the vocabulary, and
/// with no ignored class at all), under each reduction.
pub fn option_sets() -> Vec<Options> {
    let mut sets = Vec::new();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        let base = Options { reduction, ..PLAIN };
        sets.extend([
            base,
            Options {
                smoothing: 0.1,
                ..base
            },
            Options { z: 0.01, ..base },
            // |x / c| up to 8: the cap saturates (its derivative must not cancel).
            Options {
                softcap: Some(0.5),
                ..base
            },
            Options {
                weighted: true,
                ..base
            },
            Options {
                ignore_index: None,
                smoothing: 0.2,
                z: 1e-3,
                softcap: Some(3.0),
                weighted: true,
                ..base
            },
        ]);
    }
    sets
}

/// The logits a case draws.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Values {
    /// About N(0, 2^2).
    Random,
    /// Near the type's maximum.
    NearMax,
    /// Random plus a common offset.
    Offset(f64),
}

/// Which entry point a case runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Forward,
    ForwardBackward,
    InPlace,
    /// `forward`, then `backward` from its lse with a random upstream gradient.
    Backward,
}

/// One case's inputs, as the device holds them (f64 of the stored values).
pub struct Inputs<T, I> {
    pub logits: Vec<T>,
    pub targets: Vec<I>,
    pub weight: Vec<f32>,
}

impl<T: Element, I: Index> Inputs<T, I> {
    /// Random logits (about N(0, 2^2)), targets in [0, v) with about 1 in 8 rows ignored when
    /// the options ignore a class, weights in [0.5, 2).
    pub fn random(rng: &mut Rng, n: usize, v: usize, o: &Options) -> Self {
        let logits = rng.logits::<T>(n * v, 4.0);
        let targets = (0..n)
            .map(|_| match o.ignore_index {
                Some(ignored) if rng.below(8) == 0 => I::from_i64(ignored),
                _ => I::from_i64(rng.below(v) as i64),
            })
            .collect();
        let weight = (0..v).map(|_| 0.5 + 1.5 * rng.uniform() as f32).collect();
        Inputs {
            logits,
            targets,
            weight,
        }
    }
}

pub fn op<'w>(o: &Options, weight: Option<&'w DeviceTensor<f32>>) -> CrossEntropy<'w> {
    CrossEntropy::default()
        .ignore_index(o.ignore_index)
        .label_smoothing(o.smoothing)
        .z_loss(o.z)
        .softcap(o.softcap)
        .reduction(o.reduction)
        .weight(if o.weighted { weight } else { None })
}

/// Uploads `data` at element `offset` of a buffer with poisoned margins; returns the buffer
/// and the view.
pub fn upload<T: TensorElement>(
    device: &Device,
    data: &[T],
    shape: &[usize],
    offset: usize,
) -> (DeviceTensor<T>, DeviceTensor<T>) {
    let mut buf = vec![T::poison(); data.len() + offset + 3];
    buf[offset..offset + data.len()].copy_from_slice(data);
    let all = DeviceTensor::from_host(device, &buf, &[buf.len()]).expect("upload");
    let view = all.view(offset, shape).expect("view");
    (all, view)
}

/// Checks that `all` (a buffer whose view starts at `offset` and holds `len` elements) is
/// still poison outside the view.
pub fn untouched_outside<T: TensorElement>(all: &DeviceTensor<T>, offset: usize, len: usize) {
    let host = all.to_host().unwrap();
    let changed = host[..offset]
        .iter()
        .chain(&host[offset + len..])
        .filter(|v| !v.is_poison())
        .count();
    assert_eq!(changed, 0, "{changed} elements outside the output changed");
}

/// The loss outputs against the reference: each value within 1e-5 of its terms' magnitude
/// (f32 sums over the vocabulary and the rows), lse within 1e-5 relative (and every output
/// element written: poison is NaN, which the reference never has where these are finite).
pub fn check_loss(out: &CrossEntropyOutput, want: &CeForward, detail: &str) -> f64 {
    let loss = out.loss.to_host().unwrap();
    let z = out.z_loss.to_host().unwrap();
    let lse = out.lse.to_host().unwrap();
    let mut worst: f64 = 0.0;
    let mut check = |got: &[f32], want: &[f64], scale: &dyn Fn(usize, f64) -> f64, what: &str| {
        // Past f32's range the correctly rounded loss is infinite (lse - x_t of logits near
        // +-3.4e38 is about 6.8e38).
        let overflow = f64::from(f32::MAX) * (1.0 + f64::EPSILON.sqrt());
        let want: Vec<f64> = want
            .iter()
            .map(|&w| {
                if w.abs() > overflow {
                    w.signum() * f64::INFINITY
                } else {
                    w
                }
            })
            .collect();
        let c = compare_with(got, &want, scale);
        assert!(c.passed(), "{detail}: {what}: {c}");
        worst = worst.max(c.worst_ratio);
    };
    check(
        &loss,
        &want.loss,
        &|i, _| 1e-5 * want.loss_scale[i] + 1e-6,
        "loss",
    );
    check(
        &z,
        &want.z_loss,
        &|i, _| 1e-5 * want.z_scale[i] + 1e-7,
        "z_loss",
    );
    check(&lse, &want.lse, &|_, w| 1e-5 * w.abs().max(1.0), "lse");
    worst
}

/// The gradient against the reference: the storage type's rounding of the value plus 1e-5 of
/// its terms' magnitude (cancellation near the target: p_t - (1 - e)).
pub fn check_grad<T: Element>(got: &[T], want: &CeGradient, detail: &str) -> f64 {
    let tol = Tolerance::softmax(T::DTYPE);
    let rounding = if T::DTYPE == Dtype::F32 {
        0.0
    } else {
        tol.rtol
    };
    let c = compare_with(got, &want.grad, |i, w| {
        tol.atol + rounding * w.abs() + 1e-5 * want.grad_scale[i]
    });
    assert!(c.passed(), "{detail}: gradient {}: {c}", T::DTYPE.name());
    c.worst_ratio
}

/// Runs one case in `mode` and checks every output against the reference; returns the worst
/// error as a fraction of its allowance (loss, gradient).
#[allow(clippy::too_many_arguments)]
pub fn run_case<T: Element, I: Index>(
    device: &Device,
    rng: &mut Rng,
    n: usize,
    v: usize,
    o: &Options,
    mode: Mode,
    offset: usize,
    values: Values,
) -> (f64, f64) {
    let edit = |_: &mut Inputs<T, I>| {};
    run_case_with(device, rng, n, v, o, mode, offset, values, edit).0
}

/// `run_case` with the random inputs changed by `edit` before the run (chosen weights or
/// targets); also returns the gradient (empty for `Mode::Forward`).
#[allow(clippy::too_many_arguments)]
pub fn run_case_with<T: Element, I: Index>(
    device: &Device,
    rng: &mut Rng,
    n: usize,
    v: usize,
    o: &Options,
    mode: Mode,
    offset: usize,
    values: Values,
    edit: impl FnOnce(&mut Inputs<T, I>),
) -> ((f64, f64), Vec<T>) {
    let mut inputs = Inputs::<T, I>::random(rng, n, v, o);
    edit(&mut inputs);
    if let Values::Offset(shift) = values {
        // A large common offset (the loss does not change, the arithmetic must not lose it).
        for x in &mut inputs.logits {
            *x = T::from_f64(x.to_f64() + shift);
        }
    }
    if values == Values::NearMax {
        // Logits near the type's maximum. For f32 and bf16 a row keeps one sign (its values
        // differ by at most half the maximum): a per-row loss of logits +-3.4e38 apart is past
        // f32's range, +inf, and so would be any reduction of it.
        let wide = T::MAX_FINITE > 1e30;
        inputs.logits = (0..n * v)
            .map(|i| {
                let u = rng.uniform();
                let x = if wide {
                    let sign = if (i / v).is_multiple_of(2) { 1.0 } else { -1.0 };
                    sign * (0.5 + 0.49 * u)
                } else {
                    (u * 2.0 - 1.0) * 0.99
                };
                T::from_f64(x * T::MAX_FINITE)
            })
            .collect();
    }
    let detail = format!(
        "{} logits, {} targets, [{n}, {v}], {o:?}, {mode:?}, offset {offset}{}, weights from {:?}",
        T::DTYPE.name(),
        I::NAME,
        match values {
            Values::Random => String::new(),
            Values::NearMax => ", near the maximum".into(),
            Values::Offset(s) => format!(", offset by {s}"),
        },
        &inputs.weight[..v.min(3)]
    );
    let x64: Vec<f64> = inputs.logits.iter().map(|x| x.to_f64()).collect();
    // With a common offset the reference takes the logits less the offset (exactly: the
    // stored values are the offset plus a multiple of their ulp): the same loss without z,
    // the same gradient, and a tolerance that does not grow with the offset.
    let x64: Vec<f64> = match values {
        Values::Offset(s) => x64.iter().map(|x| x - s).collect(),
        _ => x64,
    };
    let t64: Vec<i64> = inputs.targets.iter().map(|t| t.to_i64()).collect();
    let w64: Vec<f64> = inputs.weight.iter().map(|&w| w.into()).collect();
    let ref_opts = CeOptions {
        ignore_index: o.ignore_index,
        label_smoothing: o.smoothing.into(),
        z_loss: o.z.into(),
        softcap: o.softcap.map(f64::from),
        weight: o.weighted.then_some(&w64[..]),
        reduction: o.reduction,
    };
    let mut want = cross_entropy_forward(&x64, v, &t64, &ref_opts);
    if let Values::Offset(s) = values {
        // lse moves with the logits (the loss and gradient do not).
        want.lse.iter_mut().for_each(|l| *l += s);
    }
    let (x_all, mut x) = upload(device, &inputs.logits, &[n, v], offset);
    let targets = DeviceTensor::from_host(device, &inputs.targets, &[n]).unwrap();
    let weight = DeviceTensor::from_host(device, &inputs.weight, &[v]).unwrap();
    let ce = op(o, Some(&weight));
    let loss_len = if o.reduction == Reduction::None { n } else { 1 };
    match mode {
        Mode::Forward => {
            let out = ce.forward(&x, &targets).expect(&detail);
            let worst = check_loss(&out, &want, &detail);
            untouched_outside(&x_all, offset, n * v);
            ((worst, 0.0), Vec::new())
        }
        Mode::ForwardBackward | Mode::InPlace => {
            let (out, grad) = if mode == Mode::InPlace {
                let out = ce
                    .forward_backward_inplace(&mut x, &targets)
                    .expect(&detail);
                (out, x.to_host().unwrap())
            } else {
                let (out, grad) = ce.forward_backward(&x, &targets).expect(&detail);
                (out, grad.to_host().unwrap())
            };
            untouched_outside(&x_all, offset, n * v);
            let worst_loss = check_loss(&out, &want, &detail);
            let want_grad = cross_entropy_backward(&x64, v, &t64, &ref_opts, &vec![1.0; loss_len]);
            ((worst_loss, check_grad(&grad, &want_grad, &detail)), grad)
        }
        Mode::Backward => {
            let out = ce.forward(&x, &targets).expect(&detail);
            let worst_loss = check_loss(&out, &want, &detail);
            let dloss: Vec<f32> = (0..loss_len)
                .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
                .collect();
            let dloss_dev = DeviceTensor::from_host(device, &dloss, &[loss_len]).unwrap();
            let grad = ce
                .backward(&x, &targets, &out.lse, &dloss_dev)
                .expect(&detail);
            let d64: Vec<f64> = dloss.iter().map(|&d| d.into()).collect();
            let want_grad = cross_entropy_backward(&x64, v, &t64, &ref_opts, &d64);
            let grad = grad.to_host().unwrap();
            ((worst_loss, check_grad(&grad, &want_grad, &detail)), grad)
        }
    }
}

/// (N, V) pairs from the lists, within the emulator's budget: every V with a few rows,
/// every N with a small V, and the split-row shapes (few rows of a long vocabulary).
pub const SHAPES: [(usize, usize); 13] = [
    (3, 1),
    (129, 2),
    (3, 31),
    (129, 32),
    (1, 33),
    (129, 1000),
    (3, 32000),
    (1, 128256),
    (1, 262147),
    (70001, 2),
    (0, 1000),
    (3, 33),
    (1, 1000),
];

pub fn worst_report(name: &str, worst: (f64, f64)) {
    if std::env::var_os("CS_WORST_ERROR").is_some() {
        eprintln!(
            "worst {name}: loss {:.4} gradient {:.4} of the allowance",
            worst.0, worst.1
        );
    }
}

/// Every option set on small shapes, every shape with the plain and the all-options set, in
/// forward_backward; the other modes on a sample. Odd offsets rotate through the cases.
pub fn suite<T: Element>(device: &Device, name: &str) {
    let mut rng = seeded_rng(name);
    let mut worst = (0.0f64, 0.0f64);
    let mut keep = |w: (f64, f64)| worst = (worst.0.max(w.0), worst.1.max(w.1));
    let sets = option_sets();
    for (i, o) in sets.iter().enumerate() {
        for &(n, v) in &[(3, 33), (5, 1000), (1, 20000)] {
            keep(run_case::<T, i64>(
                device,
                &mut rng,
                n,
                v,
                o,
                Mode::ForwardBackward,
                i % 3,
                Values::Random,
            ));
        }
    }
    // f32 rows too long for the emulator's shared memory but enough of them not to split:
    // the chunked stats/finish/grad path with one chunk a row.
    if T::DTYPE == Dtype::F32 {
        keep(run_case::<T, i64>(
            device,
            &mut rng,
            32,
            25_000,
            &sets[5],
            Mode::ForwardBackward,
            1,
            Values::Random,
        ));
    }
    let all_options = sets[5];
    for (i, &(n, v)) in SHAPES.iter().enumerate() {
        for o in [PLAIN, all_options] {
            keep(run_case::<T, i32>(
                device,
                &mut rng,
                n,
                v,
                &o,
                Mode::ForwardBackward,
                (i % 2) * 3,
                Values::Random,
            ));
        }
    }
    for (i, mode) in [Mode::Forward, Mode::InPlace, Mode::Backward]
        .into_iter()
        .enumerate()
    {
        // A third of the option sets each, and every mode with all options together.
        let chosen = |j: usize| j % 3 == i || j % 6 == 5;
        for (j, o) in sets.iter().enumerate().filter(|(j, _)| chosen(*j)) {
            for &(n, v) in &[(4, 100), (2, 20000), (33, 8)] {
                keep(run_case::<T, i64>(
                    device,
                    &mut rng,
                    n,
                    v,
                    o,
                    mode,
                    j % 2,
                    Values::Random,
                ));
            }
        }
    }
    worst_report(name, worst);
}

/// Logits near the dtype's maximum (both signs): lse and the gradient stay finite and accurate
/// (forward_backward keeps the row's max and sum apart: exp(x - lse) as one subtraction would
/// lose the sum at |lse| ~ 1e38).
pub fn values_near_the_dtype_maximum(device: &Device) {
    let mut rng = seeded_rng("values_near_the_dtype_maximum");
    for o in [
        PLAIN,
        Options {
            smoothing: 0.1,
            z: 1e-3,
            reduction: Reduction::None,
            ..PLAIN
        },
        // Weighted smoothing sums w_j * x_j: near the maximum it overflowed before the sums
        // were taken relative to the row's running max.
        Options {
            smoothing: 0.2,
            weighted: true,
            ..PLAIN
        },
    ] {
        for &(n, v) in &[(3, 33), (2, 5000)] {
            let near = Values::NearMax;
            run_case::<f32, i64>(device, &mut rng, n, v, &o, Mode::ForwardBackward, 1, near);
            run_case::<bf16, i32>(device, &mut rng, n, v, &o, Mode::ForwardBackward, 0, near);
            run_case::<f16, i64>(device, &mut rng, n, v, &o, Mode::InPlace, 1, near);
            run_case::<f32, i32>(device, &mut rng, n, v, &o, Mode::Forward, 0, near);
        }
    }
}

/// A large common offset of the logits changes nothing but must not be lost: the loss (with
/// smoothing, weights, softcap off) and the gradient are checked against the reference of the
/// logits less the offset, with a tolerance that does not grow with it. (A smoothing term
/// formed as W / V * lse - sum_j w_j x_j / V cancelled away here.)
pub fn large_common_offset(device: &Device) {
    let mut rng = seeded_rng("large_common_offset");
    let sets = [
        Options {
            smoothing: 0.1,
            ..PLAIN
        },
        Options {
            smoothing: 0.3,
            weighted: true,
            reduction: Reduction::None,
            ..PLAIN
        },
    ];
    for o in &sets {
        for &(n, v) in &[(4, 1000), (1, 40000)] {
            let shift = Values::Offset(3.0e4);
            run_case::<f32, i64>(device, &mut rng, n, v, o, Mode::ForwardBackward, 1, shift);
            run_case::<f16, i64>(device, &mut rng, n, v, o, Mode::ForwardBackward, 0, shift);
            let big = Values::Offset(1.0e6);
            run_case::<f32, i32>(device, &mut rng, n, v, o, Mode::Forward, 0, big);
        }
    }
}

pub fn f32_tensor(device: &Device, data: &[f32], shape: &[usize]) -> DeviceTensor<f32> {
    DeviceTensor::from_host(device, data, shape).unwrap()
}

/// One call of each cross-entropy path (on chip, split, split in place, loss
/// only, backward; plain and all options) for `T`: every cross-entropy entry point runs.
/// For the GPU harness's entry-point sweep (also run under compute-sanitizer).
pub fn entry_point_sweep<T: Element>(device: &Device, rng: &mut Rng) {
    let sets = option_sets();
    for o in [PLAIN, sets[5]] {
        for (n, v, mode) in [
            (4, 100, Mode::ForwardBackward),
            (1, 40_000, Mode::ForwardBackward),
            (3, 1000, Mode::Forward),
            (4, 100, Mode::Backward),
            (2, 5000, Mode::InPlace),
        ] {
            run_case::<T, i64>(device, rng, n, v, &o, mode, 1, Values::Random);
        }
    }
}
