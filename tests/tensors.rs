//! DeviceTensor basics on the emulator: round trips for every dtype, zeros, and views that read
//! and write exactly their own elements.

use cuda_softmax::tools::check::Rng;
use cuda_softmax::{Device, DeviceTensor, Element, bf16, f16};

fn round_trip<T: Element + PartialEq>(device: &Device) {
    let data: Vec<T> = Rng::new(5).logits(3 * 7 * 2, 100.0);
    let t = DeviceTensor::from_host(device, &data, &[3, 7, 2]).unwrap();
    assert_eq!(t.shape(), &[3, 7, 2]);
    assert_eq!(t.len(), 42);
    let back = t.to_host().unwrap();
    assert!(
        back.iter()
            .zip(&data)
            .all(|(a, b)| a.to_f64().to_bits() == b.to_f64().to_bits())
    );
    let z = DeviceTensor::<T>::zeros(device, &[5, 3]).unwrap();
    assert!(z.to_host().unwrap().iter().all(|v| v.to_f64() == 0.0));
}

#[test]
fn every_dtype_round_trips_bit_for_bit() {
    let d = Device::emulator();
    round_trip::<f32>(&d);
    round_trip::<f16>(&d);
    round_trip::<bf16>(&d);
}

#[test]
fn views_read_and_write_only_their_elements() {
    let d = Device::emulator();
    let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let t = DeviceTensor::from_host(&d, &data, &[4, 6]).unwrap();
    assert_eq!(
        t.row(2).unwrap().to_host().unwrap(),
        vec![12.0, 13.0, 14.0, 15.0, 16.0, 17.0]
    );
    assert_eq!(t.rows(1, 3).unwrap().shape(), &[2, 6]);
    let mut middle = t.view(5, &[3]).unwrap();
    middle.copy_from_host(&[-1.0, -2.0, -3.0]).unwrap();
    let all = t.to_host().unwrap();
    assert_eq!(&all[..5], &data[..5]);
    assert_eq!(&all[5..8], &[-1.0, -2.0, -3.0]);
    assert_eq!(&all[8..], &data[8..]);
    // Empty tensors are fine everywhere.
    let e = DeviceTensor::<f32>::zeros(&d, &[0, 3]).unwrap();
    assert!(e.is_empty() && e.to_host().unwrap().is_empty());
}
