//! The launch planner: a pure function from (problem, device limits) to (kernel, geometry).
//! No backend is involved, so every dispatch decision is unit-tested here.
//!
//! Families, by row length (elements per row = `cols`):
//! - `cols <= 16`: several rows per warp, `width` lanes per row, one element per lane;
//! - `cols <= 2048`: a warp per row, the row in registers (16-byte packs when rows are aligned);
//! - row fits in shared memory as f32: a block per row, the row on chip (global traffic 1.0x);
//! - longer: a block per row, online (max, sum) pass then a write pass (traffic 1.5x).

use crate::element::Dtype;

/// What the planner needs to know about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLimits {
    /// Streaming multiprocessors (the emulator reports a nominal number).
    pub sm_count: u32,
    /// Dynamic shared memory one block may use, opt-in limit included.
    pub max_shared_mem_per_block: u32,
}

impl DeviceLimits {
    /// An H100 SXM (132 SMs, 227 KiB opt-in shared memory): handy for tests and docs.
    pub const H100: DeviceLimits = DeviceLimits {
        sm_count: 132,
        max_shared_mem_per_block: 227 * 1024,
    };
}

/// One softmax over the last dimension: `rows` rows of `cols` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftmaxProblem {
    pub rows: usize,
    pub cols: usize,
    pub dtype: Dtype,
    /// Input and output each start on a 16-byte boundary.
    pub aligned16: bool,
}

/// A kernel family and its tile configuration. Each maps to one `extern "C"` entry point per
/// dtype in kernels/softmax.cu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `width` lanes per row, `cols_per_lane` elements per lane moved `vec` at a time.
    Warp {
        width: u32,
        cols_per_lane: u32,
        vec: u32,
    },
    /// A block of `threads` per row, row cached in shared memory.
    Block { threads: u32 },
    /// A block of `threads` per row, online normalizer then a second read.
    Online { threads: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    pub dtype: Dtype,
    pub family: Family,
}

/// Threads per block of the warp family (4 warps).
pub const WARP_FAMILY_THREADS: u32 = 128;
/// Longest row the warp family holds in registers (32 lanes x 64 elements).
pub const WARP_FAMILY_MAX_COLS: usize = 32 * 64;
const SMALL_ROW_WIDTHS: [u32; 5] = [1, 2, 4, 8, 16];
const LANE_COLS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];
const BLOCK_THREADS: [u32; 3] = [128, 256, 512];
const ONLINE_THREADS: u32 = 512;
/// Grids are capped at this many blocks per SM; kernels loop over the remaining rows.
const BLOCKS_PER_SM: u32 = 32;

impl KernelConfig {
    /// The entry point's symbol name.
    pub fn name(&self) -> String {
        let dt = self.dtype.name();
        match self.family {
            Family::Warp {
                width,
                cols_per_lane,
                vec,
            } => format!("softmax_warp_{dt}_w{width}_c{cols_per_lane}_v{vec}"),
            Family::Block { threads } => format!("softmax_block_{dt}_b{threads}"),
            Family::Online { threads } => format!("softmax_online_{dt}_b{threads}"),
        }
    }

    pub fn threads_per_block(&self) -> u32 {
        match self.family {
            Family::Warp { .. } => WARP_FAMILY_THREADS,
            Family::Block { threads } | Family::Online { threads } => threads,
        }
    }

    /// Every configuration the GPU image and the emulator must provide.
    pub fn all() -> Vec<KernelConfig> {
        let mut all = Vec::new();
        for dtype in Dtype::ALL {
            let v = dtype.vector_width() as u32;
            let mut push = |family| all.push(KernelConfig { dtype, family });
            for width in SMALL_ROW_WIDTHS {
                push(Family::Warp {
                    width,
                    cols_per_lane: 1,
                    vec: 1,
                });
            }
            for c in LANE_COLS {
                push(Family::Warp {
                    width: 32,
                    cols_per_lane: c,
                    vec: 1,
                });
            }
            for c in LANE_COLS.into_iter().filter(|&c| c >= v) {
                push(Family::Warp {
                    width: 32,
                    cols_per_lane: c,
                    vec: v,
                });
            }
            for threads in BLOCK_THREADS {
                push(Family::Block { threads });
            }
            push(Family::Online {
                threads: ONLINE_THREADS,
            });
        }
        all
    }
}

