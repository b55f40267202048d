//! The planners' unit tests: every dispatch decision, every registry index, the shared-memory
//! invariant at every capacity boundary.

use super::{
    cross_entropy::*, limits::*, op::*, plan::*, registry::*, rows::*, shared_memory::*, strided::*,
};
use crate::types::element::Dtype;

fn plan(rows: usize, cols: usize, dtype: Dtype, aligned16: bool) -> LaunchPlan {
    plan_softmax(
        &SoftmaxProblem {
            op: Op::Softmax,
            rows,
            cols,
            dtype,
            aligned16,
        },
        &DeviceLimits::H100,
    )
}

/// The only stage of a single-kernel plan.
fn single(rows: usize, cols: usize, dtype: Dtype, aligned16: bool) -> Stage {
    let p = plan(rows, cols, dtype, aligned16);
    assert_eq!(p.stages.len(), 1, "{p:?}");
    assert_eq!(p.workspace_floats, 0);
    p.stages[0]
}

#[test]
fn short_rows_pack_several_rows_per_warp() {
    // Eight elements a lane; as few lanes as cover the row.
    for (cols, width) in [(1, 1), (3, 1), (8, 1), (9, 2), (16, 2), (17, 4), (64, 8)] {
        let s = single(1000, cols, Dtype::F32, false);
        let expected = Family::Warp {
            width,
            cols_per_lane: 8,
            vec: 1,
        };
        assert_eq!(s.kernel.family, expected, "cols {cols}");
        assert_eq!(s.block, 128);
    }
}

#[test]
fn warp_rows_use_vectors_only_when_every_row_is_aligned() {
    let name = |rows, cols, dtype, aligned| single(rows, cols, dtype, aligned).kernel.name();
    assert_eq!(
        name(64, 1024, Dtype::F32, true),
        "softmax_warp_f32_w32_c32_v4"
    );
    assert_eq!(
        name(64, 1024, Dtype::F32, false),
        "softmax_warp_f32_w32_c32_v1"
    );
    // 1023 columns: row starts drift off 16-byte boundaries.
    assert_eq!(
        name(64, 1023, Dtype::F32, true),
        "softmax_warp_f32_w32_c32_v1"
    );
    // 32 f16 columns: four lanes of one 8-wide pack each, eight rows a warp.
    assert_eq!(name(64, 32, Dtype::F16, true), "softmax_warp_f16_w4_c8_v8");
    // 32 f32 columns: four lanes of two 4-wide packs.
    assert_eq!(name(64, 32, Dtype::F32, true), "softmax_warp_f32_w4_c8_v4");
    assert_eq!(
        name(64, 256, Dtype::F32, true),
        "softmax_warp_f32_w32_c8_v4"
    );
    assert_eq!(
        name(64, 257, Dtype::F32, false),
        "softmax_warp_f32_w32_c16_v1"
    );
    assert_eq!(
        name(64, 2048, Dtype::Bf16, true),
        "softmax_warp_bf16_w32_c64_v8"
    );
}

