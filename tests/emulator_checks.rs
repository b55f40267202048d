//! The emulator's own checks: planted bugs are caught, shuffle semantics follow PTX, the kernel
//! table matches the planner, and traffic counters match the performance model.

mod common;

use cuda_softmax::tools::emulator_kernel_names;
use cuda_softmax::tools::planner::{Family, KernelConfig};
use cuda_softmax::{
    Device, DeviceTensor, EmulatorConfig, Error, Schedule, Softmax, TensorElement, f16, softmax,
};

const SCHEDULES: [Schedule; 4] = [
    Schedule::Forward,
    Schedule::Reverse,
    Schedule::Shuffled { seed: 0x5eed },
    Schedule::WarpAhead,
];

fn emulator(schedule: Schedule) -> Device {
    Device::emulator_with(EmulatorConfig::default().schedule(schedule).workers(1))
}

fn poisoned(device: &Device, n: usize) -> DeviceTensor<f32> {
    DeviceTensor::from_host(device, &vec![f32::from_bits(0x7fa5_5a5a); n], &[n]).unwrap()
}

/// The detail of an emulator fault (`launch_refused`: of a launch the device refuses); any
/// other outcome fails the test.
fn error_detail(result: cuda_softmax::Result<()>, launch_refused: bool) -> String {
    match (result, launch_refused) {
        (Err(Error::EmulatorFault { detail, .. }), false) => detail,
        (Err(Error::Launch { detail, .. }), true) => detail,
        (other, _) => panic!(
            "expected {}, got {other:?}",
            if launch_refused {
                "a refused launch"
            } else {
                "an emulator fault"
            }
        ),
    }
}

fn fault_text(result: cuda_softmax::Result<()>) -> String {
    error_detail(result, false)
}

#[test]
fn a_missing_barrier_is_a_race_fault_in_every_schedule() {
    let threads = 64;
    let expected: Vec<f32> = (0..threads)
        .map(|t| ((t + 1) % threads + 1) as f32)
        .collect();
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        // With the barrier: right in every order.
        let mut y = poisoned(&d, threads);
        d.emulator_selftest(
            "emu_selftest_barrier_ok",
            threads as u32,
            threads as u32 * 4,
            &mut y,
        )
        .unwrap();
        assert_eq!(y.to_host().unwrap(), expected, "{schedule:?}");
        // Without it a thread reads a slot its neighbour writes in the same barrier interval:
        // the race detector reports it whatever the order (before the neighbour's write it is
        // also a read of memory no thread wrote).
        let mut y = poisoned(&d, threads);
        let text = fault_text(d.emulator_selftest(
            "emu_selftest_missing_barrier",
            threads as u32,
            threads as u32 * 4,
            &mut y,
        ));
        assert!(
            text.contains("race") || text.contains("no thread of this block has written"),
            "{schedule:?}: {text}"
        );
        assert!(text.contains("block (0,0,0) thread ("), "{text}");
    }
}

/// Runs a planted-bug kernel as one block of `threads` in every schedule: it must fault with a
/// message containing `expected`. The output is an 8-element view at the start of a poisoned
/// 16-element buffer (`threads` elements when the kernel writes per thread); when
/// `writes_nothing`, the faulting access must not have been performed and the whole buffer
/// stays poisoned.
fn assert_planted_fault(kernel: &str, threads: u32, expected: &str, writes_nothing: bool) {
    assert_planted_fault_with_smem(kernel, threads, 0, expected, writes_nothing)
}

fn assert_planted_fault_with_smem(
    kernel: &str,
    threads: u32,
    dynamic_smem: u32,
    expected: &str,
    writes_nothing: bool,
) {
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        let len = (threads as usize).max(16);
        let all = poisoned(&d, len);
        let view_len = if writes_nothing { 8 } else { len };
        let mut y = all.view(0, &[view_len]).unwrap();
        let text = fault_text(d.emulator_selftest(kernel, threads, dynamic_smem, &mut y));
        assert!(text.contains(expected), "{kernel} {schedule:?}: {text}");
        if writes_nothing {
            let host = all.to_host().unwrap();
            assert!(
                host.iter().all(|v| v.to_bits() == 0x7fa5_5a5a),
                "{kernel} {schedule:?} wrote"
            );
        }
    }
}

#[test]
fn an_out_of_bounds_write_is_a_fault_and_is_not_performed() {
    // One element past the 8-element view: inside the buffer, outside the launch's tensors.
    assert_planted_fault(
        "emu_selftest_out_of_bounds",
        32,
        "outside every tensor",
        true,
    );
}

