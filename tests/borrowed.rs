//! Zero-copy interop on the emulator, whose "device memory" is host memory: tensors borrowed
//! from the caller's slices (safe) and raw pointers (unsafe) are read and written in place,
//! take part in the overlap checks, cannot be turned into owning views, and bad borrows are
//! errors. The GPU variants (cudarc views) are in tests/softmax_gpu.rs.

use cuda_softmax::tools::check::Rng;
use cuda_softmax::{
    Device, DeviceTensor, Error, bf16, f16, log_softmax_into, softmax, softmax_inplace,
    softmax_into,
};

fn logits(n: usize) -> Vec<f32> {
    Rng::new(11).logits(n, 8.0)
}

/// softmax of an owned copy: what the borrowed runs must match bit for bit.
fn expected(device: &Device, data: &[f32], shape: &[usize]) -> Vec<f32> {
    let x = DeviceTensor::from_host(device, data, shape).unwrap();
    softmax(&x).unwrap().to_host().unwrap()
}

#[test]
fn softmax_reads_and_writes_caller_memory_in_place() {
    let d = Device::emulator();
    let (rows, cols) = (5, 37);
    let data = logits(rows * cols);
    let want = expected(&d, &data, &[rows, cols]);
    let mut out = vec![0.0f32; rows * cols];
    let out_addr = out.as_ptr() as u64;
    {
        let x = DeviceTensor::borrow_host(&d, &data, 0, &[rows, cols]).unwrap();
        let mut y = DeviceTensor::borrow_host_mut(&d, &mut out, 0, &[rows, cols]).unwrap();
        // No copy: the tensors are the caller's memory.
        assert_eq!(x.device_addr(), data.as_ptr() as u64);
        assert_eq!(y.device_addr(), out_addr);
        y.with_mut(|y| softmax_into(&x, y)).unwrap();
        assert_eq!(y.to_host().unwrap(), want);
    }
    assert_eq!(out, want, "the result is in the caller's slice");
}

#[test]
fn in_place_offsets_views_and_every_dtype() {
    let d = Device::emulator();
    let (rows, cols) = (4, 19);
    let data = logits(rows * cols);
    let want = expected(&d, &data, &[rows, cols]);
    // Borrowed from element 3 of a longer slice, in place.
    let mut memory = vec![7.0f32; 3];
    memory.extend_from_slice(&data);
    memory.push(9.0);
    {
        let mut x = DeviceTensor::borrow_host_mut(&d, &mut memory, 3, &[rows, cols]).unwrap();
        assert_eq!(x.device_addr(), x.view(0, &[1]).unwrap().device_addr());
        x.with_mut(softmax_inplace).unwrap();
    }
    assert_eq!(&memory[3..3 + rows * cols], &want[..]);
    assert_eq!(
        (memory[..3].to_vec(), memory[3 + rows * cols]),
        (vec![7.0; 3], 9.0)
    );

    // Views of borrows keep working: rows 1..3 of a borrowed input into rows of a borrowed output.
    let mut out = vec![0.0f32; rows * cols];
    {
        let x = DeviceTensor::borrow_host(&d, &data, 0, &[rows, cols]).unwrap();
        let mut y = DeviceTensor::borrow_host_mut(&d, &mut out, 0, &[rows, cols]).unwrap();
        let part = x.rows(1, 3).unwrap();
        let mut y_part = y.rows_mut(1, 3).unwrap();
        y_part.with_mut(|y| softmax_into(&part, y)).unwrap();
        let row = x.row(2).unwrap().reshape(&[1, cols]).unwrap();
        assert_eq!(row.shape(), &[1, cols]);
    }
    assert_eq!(&out[cols..3 * cols], &want[cols..3 * cols]);
    assert!(
        out[..cols]
            .iter()
            .chain(&out[3 * cols..])
            .all(|&v| v == 0.0)
    );

    // Half types: the same in place.
    let h: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    let b: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
    let want_h = softmax(&DeviceTensor::from_host(&d, &h, &[rows, cols]).unwrap())
        .unwrap()
        .to_host()
        .unwrap();
    let want_b = softmax(&DeviceTensor::from_host(&d, &b, &[rows, cols]).unwrap())
        .unwrap()
        .to_host()
        .unwrap();
    let (mut h, mut b) = (h, b);
    DeviceTensor::borrow_host_mut(&d, &mut h, 0, &[rows, cols])
        .unwrap()
        .with_mut(softmax_inplace)
        .unwrap();
    DeviceTensor::borrow_host_mut(&d, &mut b, 0, &[rows, cols])
        .unwrap()
        .with_mut(softmax_inplace)
        .unwrap();
    assert_eq!(h, want_h);
    assert_eq!(b, want_b);
}

