"""torch.softmax GB/s on the shapes of the main job's bandwidth table, next to a
device-to-device copy measured in the same run (run by scripts/gpu-check.sh on a GPU machine)."""
import torch

SHAPES = [(65536, 128), (16384, 1024), (16384, 1152), (8192, 4096), (2048, 32768), (32, 131072), (8, 262144)]


def time_ms(fn, iters=20):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


nbytes = 256 << 20
src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
copy_gbs = 2 * nbytes / (time_ms(lambda: dst.copy_(src)) * 1e-3) / 1e9
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} (copy: {copy_gbs:.1f} GB/s read+write)")
for rows, cols in SHAPES:
    for dtype, name in [(torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")]:
        x = torch.randn(rows, cols, device="cuda", dtype=dtype)
        ms = time_ms(lambda: torch.softmax(x, dim=-1))
        gbs = 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9
        print(f"  {rows:>6} x {cols:<7} {name:<5} {ms:>9.4f} ms {gbs:>8.1f} GB/s {gbs / copy_gbs:>6.2f} of copy")