#[test]
fn a_misaligned_vector_access_is_a_fault_and_is_not_performed() {
    assert_planted_fault("emu_selftest_misaligned_vector", 32, "misaligned", true);
}

#[test]
fn a_barrier_not_reached_by_every_thread_is_a_fault() {
    let expected = "__syncthreads() not reached by every thread";
    assert_planted_fault("emu_selftest_divergent_barrier", 64, expected, false);
}

#[test]
fn a_shuffle_not_reached_by_every_lane_is_a_fault() {
    let expected = "shuffle not reached by every lane";
    assert_planted_fault("emu_selftest_partial_shuffle", 64, expected, false);
}

#[test]
fn shuffles_follow_ptx_semantics() {
    // Lane l, per emu/selftest.cu: xor 1 (width 32), down 1 (width 8), up 2 (width 16),
    // indexed 3 (width 4); a source outside the lane's segment gives the lane its own value.
    let expect = |l: i64| -> f32 {
        let xor = l ^ 1;
        let down = if (l % 8) + 1 < 8 { l + 1 } else { l };
        let up = if l % 16 >= 2 { l - 2 } else { l };
        let idx = (l & !3) + 3;
        (xor as f64 + 100.0 * down as f64 + 10000.0 * up as f64 + 1e6 * idx as f64) as f32
    };
    assert_lane_values("emu_selftest_shuffle_semantics", 96, expect);
}

/// Runs a self-test kernel that writes one value per thread, in every schedule, and compares
/// thread t's value with `expect(lane of t)`.
fn assert_lane_values(kernel: &str, threads: usize, expect: impl Fn(i64) -> f32) {
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        let mut y = poisoned(&d, threads);
        d.emulator_selftest(kernel, threads as u32, 0, &mut y)
            .unwrap();
        let want: Vec<f32> = (0..threads as i64).map(|t| expect(t % 32)).collect();
        assert_eq!(y.to_host().unwrap(), want, "{kernel} {schedule:?}");
    }
}

/// PTX shfl.sync with a lane operand that reaches past the segment: a bfly source in an earlier
/// segment is read (a later one gives the lane its own value), and only the operand's low 5 bits
/// count. A warp_max that starts at offset 16 for a width-8 group then mixes rows, as on a GPU.
#[test]
fn shuffles_past_the_segment_follow_ptx() {
    let expect = |l: i64| -> f32 {
        let a = if l >= 16 { l - 16 } else { l }; // xor 16, width 8
        let b = if l & 4 != 0 { l - 4 } else { l }; // xor 4, width 4
        let c = if l < 31 { l + 1 } else { l }; // down 33 = down 1
        let d = if l % 8 >= 3 { l - 3 } else { l }; // up 3, width 8
        (a as f64 + 100.0 * b as f64 + 10000.0 * c as f64 + 1e6 * d as f64) as f32
    };
    assert_lane_values("emu_selftest_shuffle_segments", 64, expect);
}

#[test]
fn a_shared_memory_access_out_of_bounds_is_a_fault() {
    // 32 threads, 32 floats of dynamic shared memory: thread 31 reads slot 32.
    assert_planted_fault_with_smem(
        "emu_selftest_shared_out_of_bounds",
        32,
        128,
        "outside dynamic shared memory of 128 bytes",
        false,
    );
}

#[test]
fn a_read_of_unwritten_shared_memory_is_a_fault() {
    assert_planted_fault(
        "emu_selftest_shared_uninitialised",
        64,
        "no thread of this block has written",
        false,
    );
}

#[test]
fn a_scratch_reused_without_a_barrier_is_a_race_fault() {
    assert_planted_fault(
        "emu_selftest_reused_scratch_race",
        64,
        "shared-memory race",
        false,
    );
}

/// Lanes of a warp exchanging values through shared memory after __syncwarp is correct and is
/// not reported (the detector orders a warp's lanes by its __syncwarp count).
#[test]
fn a_warp_exchange_ordered_by_syncwarp_is_not_a_race() {
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        let mut y = poisoned(&d, 96);
        d.emulator_selftest("emu_selftest_warp_exchange", 96, 0, &mut y)
            .unwrap();
        let want: Vec<f32> = (0..96u32)
            .map(|t| ((t & !31) | ((t + 1) % 32)) as f32)
            .collect();
        assert_eq!(y.to_host().unwrap(), want, "{schedule:?}");
    }
}