#[test]
fn copies_to_and_from_borrowed_memory() {
    let d = Device::emulator();
    let mut memory = vec![0.0f32; 6];
    {
        let mut t = DeviceTensor::borrow_host_mut(&d, &mut memory, 2, &[2, 2]).unwrap();
        t.copy_from_host(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(t.to_host().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(
            t.copy_from_host(&[1.0]),
            Err(Error::LengthMismatch {
                expected: 4,
                got: 1
            })
        );
    }
    assert_eq!(memory, [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
}

/// Raw pointers (the route for frameworks on other cudarc versions): two borrows of the same
/// memory are compared by address like views of one tensor.
#[test]
fn raw_borrows_of_the_same_memory_are_overlap_checked() {
    let d = Device::emulator();
    let (rows, cols) = (3, 16);
    let data = logits(rows * cols + 1);
    let want = expected(&d, &data[..rows * cols], &[rows, cols]);
    let mut memory = data.clone();
    let base = memory.as_mut_ptr() as u64;
    // SAFETY: `memory` outlives both tensors and is touched only through them meanwhile; the
    // emulator finishes every launch before it returns.
    let (x, shifted) = unsafe {
        (
            DeviceTensor::<f32>::from_raw_parts(&d, base, &[rows, cols]).unwrap(),
            DeviceTensor::<f32>::from_raw_parts(&d, base + 4, &[rows, cols]).unwrap(),
        )
    };
    // SAFETY: as above.
    let mut y =
        unsafe { DeviceTensor::<f32>::from_raw_parts_mut(&d, base, &[rows, cols]) }.unwrap();
    // Partly overlapping: refused, nothing written.
    assert_eq!(
        y.with_mut(|y| softmax_into(&shifted, y)),
        Err(Error::PartialOverlap)
    );
    assert_eq!(
        y.with_mut(|y| log_softmax_into(&shifted, y)),
        Err(Error::PartialOverlap)
    );
    // Identical: the in-place case.
    y.with_mut(|y| softmax_into(&x, y)).unwrap();
    drop((x, shifted, y));
    assert_eq!(&memory[..rows * cols], &want[..]);
    assert_eq!(
        memory[rows * cols],
        data[rows * cols],
        "nothing past the borrow"
    );

    // A borrow against an owned tensor is checked too (different buffers: no overlap).
    let owned = DeviceTensor::from_host(&d, &data[..rows * cols], &[rows, cols]).unwrap();
    let mut y = DeviceTensor::borrow_host_mut(&d, &mut memory, 0, &[rows, cols]).unwrap();
    y.with_mut(|y| softmax_into(&owned, y)).unwrap();
}

#[test]
fn bad_borrows_are_errors() {
    let d = Device::emulator();
    let data = vec![0.0f32; 10];
    let oob = |r: Result<_, Error>| matches!(r, Err(Error::OutOfRange { .. }));
    assert!(oob(DeviceTensor::borrow_host(&d, &data, 0, &[11])));
    assert!(oob(DeviceTensor::borrow_host(&d, &data, 8, &[3])));
    assert!(oob(DeviceTensor::borrow_host(&d, &data, usize::MAX, &[1])));
    assert!(oob(DeviceTensor::borrow_host(&d, &data, 11, &[0])));
    assert!(DeviceTensor::borrow_host(&d, &data, 10, &[0]).is_ok());
    assert!(matches!(
        DeviceTensor::borrow_host(&d, &data, 0, &[usize::MAX, 2]),
        Err(Error::ShapeTooLarge { .. })
    ));
    // SAFETY: every call below fails its checks before anything is read.
    unsafe {
        let misaligned = data.as_ptr() as u64 + 1;
        assert_eq!(
            DeviceTensor::<f32>::from_raw_parts(&d, misaligned, &[2]).err(),
            Some(Error::Misaligned {
                addr: misaligned,
                align: 4
            })
        );
        assert!(matches!(
            DeviceTensor::<f32>::from_raw_parts_mut(&d, 0, &[2]),
            Err(Error::BadBorrow { .. })
        ));
    }
}

/// Owning views of borrowed memory would outlive the borrow: refused, with the way out named.
#[test]
fn owning_views_of_borrowed_memory_are_refused() {
    let d = Device::emulator();
    let data = vec![1.0f32; 12];
    let x = DeviceTensor::borrow_host(&d, &data, 0, &[3, 4]).unwrap();
    let t: &DeviceTensor<f32> = &x;
    for r in [t.view(0, &[2]), t.rows(0, 1), t.row(0), t.reshape(&[4, 3])] {
        let e = r.unwrap_err();
        assert!(matches!(e, Error::BorrowedView { .. }));
        assert!(e.to_string().contains("TensorRef"), "{e}");
    }
    // Operations that make new tensors from a borrow own their result.
    let y = softmax(t).unwrap();
    assert!(y.view(0, &[2]).is_ok());
}

/// A panic inside `with_mut` unwinds normally, and the borrow stays usable.
#[test]
fn a_panic_in_with_mut_unwinds() {
    let d = Device::emulator();
    let mut memory = vec![0.0f32; 4];
    let mut y = DeviceTensor::borrow_host_mut(&d, &mut memory, 0, &[4]).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        y.with_mut(|_| panic!("inside with_mut"))
    }));
    assert!(r.is_err());
    y.copy_from_host(&[1.0; 4]).unwrap();
    drop(y);
    assert_eq!(memory, [1.0; 4]);
}

/// Moving the borrowed tensor out of `with_mut` aborts the process (run in a child process).
#[test]
fn moving_a_borrowed_tensor_out_aborts() {
    if std::env::var_os("CS_BORROW_ESCAPE_CHILD").is_some() {
        let d = Device::emulator();
        let mut memory = vec![0.0f32; 4];
        let mut owned = DeviceTensor::<f32>::zeros(&d, &[4]).unwrap();
        let mut y = DeviceTensor::borrow_host_mut(&d, &mut memory, 0, &[4]).unwrap();
        y.with_mut(|y| std::mem::swap(y, &mut owned));
        unreachable!("with_mut returned after the borrowed tensor escaped");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "moving_a_borrowed_tensor_out_aborts",
            "--nocapture",
        ])
        .env("CS_BORROW_ESCAPE_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("moved out of TensorMut::with_mut"),
        "{stderr}"
    );
}

/// Host slices stand in for device memory only on the emulator.
#[test]
fn host_slices_need_the_emulator() {
    let Ok(gpu) = Device::cuda(0) else {
        eprintln!("skipped: no GPU");
        return;
    };
    let data = vec![0.0f32; 4];
    assert!(matches!(
        DeviceTensor::borrow_host(&gpu, &data, 0, &[4]),
        Err(Error::BadBorrow { .. })
    ));
}