#[test]
fn every_shape_gets_kernels_that_cover_it() {
    let all = KernelConfig::all();
    for dtype in Dtype::ALL {
        for cols in (1..=4100).chain([8003, 16384, 65537, 1 << 20]) {
            for rows in [1, 3, 131, 132, 5000] {
                for aligned in [true, false] {
                    let p = plan(rows, cols, dtype, aligned);
                    for s in &p.stages {
                        assert!(all.contains(&s.kernel), "{p:?}");
                        assert!(s.grid.0 >= 1 && s.grid.1 >= 1 && s.grid.1 <= 65535);
                    }
                    match p.stages[0].kernel.family {
                        Family::Warp {
                            width,
                            cols_per_lane,
                            vec,
                        } => {
                            let lengths = p.stages[0].kernel.warp_row_lengths().unwrap();
                            assert!(lengths.contains(&cols), "{cols} columns: {lengths:?}");
                            assert!((width * cols_per_lane) as usize >= cols);
                            assert!(cols_per_lane % vec == 0);
                            if vec > 1 {
                                assert!(aligned && cols % vec as usize == 0);
                            }
                        }
                        Family::Block { .. } => {
                            let s = p.stages[0];
                            let lead_in = dtype.vector_width();
                            let bytes = (cols + lead_in) * dtype.size_bytes();
                            assert_eq!(s.shared_mem_bytes as usize, bytes.next_multiple_of(16));
                            let limit = DeviceLimits::H100.max_shared_mem_per_block as usize;
                            assert!(s.shared_mem_bytes as usize + STATIC_SMEM_RESERVE <= limit);
                        }
                        Family::Online { .. } => {
                            let bytes = (cols + dtype.vector_width()) * dtype.size_bytes();
                            assert!(bytes + STATIC_SMEM_RESERVE > 227 * 1024)
                        }
                        Family::SplitStats { .. } => {
                            let chunks = p.stages[0].grid.0 as usize;
                            assert_eq!(p.stages[0].grid, p.stages[1].grid);
                            assert!(matches!(
                                p.stages[1].kernel.family,
                                Family::SplitWrite { .. }
                            ));
                            assert_eq!(p.stages[0].grid.1 as usize, rows);
                            // The chunks tile the row exactly, none empty.
                            assert!(chunks * p.chunk_cols >= cols);
                            assert!((chunks - 1) * p.chunk_cols < cols);
                            assert_eq!(p.chunk_cols % 8, 0);
                            assert_eq!(p.workspace_floats, 2 * chunks * rows);
                        }
                        Family::SplitWrite { .. } => {
                            panic!("split-row starts with its stats pass")
                        }
                        Family::Strided { .. } => {
                            panic!("rows over the last dimension are never strided")
                        }
                        Family::CrossEntropy { .. } => {
                            panic!("plan_softmax never plans cross-entropy")
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn family_boundaries_follow_the_device_limits() {
    let family = |rows, cols, dtype| single(rows, cols, dtype, true).kernel.family;
    assert!(matches!(family(8, 2048, Dtype::F32), Family::Warp { .. }));
    assert_eq!(family(8, 2049, Dtype::F32), Family::Block { threads: 128 });
    // The row in its storage type plus one pack of lead-in, rounded to 16 bytes.
    assert_eq!(single(8, 2049, Dtype::F32, true).shared_mem_bytes, 8224);
    assert_eq!(single(8, 2049, Dtype::Bf16, true).shared_mem_bytes, 4128);
    assert_eq!(
        family(200, 16384, Dtype::F32),
        Family::Block { threads: 512 }
    );
    // The longest row the block family takes leaves room for static shared memory; 16-bit
    // rows are held as 16-bit, so twice as long.
    for (dtype, max_cols) in [(Dtype::F32, 57_852), (Dtype::F16, 115_704)] {
        assert!(matches!(family(200, max_cols, dtype), Family::Block { .. }));
        assert_eq!(
            family(200, max_cols + 1, dtype),
            Family::Online { threads: 512 }
        );
    }
    // A device with 48 KiB of shared memory switches to the online kernel sooner.
    let small = DeviceLimits {
        sm_count: 8,
        max_shared_mem_per_block: 48 * 1024,
    };
    let problem = SoftmaxProblem {
        op: Op::Softmax,
        rows: 200,
        cols: 12 * 1024 + 1,
        dtype: Dtype::F32,
        aligned16: true,
    };
    let p = plan_softmax(&problem, &small);
    assert_eq!(p.stages[0].kernel.family, Family::Online { threads: 512 });
}

/// The backward ops hold y and dy on chip: their block family takes rows up to half the
/// forward's length, with twice the shared memory; longer rows go two-pass.
#[test]
fn backward_rows_are_held_on_chip_when_both_fit() {
    for op in [Op::SoftmaxBackward, Op::LogSoftmaxBackward] {
        for dtype in Dtype::ALL {
            let max = block_family_max_cols_of(op, dtype, &DeviceLimits::H100);
            let forward = block_family_max_cols(dtype, &DeviceLimits::H100);
            assert_eq!(
                max,
                ((227 * 1024 - STATIC_SMEM_RESERVE) / 2 / 16 * 16) / dtype.size_bytes()
                    - dtype.vector_width()
            );
            assert!(max < forward / 2 + dtype.vector_width());
            let plan = |cols| {
                plan_softmax(
                    &SoftmaxProblem {
                        op,
                        rows: 200,
                        cols,
                        dtype,
                        aligned16: true,
                    },
                    &DeviceLimits::H100,
                )
            };
            let at_max = plan(max).stages[0];
            assert!(
                matches!(at_max.kernel.family, Family::Block { .. }),
                "{at_max:?}"
            );
            assert_eq!(
                at_max.shared_mem_bytes as usize,
                2 * block_smem_bytes(dtype, max)
            );
            assert!(at_max.shared_mem_bytes as usize + STATIC_SMEM_RESERVE <= 227 * 1024);
            let past = plan(max + 1).stages[0];
            assert_eq!(past.kernel.family, Family::Online { threads: 512 });
            assert!(matches!(
                plan(2049).stages[0].kernel.family,
                Family::Block { threads: 128 }
            ));
        }
    }
}

#[test]
fn few_long_rows_are_split_across_the_gpu() {
    // 8 rows of a 256K vocabulary on 132 SMs: 33 chunks per row, 264 blocks per pass.
    let p = plan(8, 262_144, Dtype::Bf16, true);
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.stages[0].kernel.name(), "softmax_split_stats_bf16_b256");
    assert_eq!(p.stages[1].kernel.name(), "softmax_split_write_bf16_b256");
    assert_eq!(p.stages[0].grid, (33, 8));
    assert_eq!(p.chunk_cols, 7944);
    // One row: chunks of at least 2048 elements.
    let p = plan(1, 20_000, Dtype::F32, true);
    assert_eq!(p.stages[0].grid, (9, 1));
    // As many rows as SMs: one block per row is enough parallelism.
    assert_eq!(plan(132, 262_144, Dtype::F32, true).stages.len(), 1);
    // Short rows are never split.
    assert_eq!(
        plan(1, SPLIT_MIN_COLS - 1, Dtype::F32, true).stages.len(),
        1
    );
}

#[test]
fn grids_cover_the_rows_and_are_capped() {
    let grid = |rows, cols| single(rows, cols, Dtype::F32, true).grid;
    // 5 columns: one lane a row, 128 rows per block; 1000 rows need 8 blocks.
    assert_eq!(grid(1000, 5), (8, 1));
    // 100 columns: 16 lanes a row, 8 rows per block.
    assert_eq!(grid(1000, 100), (125, 1));
    // 300 columns: a warp per row, 4 rows per block.
    assert_eq!(grid(1000, 300), (250, 1));
    // Many rows: the grid stops at 32 blocks per SM and the kernel loops.
    assert_eq!(grid(10_000_000, 100), (132 * 32, 1));
    assert_eq!(grid(100_000, 4097), (132 * 32, 1));
    assert_eq!(grid(200, 1 << 20), (200, 1));
    // Degenerate inputs still give a valid launch.
    let s = single(0, 0, Dtype::F32, true);
    assert!(s.grid.0 >= 1 && s.block >= 1);
}

/// Cross-entropy plans: the stages each mode needs, in order; chunks that tile a row
/// exactly, aligned, none empty; a split only when rows are too few to fill the GPU; row
/// grids within the 65535 limit; the workspace the kernels index.
#[test]
fn cross_entropy_plans_cover_every_row_and_chunk() {
    use CrossEntropyStage::*;
    let limits = DeviceLimits::H100;
    let stages = |mode| {
        plan_cross_entropy(4, 1000, Dtype::Bf16, mode, &limits)
            .stages
            .iter()
            .map(|s| match s.kernel.family {
                Family::CrossEntropy { stage } => stage,
                f => panic!("{f:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(stages(CrossEntropyMode::CheckTargets), [Prepare]);
    assert_eq!(
        stages(CrossEntropyMode::Loss { reduce: false }),
        [Prepare, Stats, Finish]
    );
    assert_eq!(
        stages(CrossEntropyMode::Loss { reduce: true }),
        [Prepare, Stats, Finish, Reduce]
    );
    // Rows that fit on chip (and are not split): one kernel reads them once.
    assert_eq!(
        stages(CrossEntropyMode::LossAndGradient { reduce: true }),
        [Prepare, OnChip, Reduce]
    );
    let long = plan_cross_entropy(
        4,
        128_256,
        Dtype::Bf16,
        CrossEntropyMode::LossAndGradient { reduce: false },
        &limits,
    );
    let long: Vec<_> = long.stages.iter().map(|s| s.kernel.family).collect();
    assert_eq!(
        long,
        [Prepare, Stats, Finish, Grad].map(|stage| Family::CrossEntropy { stage })
    );
    assert_eq!(stages(CrossEntropyMode::GradientFromLse), [Prepare, Grad]);
    let all = KernelConfig::all();
    for rows in [1, 3, 64, 132, 8192, 70001, 200_000] {
        for cols in [1, 2, 31, 1000, 32000, 128_256, 262_147, 1 << 20] {
            let mode = CrossEntropyMode::LossAndGradient { reduce: true };
            let p = plan_cross_entropy(rows, cols, Dtype::F16, mode, &limits);
            let chunks = cols.div_ceil(p.chunk_cols);
            assert_eq!(p.chunk_cols % SPLIT_CHUNK_ALIGN, 0);
            assert!((chunks - 1) * p.chunk_cols < cols, "no empty chunk");
            if rows >= 4 * limits.sm_count as usize || cols <= SPLIT_MIN_CHUNK {
                assert_eq!(chunks, 1, "[{rows}, {cols}]: split needlessly");
            } else {
                // Few rows of a long vocabulary: about four blocks an SM, or as many
                // chunks as SPLIT_MIN_CHUNK allows.
                let sm = limits.sm_count as usize;
                let most = rows * (cols / SPLIT_MIN_CHUNK);
                assert!(rows * chunks >= (2 * sm).min(most), "[{rows}, {cols}]");
            }
            assert_eq!(
                p.workspace_floats,
                CROSS_ENTROPY_GLOBALS + 4 * rows + 4 * rows * chunks
            );
            for s in &p.stages {
                assert!(all.contains(&s.kernel));
                assert_eq!(s.block, s.kernel.threads_per_block());
                assert!(s.grid.0 >= 1 && s.grid.1 >= 1 && s.grid.1 <= 65535);
                if let Family::CrossEntropy {
                    stage: Stats | Grad,
                } = s.kernel.family
                {
                    assert_eq!(s.grid, (chunks as u32, rows.min(65535) as u32));
                }
            }
        }
    }
}

#[test]
fn index_is_the_position_in_all() {
    let all = KernelConfig::all();
    assert_eq!(all.len(), KernelConfig::COUNT);
    for (i, k) in all.iter().enumerate() {
        assert_eq!(k.index(), Some(i), "{k:?}");
    }
    // Configurations no entry point exists for have no index.
    let config = |dtype, family| KernelConfig {
        op: Op::Softmax,
        dtype,
        family,
    };
    let warp = |width, cols_per_lane, vec| Family::Warp {
        width,
        cols_per_lane,
        vec,
    };
    for k in [
        config(Dtype::F32, warp(3, 8, 1)),
        config(Dtype::F32, warp(16, 16, 1)),
        config(Dtype::F32, warp(32, 128, 1)),
        config(Dtype::F32, warp(32, 8, 8)),
        config(Dtype::F16, warp(32, 8, 4)),
        config(Dtype::F32, Family::Block { threads: 64 }),
        config(Dtype::Bf16, Family::Online { threads: 256 }),
        config(Dtype::F16, Family::SplitStats { threads: 128 }),
        config(Dtype::F16, Family::SplitWrite { threads: 0 }),
    ] {
        assert_eq!(k.index(), None, "{k:?}");
    }
}

#[test]
fn kernel_names_are_unique_and_cover_every_dtype() {
    let all = KernelConfig::all();
    let names: Vec<String> = all.iter().map(|k| k.name()).collect();
    // Two configurations share an entry point exactly when their code ignores what tells them
    // apart: the forward ops' and logsumexp's split stats of one dtype, logsumexp's split merge,
    // and cross-entropy's prepare and reduce stages.
    let shares = |a: &KernelConfig, b: &KernelConfig| match (a.family, b.family) {
        (Family::SplitStats { .. }, Family::SplitStats { .. }) => {
            a.op.inputs() == 1 && b.op.inputs() == 1 && a.dtype == b.dtype
        }
        (Family::SplitWrite { .. }, Family::SplitWrite { .. }) => {
            a.op == Op::LogSumExp && b.op == Op::LogSumExp
        }
        (Family::CrossEntropy { stage: s }, Family::CrossEntropy { stage: t }) => {
            s == t && matches!(s, CrossEntropyStage::Prepare | CrossEntropyStage::Reduce)
        }
        _ => false,
    };
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_eq!(
                names[i] == names[j],
                shares(&all[i], &all[j]),
                "{} / {}",
                names[i],
                names[j]
            );
        }
    }
    // 809 configurations, 793 entry points: 4 forward ops and logsumexp share 3 + 2 + 2 split
    // stats (f32 has no _to_f32 ops), logsumexp 1 merge, cross-entropy 1 prepare and 1 reduce.
    assert_eq!(all.len(), 809);
    assert_eq!(
        KernelConfig::entry_names().len(),
        809 - (2 + 4 + 4) - 2 - 2 - 2
    );
    for dtype in Dtype::ALL {
        let of = |f: fn(&Family) -> bool| {
            all.iter()
                .filter(|k| k.op == Op::Softmax && k.dtype == dtype && f(&k.family))
                .count()
        };
        // (6 widths at 8 a lane + 7 longer full-warp shapes) x (scalar, vector).
        assert_eq!(of(|f| matches!(f, Family::Warp { .. })), 26);
        assert_eq!(of(|f| matches!(f, Family::Block { .. })), 3);
        assert_eq!(of(|f| matches!(f, Family::Online { .. })), 1);
        assert_eq!(of(|f| matches!(f, Family::SplitStats { .. })), 1);
        assert_eq!(of(|f| matches!(f, Family::SplitWrite { .. })), 1);
        assert_eq!(of(|f| matches!(f, Family::Strided { .. })), 12);
    }
    // logsumexp is over the last dimension only.
    assert!(
        !all.iter()
            .any(|k| k.op == Op::LogSumExp && matches!(k.family, Family::Strided { .. }))
    );
}

fn strided(op: Op, (outer, n, inner): (usize, usize, usize), dtype: Dtype) -> LaunchPlan {
    plan_strided(
        &StridedProblem {
            op,
            outer,
            n,
            inner,
            dtype,
            aligned_pairs: true,
        },
        &DeviceLimits::H100,
    )
}

#[test]
fn strided_plans_pick_warps_rows_a_lane_and_on_chip_by_shape() {
    let family = |op, shape, dtype| strided(op, shape, dtype).stages[0].kernel.family;
    let f = |slices, on_chip, vec| Family::Strided {
        slices,
        on_chip,
        vec,
    };
    // Rows of 3: one warp a block (a row is never split below 4 elements a warp); inner
    // even: two rows a lane.
    assert_eq!(family(Op::Softmax, (1, 3, 5000), Dtype::F32), f(1, true, 2));
    // Odd inner: one row a lane.
    assert_eq!(family(Op::Softmax, (1, 3, 5001), Dtype::F32), f(1, true, 1));
    // Enough rows to fill 132 SMs (2048 threads each) at one warp a block (64 rows a warp),
    // and 8 KiB a block leaves 25 blocks an SM.
    assert_eq!(
        family(Op::Softmax, (128, 32, 8192), Dtype::F32),
        f(1, true, 2)
    );
    // 131,072 rows of 128: 8 warps a block fill the GPU, 6 blocks an SM fit (32 KiB each).
    assert_eq!(
        family(Op::Softmax, (64, 128, 2048), Dtype::F32),
        f(8, true, 2)
    );
    // Rows of 512: 128 KiB a block leaves one block an SM: 32 warps keep it busy.
    assert_eq!(
        family(Op::Softmax, (64, 512, 4096), Dtype::F32),
        f(32, true, 2)
    );
    // Few rows: the row split over 32 warps.
    assert_eq!(
        family(Op::LogSoftmax, (2, 1000, 16), Dtype::Bf16),
        f(32, true, 2)
    );
    assert_eq!(
        family(Op::Softmax, (1, 100_000, 2), Dtype::F32),
        f(32, false, 2)
    );
    // The on-chip limit: the block's rows in their storage type beside the partial states
    // and the reserve; backward holds two tensors. Past the two-rows limit, one row a lane
    // on chip; past both, two rows a lane read twice.
    let max = |dtype, inputs, vec| strided_on_chip_max_n(dtype, inputs, vec, &DeviceLimits::H100);
    assert_eq!(max(Dtype::F32, 1, 1), (227 * 1024 - 1024 - 8192) / 128);
    assert_eq!(max(Dtype::F32, 1, 2), (227 * 1024 - 1024 - 16384) / 256);
    assert_eq!(max(Dtype::Bf16, 1, 1), 2 * max(Dtype::F32, 1, 1));
    assert_eq!(max(Dtype::F32, 2, 1), max(Dtype::F32, 1, 1) / 2);
    let (two, one) = (max(Dtype::F32, 1, 2), max(Dtype::F32, 1, 1));
    assert_eq!(
        family(Op::Softmax, (1, two, 64), Dtype::F32),
        f(32, true, 2)
    );
    assert_eq!(
        family(Op::Softmax, (1, two + 1, 64), Dtype::F32),
        f(32, true, 1)
    );
    assert_eq!(
        family(Op::Softmax, (1, one, 64), Dtype::F32),
        f(32, true, 1)
    );
    assert_eq!(
        family(Op::Softmax, (1, one + 1, 64), Dtype::F32),
        f(32, false, 2)
    );
    let backward = max(Dtype::F32, 2, 1);
    assert_eq!(
        family(Op::SoftmaxBackward, (1, backward + 1, 64), Dtype::F32),
        f(32, false, 2)
    );
    // Views not aligned to two elements: one row a lane.
    let p = plan_strided(
        &StridedProblem {
            op: Op::Softmax,
            outer: 1,
            n: 3,
            inner: 5000,
            dtype: Dtype::F16,
            aligned_pairs: false,
        },
        &DeviceLimits::H100,
    );
    assert_eq!(p.stages[0].kernel.family, f(1, true, 1));
}

#[test]
fn every_strided_shape_gets_a_valid_launch() {
    let all = KernelConfig::all();
    let limit = DeviceLimits::H100.max_shared_mem_per_block as usize;
    let lengths = [
        1,
        2,
        3,
        4,
        7,
        31,
        32,
        33,
        127,
        128,
        500,
        871,
        872,
        873,
        1744,
        1745,
        5000,
        1 << 20,
    ];
    for op in [Op::Softmax, Op::LogSoftmaxBackward] {
        for dtype in Dtype::ALL {
            for n in lengths {
                for (outer, inner) in [(1, 2), (3, 5), (1, 4096), (100, 1000), (7, 1 << 16)] {
                    let p = strided(op, (outer, n, inner), dtype);
                    assert_eq!(p.stages.len(), 1);
                    let s = p.stages[0];
                    assert!(all.contains(&s.kernel), "{p:?}");
                    let Family::Strided {
                        slices,
                        on_chip,
                        vec,
                    } = s.kernel.family
                    else {
                        panic!("{p:?}")
                    };
                    assert_eq!(s.block, 32 * slices);
                    assert!(slices == 1 || n >= 4 * slices as usize, "{p:?}");
                    assert!(vec == 1 || inner % 2 == 0, "{p:?}");
                    let tiles = (outer * inner).div_ceil(32 * vec as usize);
                    assert!(s.grid.0 >= 1 && s.grid.0 as usize <= tiles.max(1), "{p:?}");
                    let inputs = if op.is_backward() { 2 } else { 1 };
                    let rows_on_chip = 32 * vec as usize;
                    if on_chip {
                        let bytes = rows_on_chip * n * inputs * dtype.size_bytes();
                        assert_eq!(s.shared_mem_bytes as usize, bytes);
                    } else {
                        assert_eq!(s.shared_mem_bytes, 0);
                    }
                    let total = s.shared_mem_bytes as usize
                        + strided_static_smem_bytes(slices, vec)
                        + STATIC_SMEM_RESERVE;
                    assert!(total <= limit, "{p:?}");
                }
            }
        }
    }
}

/// Devices with every per-block shared-memory limit a supported GPU has (sm_75 64 KiB, sm_80
/// 163 KiB, sm_86/89 99 KiB, sm_90 227 KiB), the emulator's 96 KiB, and a 48 KiB one.
const SMEM_LIMITS: [u32; 6] = [48, 64, 96, 99, 163, 227];

fn devices() -> impl Iterator<Item = DeviceLimits> {
    SMEM_LIMITS.into_iter().flat_map(|kib| {
        [8, 132].map(|sm_count| DeviceLimits {
            sm_count,
            max_shared_mem_per_block: kib * 1024,
        })
    })
}

/// Sizes around `edge`, and a geometric sweep from 1 to 2^21: every capacity boundary is
/// crossed element by element, wherever a planner puts it.
fn sizes_around(edges: &[usize]) -> Vec<usize> {
    let mut sizes: Vec<usize> = (0..=21).map(|k| 1usize << k).collect();
    for &edge in edges {
        sizes.extend(edge.saturating_sub(40)..=edge + 40);
    }
    sizes.retain(|&s| s > 0);
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// The largest size with `on_chip(size)` true, found by bisection between 1 and 2^22 (the
/// predicate is monotone: longer rows never go back on chip).
fn largest_on_chip(on_chip: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0usize, 1usize << 22);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if on_chip(mid) { lo = mid } else { hi = mid }
    }
    lo
}

/// Every plan of every planner fits its device's shared memory, static plus dynamic, on
/// every device limit, around every capacity boundary (found from the planner's own
/// choices, so that a boundary computed without room for the static memory is crossed
/// here): the row-on-chip block family (forward and backward), the on-chip cross-entropy,
/// the strided on-chip tiles.
#[test]
fn every_plan_fits_the_shared_memory_of_its_device() {
    for limits in devices() {
        let rows_set = [
            1,
            limits.sm_count as usize - 1,
            4 * limits.sm_count as usize,
            70_000,
        ];
        for dtype in Dtype::ALL {
            for op in Op::ALL.into_iter().filter(|o| *o != Op::CrossEntropy) {
                let plan = |rows, cols| {
                    plan_softmax(
                        &SoftmaxProblem {
                            op,
                            rows,
                            cols,
                            dtype,
                            aligned16: true,
                        },
                        &limits,
                    )
                };
                let edge = largest_on_chip(|cols| {
                    matches!(
                        plan(200, cols).stages[0].kernel.family,
                        Family::Block { .. }
                    ) || cols <= WARP_FAMILY_MAX_COLS
                });
                for cols in sizes_around(&[edge, block_family_max_cols_of(op, dtype, &limits)]) {
                    for rows in rows_set {
                        let p = plan(rows, cols);
                        if let Err(e) = p.check_shared_memory(&limits) {
                            panic!("{op:?} {dtype:?} {rows}x{cols} on {limits:?}: {e}");
                        }
                    }
                }
            }
            let modes = [
                CrossEntropyMode::CheckTargets,
                CrossEntropyMode::Loss { reduce: true },
                CrossEntropyMode::LossAndGradient { reduce: false },
                CrossEntropyMode::LossAndGradient { reduce: true },
                CrossEntropyMode::GradientFromLse,
            ];
            let ce_edge = largest_on_chip(|cols| {
                let p = plan_cross_entropy(200, cols, dtype, modes[2], &limits);
                p.stages.iter().any(|s| {
                    s.kernel.family
                        == Family::CrossEntropy {
                            stage: CrossEntropyStage::OnChip,
                        }
                })
            });
            assert!(
                ce_edge > 1000,
                "{dtype:?} on {limits:?}: on-chip up to {ce_edge}"
            );
            for cols in sizes_around(&[ce_edge]) {
                for rows in rows_set {
                    for mode in modes {
                        let p = plan_cross_entropy(rows, cols, dtype, mode, &limits);
                        if let Err(e) = p.check_shared_memory(&limits) {
                            panic!(
                                "cross-entropy {mode:?} {dtype:?} {rows}x{cols} on {limits:?}: {e}"
                            );
                        }
                    }
                }
            }
            for op in Op::ALL.into_iter().filter(|o| o.has_strided_family()) {
                let edges: Vec<usize> = [1, 2]
                    .map(|vec| strided_on_chip_max_n(dtype, op.inputs(), vec, &limits))
                    .to_vec();
                for n in sizes_around(&edges).into_iter().filter(|&n| n <= 1 << 16) {
                    for (outer, inner) in [(1, 2), (3, 7), (64, 64), (1, 4096)] {
                        let p = plan_strided(
                            &StridedProblem {
                                op,
                                outer,
                                n,
                                inner,
                                dtype,
                                aligned_pairs: true,
                            },
                            &limits,
                        );
                        if let Err(e) = p.check_shared_memory(&limits) {
                            panic!(
                                "strided {op:?} {dtype:?} [{outer}, {n}, {inner}] on {limits:?}: {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The check itself: a stage one byte over the limit (with its static memory counted) is
/// refused, naming the kernel; one at the limit passes.
#[test]
fn the_shared_memory_check_counts_static_memory() {
    let limits = DeviceLimits {
        sm_count: 8,
        max_shared_mem_per_block: 96 * 1024,
    };
    let kernel = KernelConfig {
        op: Op::CrossEntropy,
        dtype: Dtype::F32,
        family: Family::CrossEntropy {
            stage: CrossEntropyStage::OnChip,
        },
    };
    let plan = |dynamic: usize| LaunchPlan::single(kernel, 1, dynamic as u32);
    let fits = 96 * 1024 - STATIC_SMEM_RESERVE;
    assert_eq!(plan(fits).check_shared_memory(&limits), Ok(()));
    let e = plan(fits + 1).check_shared_memory(&limits).unwrap_err();
    assert!(e.contains(&kernel.name()) && e.contains("98304"), "{e}");
    let strided = KernelConfig {
        op: Op::Softmax,
        dtype: Dtype::F32,
        family: Family::Strided {
            slices: 8,
            on_chip: true,
            vec: 2,
        },
    };
    assert_eq!(
        static_smem_bound(&strided),
        STATIC_SMEM_RESERVE + 8 * 32 * 16
    );
}

/// Entry points that several configurations share are never given dynamic shared memory: the
/// backends keep a function's dynamic shared-memory allowance per configuration (by index), and
/// two configurations asking one function for different allowances would undo each other.
#[test]
fn shared_entry_points_take_no_dynamic_shared_memory() {
    let all = KernelConfig::all();
    let mut count = std::collections::HashMap::new();
    for k in &all {
        *count.entry(k.name()).or_insert(0) += 1;
    }
    let check = |plan: &LaunchPlan| {
        for s in &plan.stages {
            if count[&s.kernel.name()] > 1 {
                assert_eq!(s.shared_mem_bytes, 0, "{plan:?}");
            }
        }
    };
    let limits = [
        DeviceLimits::H100,
        DeviceLimits {
            sm_count: 8,
            max_shared_mem_per_block: 48 * 1024,
        },
    ];
    let mut checked = 0;
    for limits in &limits {
        for op in Op::ALL.into_iter().filter(|&op| op != Op::CrossEntropy) {
            for &dtype in op.dtypes() {
                for cols in [1, 100, 2049, 20_000, 65_536, 1 << 20] {
                    for rows in [1, 3, 200, 100_000] {
                        let problem = SoftmaxProblem {
                            op,
                            rows,
                            cols,
                            dtype,
                            aligned16: true,
                        };
                        check(&plan_softmax(&problem, limits));
                        checked += 1;
                    }
                }
            }
        }
        for dtype in Dtype::ALL {
            for mode in [
                CrossEntropyMode::CheckTargets,
                CrossEntropyMode::Loss { reduce: true },
                CrossEntropyMode::Loss { reduce: false },
                CrossEntropyMode::LossAndGradient { reduce: true },
                CrossEntropyMode::LossAndGradient { reduce: false },
                CrossEntropyMode::GradientFromLse,
            ] {
                for (rows, cols) in [(1, 100), (4, 50_000), (1000, 32_000), (3, 1 << 20)] {
                    check(&plan_cross_entropy(rows, cols, dtype, mode, limits));
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 500);
}