/// Warp-synchronous shared memory ordered by __syncwarp (the reduction of the CUDA guide, a
/// broadcast slot reused each round), a 24-byte struct per thread and byte flags: correct code
/// the race detector must accept in every schedule.
#[test]
fn correct_warp_synchronous_and_odd_sized_shared_memory_is_not_a_fault() {
    assert_lane_values("emu_selftest_warp_broadcast_rounds", 32, |_| 6.0);
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        let mut y = poisoned(&d, 32);
        d.emulator_selftest("emu_selftest_warp_reduce_syncwarp", 32, 0, &mut y)
            .unwrap();
        assert_eq!(y.to_host().unwrap()[0], 496.0, "{schedule:?}");
        let mut y = poisoned(&d, 64);
        d.emulator_selftest("emu_selftest_odd_sized_elements", 64, 0, &mut y)
            .unwrap();
        let want: Vec<f32> = (0..64u32)
            .map(|t| ((t + 1) % 64) as f32 + 100.0 * ((t ^ 1) % 2) as f32)
            .collect();
        assert_eq!(y.to_host().unwrap(), want, "{schedule:?}");
    }
}

/// A __syncwarp over only some lanes does not order the others; a second read after the last
/// __syncwarp is not ordered with a later write.
#[test]
fn races_past_a_partial_or_earlier_syncwarp_are_faults() {
    for kernel in [
        "emu_selftest_partial_syncwarp_race",
        "emu_selftest_reread_race",
    ] {
        for schedule in SCHEDULES {
            let d = emulator(schedule);
            let mut y = poisoned(&d, 64);
            let text = fault_text(d.emulator_selftest(kernel, 64, 0, &mut y));
            assert!(
                text.contains("shared-memory race") || text.contains("no thread of this block"),
                "{kernel} {schedule:?}: {text}"
            );
        }
    }
}

/// `auto v = smem[i]` kept across a barrier reads after it on the emulator but before it on a
/// GPU: a fault rather than a silently different result.
#[test]
fn a_shared_reference_used_after_a_barrier_is_a_fault() {
    assert_planted_fault(
        "emu_selftest_stale_reference",
        64,
        "made before a barrier was used after it",
        false,
    );
}

/// The FMA flavour really contracts: the online family's (max, sum) merges are a * b + c, so
/// some outputs differ in their last bits between the flavours (both within tolerance).
#[test]
#[cfg_attr(
    not(feature = "emulator-fma"),
    ignore = "needs the crate feature emulator-fma (on for this crate's own tests)"
)]
fn the_fma_flavour_rounds_differently() {
    use cuda_softmax::tools::check::Rng;
    let x: Vec<f32> = Rng::new(7).logits(8 * 30_000, 9.0);
    let run = |fma_contraction| {
        let d = Device::emulator_with(EmulatorConfig::default().fma_contraction(fma_contraction));
        let xt = DeviceTensor::from_host(&d, &x, &[8, 30_000]).unwrap();
        softmax(&xt).unwrap().to_host().unwrap()
    };
    let (plain, fused) = (run(false), run(true));
    let differ = plain
        .iter()
        .zip(&fused)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert!(differ > 0, "no output changed: is contraction applied?");
}

fn launch_error(result: cuda_softmax::Result<()>) -> String {
    error_detail(result, true)
}

/// A GPU refuses a block larger than the kernel's __launch_bounds__; so does the emulator.
#[test]
fn launches_beyond_launch_bounds_are_refused() {
    let d = emulator(Schedule::Forward);
    let mut y = poisoned(&d, 128);
    d.emulator_selftest("emu_selftest_bounded_64", 64, 0, &mut y)
        .unwrap();
    let text = launch_error(d.emulator_selftest("emu_selftest_bounded_64", 128, 0, &mut y));
    assert!(text.contains("__launch_bounds__(64)"), "{text}");
}

