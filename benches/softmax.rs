//! Criterion bench of forward softmax on GPU 0, timed with CUDA events on the device's stream,
//! throughput in bytes that must move (input once + output once). A device-to-device copy of the
//! same size is benched alongside as the yardstick. Skips with a message when there is no GPU.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use cuda_softmax::check::Rng;
use cuda_softmax::timing::{time_copy, time_on_stream};
use cuda_softmax::{Device, DeviceTensor, Element, bf16, f16, softmax_into};

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
        let n = rows * cols;
        let x = DeviceTensor::<T>::from_host(device, &Rng::new(3).logits(n, 4.0), &[rows, cols])
            .expect("upload");
        let mut y = DeviceTensor::<T>::uninit(device, &[rows, cols]).expect("alloc");
        group.throughput(Throughput::Bytes((2 * n * size_of::<T>()) as u64));
        group.bench_function(BenchmarkId::new("softmax", format!("{rows}x{cols}")), |b| {
            b.iter_custom(|iters| {
                let ms = time_on_stream(device, 0, iters as usize, || softmax_into(&x, &mut y))
                    .expect("softmax");
                Duration::from_secs_f64(ms * iters as f64 / 1e3)
            })
        });
        let bytes = n * size_of::<T>();
        group.bench_function(
            BenchmarkId::new("d2d_copy", format!("{rows}x{cols}")),
            |b| {
                b.iter_custom(|iters| {
                    let ms = time_copy(device, bytes, iters as usize).expect("copy");
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
