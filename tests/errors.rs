//! Bad input gets a clear error and changes nothing; missing hardware is an error, not a panic.

use cuda_softmax::{Device, DeviceTensor, Error, Softmax, f16, softmax, softmax_into};

fn poison(n: usize) -> Vec<f32> {
    vec![f32::from_bits(0x7fa5_5a5a); n]
}

fn untouched(t: &DeviceTensor<f32>) -> bool {
    t.to_host()
        .unwrap()
        .iter()
        .all(|v| v.to_bits() == 0x7fa5_5a5a)
}

#[test]
fn mismatched_shapes_are_rejected_and_the_output_is_untouched() {
    let d = Device::emulator();
    let x = DeviceTensor::from_host(&d, &[1.0f32; 12], &[3, 4]).unwrap();
    let mut y = DeviceTensor::from_host(&d, &poison(12), &[4, 3]).unwrap();
    let e = softmax_into(&x, &mut y).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("[3, 4]"), "{e}");
    assert!(untouched(&y));
}

#[test]
fn partly_overlapping_views_are_rejected() {
    let d = Device::emulator();
    let all = DeviceTensor::from_host(&d, &poison(20), &[20]).unwrap();
    let x = all.view(0, &[2, 8]).unwrap();
    let mut y = all.view(1, &[2, 8]).unwrap();
    assert_eq!(softmax_into(&x, &mut y).unwrap_err(), Error::PartialOverlap);
    assert!(untouched(&all));
}

#[test]
fn tensors_on_different_devices_are_rejected() {
    let (a, b) = (Device::emulator(), Device::emulator());
    let x = DeviceTensor::from_host(&a, &[1.0f32; 4], &[4]).unwrap();
    let mut y = DeviceTensor::from_host(&b, &poison(4), &[4]).unwrap();
    assert_eq!(softmax_into(&x, &mut y).unwrap_err(), Error::DeviceMismatch);
    assert!(untouched(&y));
}

/// `forward_f32` (16-bit in, f32 out) checks its input like `forward`: each bad input is an
/// error that writes nothing.
#[test]
fn forward_f32_rejects_bad_input_and_writes_nothing() {
    let (d, other) = (Device::emulator(), Device::emulator());
    let x = DeviceTensor::from_host(&d, &[f16::from_f32(0.5); 12], &[3, 4]).unwrap();
    let mut y = DeviceTensor::from_host(&d, &poison(12), &[3, 4]).unwrap();
    let mut wrong_shape = DeviceTensor::from_host(&d, &poison(12), &[4, 3]).unwrap();
    let e = Softmax::new()
        .forward_f32_into(&x, &mut wrong_shape)
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let mut elsewhere = DeviceTensor::from_host(&other, &poison(12), &[3, 4]).unwrap();
    let e = Softmax::new()
        .forward_f32_into(&x, &mut elsewhere)
        .unwrap_err();
    assert_eq!(e, Error::DeviceMismatch);
    for scale in [0.0, -2.0, f32::NAN, f32::INFINITY] {
        let op = Softmax::new().scale(scale);
        assert!(matches!(
            op.forward_f32(&x).unwrap_err(),
            Error::BadScale { .. }
        ));
        assert!(matches!(
            op.forward_f32_into(&x, &mut y).unwrap_err(),
            Error::BadScale { .. }
        ));
    }
    for dim in [2, -3] {
        let e = Softmax::new()
            .dim(dim)
            .forward_f32_into(&x, &mut y)
            .unwrap_err();
        assert!(matches!(e, Error::BadDim { .. }), "{e}");
    }
    let scalar = DeviceTensor::from_host(&d, &[f16::from_f32(1.0)], &[]).unwrap();
    assert!(Softmax::new().forward_f32(&scalar).is_err());
    assert!(untouched(&y) && untouched(&wrong_shape) && untouched(&elsewhere));
    // And the valid call: rows of 4 equal logits.
    Softmax::new().forward_f32_into(&x, &mut y).unwrap();
    assert_eq!(y.to_host().unwrap(), vec![0.25f32; 12]);
}

#[test]
fn scalars_have_no_last_dimension() {
    let d = Device::emulator();
    let x = DeviceTensor::from_host(&d, &[1.0f32], &[]).unwrap();
    assert!(matches!(
        softmax(&x).unwrap_err(),
        Error::ScalarInput { .. }
    ));
}

#[test]
fn host_data_must_match_the_shape() {
    let d = Device::emulator();
    let e = DeviceTensor::from_host(&d, &[1.0f32; 5], &[2, 3]).unwrap_err();
    assert_eq!(
        e,
        Error::LengthMismatch {
            expected: 6,
            got: 5
        }
    );
    let mut t = DeviceTensor::from_host(&d, &poison(6), &[2, 3]).unwrap();
    assert!(t.copy_from_host(&[0.0; 7]).is_err());
    assert!(untouched(&t));
}