/// Static plus dynamic shared memory must fit the device's per-block limit (96 KiB on the
/// emulator); the kernel's static footprint counts, not only what the planner asked for.
#[test]
fn static_plus_dynamic_shared_memory_over_the_limit_is_refused() {
    let limit = Device::emulator().limits().max_shared_mem_per_block;
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        let mut y = poisoned(&d, 512);
        // Fits: 2 KiB static + 1 KiB dynamic.
        d.emulator_selftest("emu_selftest_large_static_shared", 512, 1024, &mut y)
            .unwrap();
        assert!(y.to_host().unwrap().iter().all(|&v| v == 1.0));
        // Dynamic alone fits, static + dynamic does not.
        let text = launch_error(d.emulator_selftest(
            "emu_selftest_large_static_shared",
            512,
            limit - 1024,
            &mut y,
        ));
        assert!(text.contains("too many resources requested"), "{text}");
        // Dynamic alone over the limit.
        let text = launch_error(d.emulator_selftest(
            "emu_selftest_large_static_shared",
            512,
            limit + 16,
            &mut y,
        ));
        assert!(text.contains("too many resources requested"), "{text}");
    }
}

/// New uninitialised tensors read as the poison pattern, never as zeros that could pass for a
/// result; zeros() is zeros.
#[test]
fn uninitialised_emulator_memory_is_poisoned() {
    let d = Device::emulator();
    let f = DeviceTensor::<f32>::uninit(&d, &[7])
        .unwrap()
        .to_host()
        .unwrap();
    assert!(f.iter().all(|v| v.is_poison()), "{f:?}");
    let h = DeviceTensor::<cuda_softmax::f16>::uninit(&d, &[9])
        .unwrap()
        .to_host()
        .unwrap();
    assert!(h.iter().all(|v| v.is_poison()), "{h:?}");
    let b = DeviceTensor::<cuda_softmax::bf16>::uninit(&d, &[3])
        .unwrap()
        .to_host()
        .unwrap();
    assert!(b.iter().all(|v| v.is_poison()), "{b:?}");
    let z = DeviceTensor::<f32>::zeros(&d, &[7])
        .unwrap()
        .to_host()
        .unwrap();
    assert!(z.iter().all(|&v| v == 0.0));
}

/// The host compiler builds the kernels (both emulator flavours) with -Wall -Wextra
/// -Wconversion and nothing to say: a narrowing index or an uninitialised value in a kernel
/// fails here.
#[test]
fn the_kernels_build_for_the_host_without_warnings() {
    let warnings = cuda_softmax::tools::emulator_build_warnings();
    assert!(
        warnings.trim().is_empty(),
        "the host compiler warned on the kernels:\n{warnings}"
    );
}

/// Both flavours carry the same entry points.
#[test]
#[cfg_attr(
    not(feature = "emulator-fma"),
    ignore = "needs the crate feature emulator-fma (on for this crate's own tests)"
)]
fn the_fma_flavour_has_every_kernel() {
    let mut plain = emulator_kernel_names();
    let mut fma = cuda_softmax::tools::emulator_fma_kernel_names();
    plain.sort();
    fma.sort();
    assert_eq!(plain, fma);
}

#[test]
fn the_emulator_has_every_kernel_the_planner_can_pick() {
    let names = emulator_kernel_names();
    for k in KernelConfig::all() {
        assert!(
            names.contains(&k.name()),
            "{} missing from the emulator",
            k.name()
        );
    }
}

