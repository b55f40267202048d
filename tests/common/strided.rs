//! The ops over every dimension of rank-1 to rank-4 tensors: `dim` other than the last runs the
//! strided family (rows `inner` apart, no transpose). Each case is checked by gathering the
//! strided rows of input and output into contiguous rows (`reference::gather_rows`) and
//! comparing them with the f64 reference of those rows, as the last-dimension checks do.

use super::backward::Case;
use super::{SPECIAL_ROWS, forward, special_rows};
use cuda_softmax::tools::check::Rng;
use cuda_softmax::tools::reference::{dims_around, gather_rows, scatter_rows};
use cuda_softmax::{Device, DeviceTensor, Element};

/// Tensors whose every dimension the suites reduce over: inner = 1 (the last dimension, and
/// dimensions followed only by size-1 ones), small and large inner, rows shorter than a warp's
/// batch, rows split over 8 and 32 warps, rows too long to keep on chip (two-pass) on the
/// emulator's 96 KiB of shared memory, and many rows of three elements.
pub const SHAPES: &[&[usize]] = &[
    &[7],
    &[300],
    &[5, 33],
    &[64, 2],
    &[1000, 3],
    &[3, 1, 40],
    &[2, 3, 4],
    &[4, 100, 50],
    &[1, 3, 5000],
    &[2, 1500, 3],
    &[2, 3, 4, 5],
    &[3, 1, 7, 1],
    &[2, 9, 1, 33],
];

/// Converts values of T to f64 (exactly).
fn to_f64<T: Element>(v: &[T]) -> Vec<f64> {
    v.iter().map(|v| v.to_f64()).collect()
}

/// The rows of the op over `dim` of a tensor of `shape` holding `data`, gathered contiguous.
fn rows_of<T: Element>(data: &[T], shape: &[usize], dim: usize) -> Vec<T> {
    let (outer, n, inner) = dims_around(shape, dim);
    gather_rows(&to_f64(data), outer, n, inner)
        .into_iter()
        .map(T::from_f64)
        .collect()
}

/// Where `check_dim` puts its tensors: x and y at element offsets into their own buffers, or y
/// over x (in place) at one offset. Even offsets keep the tensors aligned to two elements, so
/// an even inner dimension takes two rows a lane; odd ones take one.
#[derive(Debug, Clone, Copy)]
pub enum Placement {
    Separate(usize, usize),
    InPlace(usize),
}

/// The placements every shape runs with: odd and even offsets, separate and in place.
pub const PLACEMENTS: [Placement; 4] = [
    Placement::Separate(1, 5),
    Placement::Separate(0, 2),
    Placement::InPlace(3),
    Placement::InPlace(2),
];

/// The forward op (`forward()`) over `dim` of `x` (a contiguous tensor of `shape`) placed as
/// `placement` says, the output poisoned; checked against the reference, and nothing outside
/// the output may change.
pub fn check_dim<T: Element>(
    device: &Device,
    x: &[T],
    shape: &[usize],
    dim: usize,
    placement: Placement,
    what: &str,
) {
    let len = x.len();
    let op = forward();
    let (xo, yo) = match placement {
        Placement::Separate(xo, yo) => (xo, yo),
        Placement::InPlace(o) => (o, o),
    };
    if op.f32_out && matches!(placement, Placement::InPlace(_)) {
        return; // no in place with a wider output
    }
    let mut x_buf = vec![T::from_f64(0.0); len + xo + 2];
    x_buf[xo..xo + len].copy_from_slice(x);
    let x_all = DeviceTensor::from_host(device, &x_buf, &[x_buf.len()]).unwrap();
    let x_view = x_all.view(xo, shape).unwrap();
    let softmax = op.op().dim(dim as isize);
    let detail = format!(
        "{what}: {} {shape:?} dim {dim} {placement:?} on {}",
        T::DTYPE.name(),
        device.name()
    );
    let n = shape[dim];
    let x_rows = to_f64(&rows_of(x, shape, dim));
    match placement {
        Placement::Separate(..) if op.f32_out => {
            let got = separate(device, shape, yo, |y| softmax.forward_f32_into(&x_view, y));
            op.check_output(&x_rows, &rows_of(&got, shape, dim), n, &detail);
        }
        Placement::Separate(..) => {
            let got = separate(device, shape, yo, |y| softmax.forward_into(&x_view, y));
            op.check_output(&x_rows, &rows_of(&got, shape, dim), n, &detail);
        }
        Placement::InPlace(_) => {
            let mut same = x_all.view(xo, shape).unwrap();
            softmax.forward_inplace(&mut same).unwrap();
            let all = x_all.to_host().unwrap();
            let changed = all[..xo]
                .iter()
                .chain(&all[xo + len..])
                .filter(|v| v.to_f64() != 0.0)
                .count();
            assert_eq!(changed, 0, "{detail}: wrote outside the output");
            let got = &all[xo..xo + len];
            op.check_output(&x_rows, &rows_of(got, shape, dim), n, &detail);
        }
    }
}

/// Runs `f` on a poisoned output of `shape` at offset `yo` of a larger buffer; returns
/// the output after checking that nothing outside it changed.
fn separate<O: Element>(
    device: &Device,
    shape: &[usize],
    yo: usize,
    f: impl FnOnce(&mut DeviceTensor<O>) -> cuda_softmax::Result<()>,
) -> Vec<O> {
    let len: usize = shape.iter().product();
    let y_all =
        DeviceTensor::from_host(device, &vec![O::poison(); len + yo + 2], &[len + yo + 2]).unwrap();
    let mut y_view = y_all.view(yo, shape).unwrap();
    f(&mut y_view).unwrap();
    let all = y_all.to_host().unwrap();
    let outside = all[..yo]
        .iter()
        .chain(&all[yo + len..])
        .filter(|v| !v.is_poison())
        .count();
    assert_eq!(outside, 0, "wrote outside the output");
    all[yo..yo + len].to_vec()
}