#[test]
fn impossible_shapes_are_errors_not_panics() {
    let d = Device::emulator();
    let huge = [usize::MAX / 2, 3];
    assert!(matches!(
        DeviceTensor::<f32>::uninit(&d, &huge).unwrap_err(),
        Error::ShapeTooLarge { .. }
    ));
    // Fits in usize as a count, but not as bytes.
    let e = DeviceTensor::<f32>::zeros(&d, &[usize::MAX / 8]).unwrap_err();
    assert!(matches!(e, Error::ShapeTooLarge { .. }), "{e}");
    // Addressable but far beyond any machine: an allocation error.
    let e = DeviceTensor::<f32>::zeros(&d, &[1 << 58]).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
}

#[test]
fn views_must_stay_inside_their_tensor() {
    let d = Device::emulator();
    let t = DeviceTensor::from_host(&d, &poison(12), &[3, 4]).unwrap();
    assert!(matches!(
        t.view(10, &[3]).unwrap_err(),
        Error::OutOfRange { .. }
    ));
    assert!(matches!(
        t.view(usize::MAX, &[3]).unwrap_err(),
        Error::OutOfRange { .. }
    ));
    assert!(matches!(
        t.rows(2, 4).unwrap_err(),
        Error::OutOfRange { .. }
    ));
    assert!(matches!(
        t.reshape(&[5, 2]).unwrap_err(),
        Error::ShapeMismatch { .. }
    ));
    // Views compose: row 1 of [3,4] then elements 1..3 of it.
    let r = t.row(1).unwrap().view(1, &[2]).unwrap();
    assert_eq!(r.offset(), 5);
    assert_eq!(r.shape(), &[2]);
}

#[test]
fn cuda_without_a_gpu_is_an_error_that_says_what_to_do() {
    // On a machine with a GPU this opens it; the error paths are what matter elsewhere.
    match Device::cuda(0) {
        Ok(d) => println!("a GPU is present: {}", d.name()),
        Err(e) => {
            let text = e.to_string();
            println!("Device::cuda(0): {text}");
            assert!(
                matches!(e, Error::NoCudaImage | Error::DriverNotFound | Error::NoGpu),
                "{e:?}"
            );
            assert!(
                text.contains("emulator") || text.contains("nvidia-smi"),
                "{text}"
            );
        }
    }
    match Device::cuda(4096) {
        Ok(_) => panic!("no machine has 4097 GPUs"),
        Err(e) => assert!(
            matches!(
                e,
                Error::NoCudaImage
                    | Error::DriverNotFound
                    | Error::NoGpu
                    | Error::NoSuchDevice { .. }
            ),
            "{e:?}"
        ),
    }
}

/// Index and size arithmetic is checked: these used to overflow (a panic in debug builds, a
/// wrong message or view in release). CI runs this file in debug and in release.
#[test]
fn huge_indices_and_shapes_are_errors_not_overflows() {
    let d = Device::emulator();
    let t = DeviceTensor::<f32>::zeros(&d, &[4, 3]).unwrap();
    let e = t.view(usize::MAX, &[2]).unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
    assert!(e.to_string().contains("past the end"), "{e}");
    let e = t.row(usize::MAX).unwrap_err();
    assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
    let _ = e.to_string();
    // A zero dimension does not make overflowing others acceptable, in either position.
    for shape in [[0, usize::MAX, usize::MAX], [usize::MAX, usize::MAX, 0]] {
        let e = DeviceTensor::<f32>::zeros(&d, &shape).unwrap_err();
        assert!(matches!(e, Error::ShapeTooLarge { .. }), "{shape:?}: {e}");
        let e = DeviceTensor::<f32>::from_host(&d, &[], &shape).unwrap_err();
        assert!(matches!(e, Error::ShapeTooLarge { .. }), "{shape:?}: {e}");
    }
    // Zero-sized shapes that fit are fine, and so are their row ranges.
    let empty = DeviceTensor::<f32>::zeros(&d, &[0, 1 << 20, 4]).unwrap();
    assert_eq!(empty.rows(0, 0).unwrap().shape(), &[0, 1 << 20, 4]);
    let e = t.rows(3, 1).unwrap_err();
    assert_eq!(
        e,
        Error::BadRange {
            what: "rows",
            start: 3,
            end: 1
        }
    );
    assert!(e.to_string().contains("start 3 is past end 1"), "{e}");
    match cuda_softmax::tools::timing::SoftmaxWorkload::<f32>::new(&d, 1 << 32, 1 << 32, 1) {
        Err(Error::ShapeTooLarge { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 2^64-element workload was accepted"),
    }
}

/// In place without two hand-made views.
#[test]
fn softmax_inplace_overwrites_the_tensor() {
    let d = Device::emulator();
    let x = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0];
    let mut t = DeviceTensor::from_host(&d, &x, &[2, 3]).unwrap();
    cuda_softmax::softmax_inplace(&mut t).unwrap();
    let got = t.to_host().unwrap();
    let want = cuda_softmax::tools::reference::softmax_rows(&x.map(|v| v as f64), 3);
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    let mut scalar = DeviceTensor::from_host(&d, &[1.0f32], &[]).unwrap();
    assert!(matches!(
        cuda_softmax::softmax_inplace(&mut scalar).unwrap_err(),
        Error::ScalarInput { .. }
    ));
}