/// Bytes moved over the minimum (rows * cols * size in, the same out), and the share of 16-byte
/// accesses, per family: the static side of the performance model.
#[test]
fn global_traffic_matches_the_performance_model() {
    let d = emulator(Schedule::Forward);
    type IsFamily = fn(&Family) -> bool;
    // (rows, cols, expected first family, bytes read / minimum, share of 16-byte accesses)
    let cases: [(usize, usize, IsFamily, f64, f64); 7] = [
        // Short rows: one lane a row, two 16-byte packs (aligned) or eight scalars.
        (
            6,
            8,
            |f| {
                matches!(
                    f,
                    Family::Warp {
                        width: 1,
                        vec: 4,
                        ..
                    }
                )
            },
            1.0,
            1.0,
        ),
        (
            6,
            7,
            |f| {
                matches!(
                    f,
                    Family::Warp {
                        width: 1,
                        vec: 1,
                        ..
                    }
                )
            },
            1.0,
            0.0,
        ),
        (
            6,
            1024,
            |f| matches!(f, Family::Warp { vec: 4, .. }),
            1.0,
            1.0,
        ),
        (
            6,
            1023,
            |f| matches!(f, Family::Warp { vec: 1, .. }),
            1.0,
            0.0,
        ),
        (6, 8192, |f| matches!(f, Family::Block { .. }), 1.0, 1.0),
        // As many rows as the emulator's nominal SMs: one block per row, two reads.
        (8, 65536, |f| matches!(f, Family::Online { .. }), 2.0, 1.0),
        // Fewer rows: split-row, two reads plus a few bytes of per-chunk states.
        (
            3,
            65536,
            |f| matches!(f, Family::SplitStats { .. }),
            2.0,
            0.99,
        ),
    ];
    for (rows, cols, family, read_ratio, vector_share) in cases {
        let n = rows * cols;
        let x = DeviceTensor::<f32>::from_host(&d, &vec![0.5; n], &[rows, cols]).unwrap();
        let _y = softmax(&x).unwrap();
        let stats = d.last_launch_stats().unwrap();
        let first = stats.kernel.split('+').next().unwrap();
        let config = KernelConfig::all()
            .into_iter()
            .find(|k| k.name() == first)
            .unwrap();
        assert!(
            family(&config.family),
            "{cols} columns ran {}",
            stats.kernel
        );
        let min = (n * 4) as f64;
        let read = stats.kernel_bytes_read as f64 / min;
        let written = stats.kernel_bytes_written as f64 / min;
        let share = stats.accesses_16b as f64 / stats.accesses as f64;
        // Split-row also reads its per-chunk states: a few bytes per block.
        assert!(
            (read - read_ratio).abs() < 2e-3,
            "{}: read {read}",
            stats.kernel
        );
        assert!(
            (written - 1.0).abs() < 1e-3,
            "{}: written {written}",
            stats.kernel
        );
        assert!(
            share >= vector_share && (vector_share > 0.0 || share == 0.0),
            "{}: {share}",
            stats.kernel
        );
        println!(
            "{rows:>2} x {cols:>6}: {:<58} traffic {:.3}x of minimum, {:.1}% of accesses 16 B",
            stats.kernel,
            (stats.kernel_bytes_read + stats.kernel_bytes_written) as f64 / (2.0 * min),
            100.0 * share
        );
    }
}

/// `forward_f32` reads the 16-bit input as often as `forward` does (once, or twice for the
/// two-pass families) and writes 4 bytes an element once, in 16-byte accesses on aligned rows:
/// no cast pass, no second write.
#[test]
fn forward_f32_reads_16_bit_once_and_writes_f32_once() {
    let d = emulator(Schedule::Forward);
    // (shape, dim, kernel name prefix, reads of x)
    let cases: [(&[usize], isize, &str, u64); 7] = [
        (&[6, 8], -1, "softmax_to_f32_warp_f16_w1_c8_v8", 1),
        (&[6, 1024], -1, "softmax_to_f32_warp_f16_w32_c32_v8", 1),
        (&[6, 8192], -1, "softmax_to_f32_block_f16", 1),
        (&[8, 65536], -1, "softmax_to_f32_online_f16", 2),
        (
            &[3, 65536],
            -1,
            "softmax_split_stats_f16_b256+softmax_to_f32_split_write_f16",
            2,
        ),
        (&[4, 64, 30], 1, "softmax_to_f32_strided_onchip_f16", 1),
        (&[2, 64, 3000], 1, "softmax_to_f32_strided", 1),
    ];
    for (shape, dim, kernel, reads) in cases {
        let n: usize = shape.iter().product();
        let x = DeviceTensor::<f16>::from_host(&d, &vec![f16::from_f32(0.5); n], shape).unwrap();
        let y = Softmax::new().dim(dim).forward_f32(&x).unwrap();
        let stats = d.last_launch_stats().unwrap();
        assert!(
            stats.kernel.starts_with(kernel),
            "{shape:?} ran {}",
            stats.kernel
        );
        // Split-row also writes and reads its per-chunk states: a few bytes per block.
        let states = if kernel.contains("split") {
            2 * 8 * 1024
        } else {
            0
        };
        let read = stats.kernel_bytes_read;
        assert!(
            read >= reads * 2 * n as u64 && read <= reads * 2 * n as u64 + states,
            "{}: read {read} bytes of {n} f16 elements",
            stats.kernel
        );
        let written = stats.kernel_bytes_written;
        assert!(
            written >= 4 * n as u64 && written <= 4 * n as u64 + states,
            "{}: wrote {written} bytes for {n} f32 elements",
            stats.kernel
        );
        if dim == -1 {
            let share = stats.accesses_16b as f64 / stats.accesses as f64;
            assert!(
                share >= 0.99,
                "{}: {share} of accesses 16 bytes",
                stats.kernel
            );
        }
        let probabilities = y.to_host().unwrap();
        let row = shape[if dim == -1 {
            shape.len() - 1
        } else {
            dim as usize
        }] as f32;
        assert!(
            probabilities.iter().all(|&p| p == 1.0 / row),
            "{}",
            stats.kernel
        );
    }
}

