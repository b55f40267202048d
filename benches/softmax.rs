//! Criterion bench of forward softmax on GPU 0, timed with CUDA events on the device's stream,
//! throughput in bytes that must move (input once + output once). A device-to-device copy of the
//! same size is benched alongside as the yardstick. Skips with a message when there is no GPU.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cuda_softmax::tools::timing::{SoftmaxWorkload, median_ms, time_copy};
use cuda_softmax::{Device, Element, bf16, f16};

const SHAPES: [(usize, usize); 6] = [
    (65536, 128),
    (16384, 1024),
    (16384, 1152),
    (8192, 4096),
    (2048, 32768),
    (8, 262144),
];

fn bench_dtype<T: Element>(c: &mut Criterion, device: &Device) {
    let mut group = c.benchmark_group(format!("softmax_forward_{}", T::DTYPE.name()));
    for (rows, cols) in SHAPES {
        let mut work = SoftmaxWorkload::<T>::new(device, rows, cols, 3).expect("upload");
        group.throughput(Throughput::Bytes(work.bytes_moved as u64));
        group.bench_function(BenchmarkId::new("softmax", format!("{rows}x{cols}")), |b| {
            b.iter_custom(|iters| {
                // Inputs rotate over >= 256 MiB so that repeated calls do not run from L2.
                let ms = median_ms(device, 0, 1, iters as usize, |i| work.run(i)).expect("softmax");
                Duration::from_secs_f64(ms * iters as f64 / 1e3)
            })
        });
        let bytes = work.bytes_moved / 2;
        group.bench_function(
            BenchmarkId::new("d2d_copy", format!("{rows}x{cols}")),
            |b| {
                b.iter_custom(|iters| {
                    let ms = time_copy(device, bytes, 1, iters as usize).expect("copy");
                    Duration::from_secs_f64(ms * iters as f64 / 1e3)
                })
            },
        );
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let device = match Device::cuda(0) {
        Ok(d) => d,
        Err(e) => {
            println!("softmax bench SKIPPED, no GPU: {e}");
            return;
        }
    };
    bench_dtype::<f32>(c, &device);
    bench_dtype::<f16>(c, &device);
    bench_dtype::<bf16>(c, &device);
}

criterion_group! {
    name = softmax_benches;
    config = Criterion::default().sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(softmax_benches);