/// The forward op over every dimension of every shape in SHAPES: random logits at views off
/// 16-byte boundaries and in place; special rows (NaN, all -inf, +inf, masked, near the
/// dtype's maximum) laid along strided dimensions; a huge inner dimension.
pub fn forward_dims<T: Element>(device: &Device, rng: &mut Rng) {
    for shape in SHAPES {
        let len: usize = shape.iter().product();
        for dim in 0..shape.len() {
            let x: Vec<T> = rng.logits(len, 6.0);
            for placement in PLACEMENTS {
                check_dim(device, &x, shape, dim, placement, "random");
            }
        }
    }
    // Special rows along the middle dimension of [2, n, 4] (8 rows, as special_rows makes).
    for n in [1, 7, 40, 900] {
        let rows = special_rows::<T>(rng, n);
        assert_eq!(rows.len(), SPECIAL_ROWS * n);
        let x: Vec<T> = scatter_rows(&to_f64(&rows), 2, n, 4)
            .into_iter()
            .map(T::from_f64)
            .collect();
        check_dim(
            device,
            &x,
            &[2, n, 4],
            1,
            Placement::Separate(0, 0),
            "special rows",
        );
        check_dim(
            device,
            &x,
            &[2, n, 4],
            1,
            Placement::Separate(1, 1),
            "special rows",
        );
    }
    // A huge inner dimension: rows of two elements 40,000 apart (dim 1), and along dim 0.
    let x: Vec<T> = rng.logits(2 * 2 * 40_000, 6.0);
    check_dim(
        device,
        &x,
        &[2, 2, 40_000],
        1,
        Placement::Separate(2, 0),
        "huge inner",
    );
    check_dim(
        device,
        &x,
        &[2, 2, 40_000],
        0,
        Placement::Separate(0, 1),
        "huge inner",
    );
}

/// Both backward ops over every dimension of every shape in SHAPES (scales 0.125, 1, 3.7), with
/// masked elements (dy = +inf there) and fully masked rows; offset views and in place over dy.
pub fn backward_dims<T: Element>(device: &Device, rng: &mut Rng) {
    for log in [false, true] {
        for scale in [0.125, 1.0, 3.7] {
            for shape in SHAPES {
                for dim in 0..shape.len() {
                    let (outer, n, inner) = dims_around(shape, dim);
                    let case = Case::<T>::random(rng, log, scale, outer * inner, n, n / 7);
                    // Odd offsets (one row a lane) and even ones (two rows a lane when inner is
                    // even), separate and in place over dy.
                    for offsets in [(1, 2, 3), (0, 2, 4)] {
                        for in_place in [false, true] {
                            let got = run_backward(device, &case, shape, dim, offsets, in_place);
                            let detail = format!(
                                "{shape:?} dim {dim} offsets {offsets:?} in place {in_place} on {}",
                                device.name()
                            );
                            case.verify(&got, "strided backward", &detail);
                        }
                    }
                }
            }
        }
    }
}

/// Runs `case` (rows of the op over `dim`) laid out as a tensor of `shape`; returns dx's rows.
pub fn run_backward<T: Element>(
    device: &Device,
    case: &Case<T>,
    shape: &[usize],
    dim: usize,
    (yo, dyo, dxo): (usize, usize, usize),
    in_place: bool,
) -> Vec<T> {
    let (outer, n, inner) = dims_around(shape, dim);
    let lay_out = |rows: &[T]| -> Vec<T> {
        scatter_rows(&to_f64(rows), outer, n, inner)
            .into_iter()
            .map(T::from_f64)
            .collect()
    };
    let len = case.y.len();
    let (y, dy) = (lay_out(&case.y), lay_out(&case.dy));
    let upload = |data: &[T], off: usize| {
        let mut buf = vec![T::from_f64(0.0); len + off + 1];
        buf[off..off + len].copy_from_slice(data);
        DeviceTensor::from_host(device, &buf, &[buf.len()]).unwrap()
    };
    let y_all = upload(&y, yo);
    let dy_all = upload(&dy, dyo);
    let yv = y_all.view(yo, shape).unwrap();
    let dyv = dy_all.view(dyo, shape).unwrap();
    let op = cuda_softmax::Softmax::new()
        .log(case.log)
        .scale(case.scale)
        .dim(dim as isize);
    let dx = if in_place {
        let mut dx = dy_all.view(dyo, shape).unwrap();
        op.backward_into(&yv, &dyv, &mut dx).unwrap();
        dy_all.to_host().unwrap()[dyo..dyo + len].to_vec()
    } else {
        let dx_all = upload(&vec![T::poison(); len], dxo);
        let mut dx = dx_all.view(dxo, shape).unwrap();
        op.backward_into(&yv, &dyv, &mut dx).unwrap();
        let all = dx_all.to_host().unwrap();
        let outside = all[..dxo].iter().chain(&all[dxo + len..]);
        assert!(
            outside.into_iter().all(|v| v.to_f64() == 0.0),
            "wrote outside dx"
        );
        all[dxo..dxo + len].to_vec()
    };
    rows_of(&dx, shape, dim)
}