/// A misaligned view keeps 16-byte accesses for the body of long rows (scalar head and tail).
#[test]
fn misaligned_long_rows_still_use_vector_accesses() {
    let d = emulator(Schedule::Forward);
    let cols = 8003;
    let all =
        DeviceTensor::<f32>::from_host(&d, &vec![0.25; cols * 3 + 1], &[cols * 3 + 1]).unwrap();
    let x = all.view(1, &[3, cols]).unwrap();
    let _y = softmax(&x).unwrap();
    let s = d.last_launch_stats().unwrap();
    let vector_bytes = s.accesses_16b * 16;
    let total = s.kernel_bytes_read + s.kernel_bytes_written;
    assert!(vector_bytes as f64 > 0.99 * total as f64, "{s:?}");
}

/// The emulator's __half / __nv_bfloat16 conversions agree bit for bit with the `half` crate
/// (round to nearest even): every 16-bit pattern widened, and f32 values narrowed across the
/// whole range, including subnormals, ties, overflow and NaN.
#[test]
fn storage_type_conversions_round_to_nearest_even() {
    use cuda_softmax::tools::emulator_conversions as emu;
    use cuda_softmax::{bf16, f16};
    for bits in 0..=u16::MAX {
        let (a, b) = (emu::f16_bits_to_f32(bits), f16::from_bits(bits).to_f32());
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "f16 {bits:#06x}"
        );
        let (a, b) = (emu::bf16_bits_to_f32(bits), bf16::from_bits(bits).to_f32());
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "bf16 {bits:#06x}"
        );
    }
    // Every f32 bit pattern with a stride that visits every exponent and many mantissa
    // patterns, plus the exact rounding boundaries of both formats.
    let mut patterns: Vec<u32> = (0..=u32::MAX).step_by(997).collect();
    for h in 0..=u16::MAX as u32 {
        let f = f16::from_bits(h as u16).to_f32().to_bits();
        patterns.extend([
            f,
            f.wrapping_add(0x1000),
            f.wrapping_add(0xfff),
            f.wrapping_add(0x1001),
        ]);
        let b = h << 16;
        patterns.extend([b | 0x8000, b | 0x7fff, b | 0x8001]);
    }
    for bits in patterns {
        let f = f32::from_bits(bits);
        let (a, b) = (emu::f32_to_f16_bits(f), f16::from_f32(f));
        if f.is_nan() {
            assert!(
                f16::from_bits(a).is_nan(),
                "f32 {bits:#010x} -> f16 must stay NaN"
            );
        } else {
            assert_eq!(a, b.to_bits(), "f32 {bits:#010x} ({f:e}) -> f16");
        }
        let (a, b) = (emu::f32_to_bf16_bits(f), bf16::from_f32(f));
        if f.is_nan() {
            assert!(
                bf16::from_bits(a).is_nan(),
                "f32 {bits:#010x} -> bf16 must stay NaN"
            );
        } else {
            assert_eq!(a, b.to_bits(), "f32 {bits:#010x} ({f:e}) -> bf16");
        }
    }
}

/// One device shared by several threads launching at once: every result is right (the
/// emulator's shared state, the kernel table and the stack pool, is safe to share).
#[test]
fn concurrent_launches_on_one_device() {
    use cuda_softmax::tools::check::{Rng, Tolerance, compare};
    let d = Device::emulator();
    let seed = Rng::seed_from_env();
    println!("concurrent_launches_on_one_device: seed {seed}");
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let d = d.clone();
            scope.spawn(move || {
                let mut rng = Rng::new(seed ^ t);
                for cols in [5, 300, 3000, 40_000] {
                    let rows = 3;
                    let x: Vec<f32> = rng.logits(rows * cols, 6.0);
                    let xt = DeviceTensor::from_host(&d, &x, &[rows, cols]).unwrap();
                    let got = softmax(&xt).unwrap().to_host().unwrap();
                    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let want = cuda_softmax::tools::reference::softmax_rows(&x64, cols);
                    let c = compare(&got, &want, Tolerance::softmax(cuda_softmax::Dtype::F32));
                    assert!(c.passed(), "thread {t}, {cols} columns: {c}");
                }
            });
        }
    });
}

