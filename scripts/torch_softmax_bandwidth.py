"""torch.softmax GB/s on the shapes of the main job's bandwidth table, measured the same way
(inputs rotated over >= 256 MiB so they cannot sit in L2, median of 7 batches of 10 calls, CUDA
events), next to a device-to-device copy timed in the same run. Run by scripts/gpu-check.sh."""
import statistics

import torch

SHAPES = [(65536, 128), (16384, 1024), (16384, 1152), (8192, 4096), (2048, 32768), (32, 131072), (8, 262144)]
ROTATION_BYTES = 256 << 20


def median_ms(fn, reps=7, iters=10, warmup=3):
    for i in range(warmup):
        fn(i)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples, call = [], 0
    for _ in range(reps):
        start.record()
        for _ in range(iters):
            fn(call)
            call += 1
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return statistics.median(samples)


nbytes = 256 << 20
src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
copy_gbs = 2 * nbytes / (median_ms(lambda _: dst.copy_(src)) * 1e-3) / 1e9
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} (copy: {copy_gbs:.1f} GB/s read+write)")
for rows, cols in SHAPES:
    for dtype, name in [(torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")]:
        moved = 2 * rows * cols * torch.tensor([], dtype=dtype).element_size()
        count = min(64, max(1, -(-ROTATION_BYTES // moved)))
        xs = [torch.randn(rows, cols, device="cuda", dtype=dtype) for _ in range(count)]
        ms = median_ms(lambda i: torch.softmax(xs[i % count], dim=-1))
        gbs = moved / (ms * 1e-3) / 1e9
        print(f"  {rows:>6} x {cols:<7} {name:<5} {ms:>9.4f} ms {gbs:>8.1f} GB/s {gbs / copy_gbs:>6.2f} of copy")
        del xs