/// Kernel and launch geometry for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPlan {
    pub kernel: KernelConfig,
    pub grid: u32,
    pub block: u32,
    pub shared_mem_bytes: u32,
}

/// Picks the kernel and geometry for a softmax. `rows` and `cols` must be non-zero (the
/// operation returns before planning otherwise); the result is clamped to a valid launch anyway.
pub fn plan_softmax(p: &SoftmaxProblem, limits: &DeviceLimits) -> LaunchPlan {
    let rows = p.rows.max(1);
    let cols = p.cols.max(1);
    let v = p.dtype.vector_width();
    let grid_cap = (limits.sm_count.max(1) as usize) * BLOCKS_PER_SM as usize;
    let grid_for = |blocks: usize| blocks.clamp(1, grid_cap) as u32;

    if cols <= WARP_FAMILY_MAX_COLS {
        let (width, cols_per_lane, vec) = if cols <= 16 {
            (cols.next_power_of_two() as u32, 1, 1)
        } else {
            // Vector packs need every row to start 16-byte aligned: aligned base, cols % v == 0.
            let vectorized = p.aligned16 && cols.is_multiple_of(v);
            let per_lane = cols.div_ceil(32).next_power_of_two();
            if vectorized {
                (32, per_lane.max(v) as u32, v as u32)
            } else {
                (32, per_lane as u32, 1)
            }
        };
        let rows_per_block = (WARP_FAMILY_THREADS / 32 * (32 / width)) as usize;
        return LaunchPlan {
            kernel: KernelConfig {
                dtype: p.dtype,
                family: Family::Warp {
                    width,
                    cols_per_lane,
                    vec,
                },
            },
            grid: grid_for(rows.div_ceil(rows_per_block)),
            block: WARP_FAMILY_THREADS,
            shared_mem_bytes: 0,
        };
    }

    let row_bytes = cols * std::mem::size_of::<f32>();
    if row_bytes <= limits.max_shared_mem_per_block as usize {
        let packs = cols.div_ceil(v);
        let threads = match packs {
            0..=1024 => 128,
            1025..=2048 => 256,
            _ => 512,
        };
        return LaunchPlan {
            kernel: KernelConfig {
                dtype: p.dtype,
                family: Family::Block { threads },
            },
            grid: grid_for(rows),
            block: threads,
            shared_mem_bytes: row_bytes as u32,
        };
    }

    LaunchPlan {
        kernel: KernelConfig {
            dtype: p.dtype,
            family: Family::Online {
                threads: ONLINE_THREADS,
            },
        },
        grid: grid_for(rows),
        block: ONLINE_THREADS,
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rows: usize, cols: usize, dtype: Dtype, aligned16: bool) -> LaunchPlan {
        plan_softmax(
            &SoftmaxProblem {
                rows,
                cols,
                dtype,
                aligned16,
            },
            &DeviceLimits::H100,
        )
    }

    #[test]
    fn short_rows_pack_several_rows_per_warp() {
        for (cols, width) in [(1, 1), (2, 2), (3, 4), (5, 8), (16, 16)] {
            let p = plan(1000, cols, Dtype::F32, true);
            assert_eq!(
                p.kernel.family,
                Family::Warp {
                    width,
                    cols_per_lane: 1,
                    vec: 1
                },
                "cols {cols}"
            );
            assert_eq!(p.block, 128);
        }
    }

    #[test]
    fn warp_rows_use_vectors_only_when_every_row_is_aligned() {
        let p = plan(64, 1024, Dtype::F32, true);
        assert_eq!(p.kernel.name(), "softmax_warp_f32_w32_c32_v4");
        let p = plan(64, 1024, Dtype::F32, false);
        assert_eq!(p.kernel.name(), "softmax_warp_f32_w32_c32_v1");
        // 1023 columns: row starts drift off 16-byte boundaries.
        let p = plan(64, 1023, Dtype::F32, true);
        assert_eq!(p.kernel.name(), "softmax_warp_f32_w32_c32_v1");
        // f16 packs hold 8 elements: 32 columns still use one 8-wide pack per lane.
        let p = plan(64, 32, Dtype::F16, true);
        assert_eq!(p.kernel.name(), "softmax_warp_f16_w32_c8_v8");
        let p = plan(64, 2048, Dtype::Bf16, true);
        assert_eq!(p.kernel.name(), "softmax_warp_bf16_w32_c64_v8");
    }

    #[test]
    fn every_row_length_gets_a_kernel_that_covers_it() {
        for dtype in Dtype::ALL {
            for cols in (1..=4100).chain([8003, 65537, 1 << 20]) {
                for aligned in [true, false] {
                    let p = plan(3, cols, dtype, aligned);
                    assert!(KernelConfig::all().contains(&p.kernel), "{p:?}");
                    match p.kernel.family {
                        Family::Warp {
                            width,
                            cols_per_lane,
                            vec,
                        } => {
                            assert!((width * cols_per_lane) as usize >= cols);
                            assert!(cols_per_lane % vec == 0);
                            if vec > 1 {
                                assert!(aligned && cols % vec as usize == 0);
                            }
                        }
                        Family::Block { .. } => {
                            assert_eq!(p.shared_mem_bytes as usize, cols * 4);
                            assert!(
                                p.shared_mem_bytes <= DeviceLimits::H100.max_shared_mem_per_block
                            );
                        }
                        Family::Online { .. } => assert!(cols * 4 > 227 * 1024),
                    }
                }
            }
        }
    }

    #[test]
    fn family_boundaries_follow_the_device_limits() {
        let p = plan(8, 2048, Dtype::F32, true);
        assert!(matches!(p.kernel.family, Family::Warp { .. }));
        let p = plan(8, 2049, Dtype::F32, true);
        assert_eq!(p.kernel.family, Family::Block { threads: 128 });
        assert_eq!(p.shared_mem_bytes, 2049 * 4);
        let p = plan(8, 16384, Dtype::F32, true);
        assert_eq!(p.kernel.family, Family::Block { threads: 512 });
        let max_cols = 227 * 1024 / 4;
        let p = plan(8, max_cols, Dtype::F16, true);
        assert!(matches!(p.kernel.family, Family::Block { .. }));
        let p = plan(8, max_cols + 1, Dtype::F16, true);
        assert_eq!(p.kernel.family, Family::Online { threads: 512 });
        // A device with 48 KiB of shared memory switches to the online kernel sooner.
        let small = DeviceLimits {
            sm_count: 8,
            max_shared_mem_per_block: 48 * 1024,
        };
        let problem = SoftmaxProblem {
            rows: 2,
            cols: 12 * 1024 + 1,
            dtype: Dtype::F32,
            aligned16: true,
        };
        assert_eq!(
            plan_softmax(&problem, &small).kernel.family,
            Family::Online { threads: 512 }
        );
    }

    #[test]
    fn grids_cover_the_rows_and_are_capped() {
        // 16 rows per block at width 8; 1000 rows need 63 blocks.
        assert_eq!(plan(1000, 5, Dtype::F32, true).grid, 63);
        // 4 rows per block (a warp per row).
        assert_eq!(plan(1000, 100, Dtype::F32, true).grid, 250);
        // Many rows: the grid stops at 32 blocks per SM and the kernel loops.
        let p = plan(10_000_000, 100, Dtype::F32, true);
        assert_eq!(p.grid, 132 * 32);
        let p = plan(100_000, 4097, Dtype::F32, true);
        assert_eq!(p.grid, 132 * 32);
        assert_eq!(plan(3, 1 << 20, Dtype::F32, true).grid, 3);
        // Degenerate inputs still give a valid launch.
        let p = plan(0, 0, Dtype::F32, true);
        assert!(p.grid >= 1 && p.block >= 1);
    }

    #[test]
    fn kernel_names_are_unique_and_cover_every_dtype() {
        let all = KernelConfig::all();
        let mut names: Vec<String> = all.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for dtype in Dtype::ALL {
            let of = |f: fn(&Family) -> bool| {
                all.iter()
                    .filter(|k| k.dtype == dtype && f(&k.family))
                    .count()
            };
            // 5 small-row widths + 7 scalar + (5 f32 | 4 f16/bf16) vector warp configs.
            let vector = if dtype == Dtype::F32 { 5 } else { 4 };
            assert_eq!(of(|f| matches!(f, Family::Warp { .. })), 12 + vector);
            assert_eq!(of(|f| matches!(f, Family::Block { .. })), 3);
            assert_eq!(of(|f| matches!(f, Family::Online { .. })), 1);
        }
    }
}