/// The shared-memory wavefront counter against accesses whose bank behaviour is known: per warp,
/// consecutive floats take one wavefront, floats two apart take two (lanes l and l + 16 share a
/// bank), consecutive 16-byte packs take the minimum four (quarter-warps), packs 32 bytes apart
/// take eight.
#[test]
fn shared_bank_conflicts_are_counted() {
    let threads = 64u32; // two warps
    for schedule in SCHEDULES {
        let d = emulator(schedule);
        for (kernel, smem_floats, wavefronts, ideal) in [
            ("emu_selftest_smem_stride1", 64, 2, 2),
            ("emu_selftest_smem_stride2", 128, 4, 2),
            ("emu_selftest_smem_pack16_stride1", 256, 8, 8),
            ("emu_selftest_smem_pack16_stride2", 512, 16, 8),
        ] {
            let mut y = poisoned(&d, threads as usize);
            d.emulator_selftest(kernel, threads, smem_floats * 4, &mut y)
                .unwrap();
            let s = d.last_launch_stats().unwrap();
            assert_eq!(
                (s.shared_wavefronts, s.shared_wavefronts_ideal),
                (wavefronts, ideal),
                "{kernel} {schedule:?}"
            );
        }
    }
}

/// Every shared-memory access of the block family (the row on chip), and of the reductions of
/// the online and split-row families, takes the fewest wavefronts its width allows: no bank
/// conflicts, every dtype, rows with and without a scalar head (x and y sharing alignment, as
/// they do unless a caller passes views of different alignment).
#[test]
fn shared_memory_accesses_are_conflict_free() {
    fn check<T: cuda_softmax::Element>(d: &Device) {
        let mut rng = cuda_softmax::tools::check::Rng::new(11);
        for (rows, cols, offset) in [
            (9, 4000, 0),
            (9, 4001, 1),
            (5, 8200, 3),
            (8, 65_536, 0),
            (3, 65_536, 0),
        ] {
            let n = rows * cols + offset;
            let host: Vec<T> = rng.logits(n, 4.0);
            let all = DeviceTensor::from_host(d, &host, &[n]).unwrap();
            let x = all.view(offset, &[rows, cols]).unwrap();
            let mut y = x.view(0, &[rows, cols]).unwrap();
            cuda_softmax::softmax_into(&x, &mut y).unwrap();
            let s = d.last_launch_stats().unwrap();
            assert!(
                s.shared_wavefronts > 0,
                "{}: no shared access counted",
                s.kernel
            );
            assert_eq!(
                s.shared_wavefronts, s.shared_wavefronts_ideal,
                "{} {rows}x{cols} (offset {offset}): bank conflicts",
                s.kernel
            );
        }
    }
    let d = emulator(Schedule::Forward);
    check::<f32>(&d);
    check::<cuda_softmax::f16>(&d);
    check::<cuda_softmax::bf16>(&d);
}

/// Global traffic of the family ops over the minimum, per family, printed for the performance
/// log and held to the bounds: log-softmax like softmax (1.0 on chip, 1.5 two-pass);
/// backward 1.0 where the row sits in registers, at most 5/3 otherwise (y and dy read twice);
/// logsumexp reads x once.
#[test]
fn family_ops_move_the_minimum_traffic() {
    use cuda_softmax::{Softmax, log_softmax, logsumexp};
    let d = emulator(Schedule::Forward);
    let sm = d.limits().sm_count as usize;
    // (rows, cols): warp, block, online (a row per SM), split-row.
    let shapes = [(6, 1024), (6, 8192), (sm, 65536), (3, 65536)];
    for (rows, cols) in shapes {
        let n = rows * cols;
        let min = (n * 4) as f64;
        let x = DeviceTensor::<f32>::from_host(&d, &vec![0.5; n], &[rows, cols]).unwrap();
        let traffic = |what: &str, tensors: f64| {
            let s = d.last_launch_stats().unwrap();
            let ratio = (s.kernel_bytes_read + s.kernel_bytes_written) as f64 / (tensors * min);
            println!(
                "{what:<20} {rows:>3} x {cols:>6}: {:<70} {ratio:.3}x",
                s.kernel
            );
            (s.kernel, ratio)
        };
        let _y = log_softmax(&x).unwrap();
        let (kernel, ratio) = traffic("log_softmax", 2.0);
        let two_pass = kernel.contains("online") || kernel.contains("split");
        let bound = if two_pass { 1.5 } else { 1.0 };
        assert!((ratio - bound).abs() < 2e-3, "{kernel}: {ratio}");

        let y = Softmax::new().forward(&x).unwrap();
        let _dx = Softmax::new().backward(&y, &x).unwrap();
        let (kernel, ratio) = traffic("softmax_backward", 3.0);
        // y and dy held in registers (warp) or shared memory (block): 1.0; else read twice.
        let bound = if kernel.contains("warp") || kernel.contains("block") {
            1.0
        } else {
            5.0 / 3.0
        };
        assert!((ratio - bound).abs() < 2e-3, "{kernel}: {ratio}");

        let _l = logsumexp(&x).unwrap();
        let s = d.last_launch_stats().unwrap();
        let read = s.kernel_bytes_read as f64 / min;
        println!(
            "logsumexp            {rows:>3} x {cols:>6}: {:<70} reads {read:.3}x",
            s.kernel
        );
        assert!((read - 1.0).abs() < 2e-3, "{}: {read}", s.kernel);
    }
}

