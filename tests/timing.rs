//! The timing helpers' host-side logic: buffer rotation, and a clear error (not a panic) when
//! asked to time on a device without CUDA events.

use cuda_softmax::tools::timing::{ROTATION_BYTES, SoftmaxWorkload, rotation_count, time_copy};
use cuda_softmax::{Device, Error};

#[test]
fn rotation_exceeds_the_cache_budget() {
    // 8 x 262144 bf16 moves 8 MiB a call: 32 pairs make 256 MiB.
    assert_eq!(rotation_count(8 << 20), 32);
    assert!(rotation_count(8 << 20) * (8 << 20) >= ROTATION_BYTES);
    // Large calls need one pair; tiny ones stop at 64.
    assert_eq!(rotation_count(1 << 30), 1);
    assert_eq!(rotation_count(4096), 64);
    assert_eq!(rotation_count(0), 64);
}

#[test]
fn workloads_run_every_pair_and_timing_needs_a_gpu() {
    let d = Device::emulator();
    let mut w = SoftmaxWorkload::<f32>::new(&d, 8, 128, 1).unwrap();
    assert_eq!(w.pairs(), 64);
    assert_eq!(w.bytes_moved, 2 * 8 * 128 * 4);
    for i in 0..w.pairs() + 1 {
        w.run(i).unwrap();
    }
    assert!(matches!(w.time_ms(1, 1), Err(Error::Launch { .. })));
    assert!(matches!(
        time_copy(&d, 1024, 1, 1),
        Err(Error::Launch { .. })
    ));
}
