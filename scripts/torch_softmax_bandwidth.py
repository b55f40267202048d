"""torch.softmax GB/s on the shapes of the main job's bandwidth table, measured the same way
(inputs rotated over >= 256 MiB so they cannot sit in L2, median of 7 batches of 10 calls, CUDA
events), next to a device-to-device copy timed in the same run. Run by scripts/gpu-check.sh.

--sweep: instead, softmax, log_softmax, logsumexp, softmax backward and cross_entropy on the
column sweep of `cuda-softmax sweep` (64 MiB of input a shape, as docs/performance.md).
--csv FILE: also write op,dtype,rows,cols,gbs lines (GB/s of the minimum bytes, counted as the
sweep counts them), which `cuda-softmax sweep --torch FILE` plots beside its own lines."""
import argparse
import statistics

import torch

SWEEP_COLS = [16, 32, 64, 128, 256, 512, 1024, 1152, 2048, 2049, 4096, 8192, 16384, 32768, 65536, 131072, 262144]
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




def sweep_ops(rows, cols, dtype, size):
    """(name, minimum bytes, make inputs, call) per op, minimum bytes as cli/src/sweep.rs counts them."""
    n = rows * cols * size

    def logits():
        return torch.randn(rows, cols, device="cuda", dtype=dtype)

    def backward_inputs():
        y = torch.softmax(logits(), dim=-1)
        return y, torch.randn_like(y)

    def ce_inputs():
        return logits(), torch.randint(0, cols, (rows,), device="cuda")

    return [
        ("softmax", 2 * n, logits, lambda x: torch.softmax(x, dim=-1)),
        ("log_softmax", 2 * n, logits, lambda x: torch.log_softmax(x, dim=-1)),
        ("softmax_backward", 3 * n, backward_inputs,
         lambda a: torch._softmax_backward_data(a[1], a[0], -1, dtype)),
        ("logsumexp", n + 4 * rows, logits, lambda x: torch.logsumexp(x, dim=-1)),
        ("cross_entropy", n + 12 * rows + 8, ce_inputs,
         lambda a: torch.nn.functional.cross_entropy(a[0], a[1])),
    ]


def measure(minimum, make, call):
    count = min(64, max(1, -(-ROTATION_BYTES // minimum)))
    inputs = [make() for _ in range(count)]
    ms = median_ms(lambda i: call(inputs[i % count]))
    del inputs
    return ms, minimum / (ms * 1e-3) / 1e9


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--csv", help="write op,dtype,rows,cols,gbs to this file")
parser.add_argument("--sweep", action="store_true", help="every op on the sweep's columns")
args = parser.parse_args()
DTYPES = [(torch.float32, "f32"), (torch.float16, "f16"), (torch.bfloat16, "bf16")]
csv_lines = ["op,dtype,rows,cols,gbs"]

nbytes = 256 << 20
src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
dst = torch.empty_like(src)
copy_gbs = 2 * nbytes / (median_ms(lambda _: dst.copy_(src)) * 1e-3) / 1e9
print(f"torch {torch.__version__} on {torch.cuda.get_device_name()} (copy: {copy_gbs:.1f} GB/s read+write)")
if args.sweep:
    for dtype, name in DTYPES:
        size = torch.tensor([], dtype=dtype).element_size()
        for cols in SWEEP_COLS:
            rows = max(1, (64 << 20) // (cols * size))
            for op, minimum, make, call in sweep_ops(rows, cols, dtype, size):
                ms, gbs = measure(minimum, make, call)
                print(f"  {op:<17} {rows:>8} x {cols:<7} {name:<5} {ms:>9.4f} ms {gbs:>8.1f} GB/s {gbs / copy_gbs:>6.2f} of copy")
                csv_lines.append(f"{op},{name},{rows},{cols},{gbs:.3f}")
else:
    for rows, cols in SHAPES:
        for dtype, name in DTYPES:
            moved = 2 * rows * cols * torch.tensor([], dtype=dtype).element_size()
            ms, gbs = measure(moved, lambda: torch.randn(rows, cols, device="cuda", dtype=dtype),
                              lambda x: torch.softmax(x, dim=-1))
            print(f"  {rows:>6} x {cols:<7} {name:<5} {ms:>9.4f} ms {gbs:>8.1f} GB/s {gbs / copy_gbs:>6.2f} of copy")
            csv_lines.append(f"softmax,{name},{rows},{cols},{gbs:.3f}")
if args.csv:
    with open(args.csv, "w") as f:
        f.write("\n".join(csv_lines) + "\n")