/// The strided family's traffic (issue 8): 1.0 when the block's rows fit in shared memory (each
/// element read once, written once), else a second read: 1.5 forward, 5/3 backward. Checked
/// for each slice count the planner picks on the emulator (8 SMs, 96 KiB) with inner 3 (a
/// warp's loads span several slabs) and 64.
#[test]
fn strided_family_moves_the_minimum_traffic() {
    use cuda_softmax::Softmax;
    let d = emulator(Schedule::Forward);
    // (shape, dim): one warp a block with short rows; 8 and 32 warps; two-pass (rows longer than
    // 32 fit in 96 KiB: 696 f32 forward, 348 backward).
    let cases: [(&[usize], isize); 6] = [
        (&[40, 3, 600], 1),
        (&[2, 100, 64], 1),
        (&[1, 600, 3], 1),
        (&[1, 300, 64], 1),
        (&[1, 800, 3], 1),
        (&[2, 1000, 64], 1),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (shape, dim) in cases {
        let n: usize = shape.iter().product();
        let min = (n * 4) as f64;
        let x: Vec<f32> = (0..n).map(|i| (i % 17) as f32 * 0.25).collect();
        let x = DeviceTensor::<f32>::from_host(&d, &x, shape).unwrap();
        let op = Softmax::new().dim(dim);
        let traffic = |what: &str, tensors: f64| {
            let s = d.last_launch_stats().unwrap();
            let ratio = (s.kernel_bytes_read + s.kernel_bytes_written) as f64 / (tensors * min);
            println!(
                "{what:<18} {shape:?} dim {dim}: {:<44} {ratio:.3}x",
                s.kernel
            );
            (s.kernel, ratio)
        };
        let y = op.forward(&x).unwrap();
        let (kernel, ratio) = traffic("softmax", 2.0);
        let bound = if kernel.contains("onchip") { 1.0 } else { 1.5 };
        assert!(kernel.contains("strided"), "{kernel}");
        assert!((ratio - bound).abs() < 1e-9, "{kernel}: {ratio}");
        seen.insert(kernel);
        let _dx = op.backward(&y, &x).unwrap();
        let (kernel, ratio) = traffic("softmax_backward", 3.0);
        let bound = if kernel.contains("onchip") {
            1.0
        } else {
            5.0 / 3.0
        };
        assert!((ratio - bound).abs() < 1e-9, "{kernel}: {ratio}");
        seen.insert(kernel);
    }
    // What these shapes reach: on chip at 1, 8 and 32 warps a block, two-pass at 32, with one
    // row a lane (inner 3) and two (inner 64). (Two-pass at 1 or 8 warps needs millions of
    // elements on the emulator's 8 SMs; every variant's traffic is also checked by launching it
    // directly: the crate's strided_kernels tests.)
    for name in [
        "softmax_strided_onchip_f32_s1_v2",
        "softmax_strided_onchip_f32_s8_v2",
        "softmax_strided_onchip_f32_s32_v1",
        "softmax_strided_onchip_f32_s32_v2",
        "softmax_strided_twopass_f32_s32_v1",
        "softmax_strided_twopass_f32_s32_v2",
        "softmax_backward_strided_onchip_f32_s1_v2",
        "softmax_backward_strided_onchip_f32_s8_v2",
        "softmax_backward_strided_onchip_f32_s32_v1",
        "softmax_backward_strided_twopass_f32_s32_v1",
        "softmax_backward_strided_twopass_f32_s32_v2",
    ] {
        assert!(seen.contains(name), "no {name} case: {seen:?}");
    }
}
