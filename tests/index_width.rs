//! Element offsets past 2^31: a kernel that keeps a row offset in 32 bits reads and writes the
//! wrong rows (or outside the tensor) only there. Reaching that far costs little on the
//! emulator: the tensors are zeroed lazily (untouched pages cost nothing), the kernels work in
//! place, and a test hook runs only the blocks of the last row.

use cuda_softmax::{Device, DeviceTensor, EmulatorConfig, bf16, softmax_into};

/// Row `row` of a `rows x cols` bf16 tensor of zeros, except `spikes` (column, value), run in
/// place through the family the planner picks, with only the blocks from `first_block` on.
/// Every element of the row is compared with the exact softmax: ln-space values are simple
/// (every zero gets exp(-m) / d), so the f64 reference is computed in closed form.
fn far_row(
    rows: usize,
    cols: usize,
    spikes: &[(usize, f32)],
    first_block: u64,
    skipped_row: usize,
    family: &str,
) {
    let row = rows - 1;
    let offset = row * cols;
    assert!(offset >= 1 << 31, "the last row must start past 2^31");
    let d = Device::emulator_with(EmulatorConfig::default().workers(2));
    let x = DeviceTensor::<bf16>::zeros(&d, &[rows, cols]).unwrap();
    for &(c, v) in spikes {
        let mut e = x.view(offset + c, &[1]).unwrap();
        e.copy_from_host(&[bf16::from_f32(v)]).unwrap();
    }
    let mut y = x.view(0, &[rows, cols]).unwrap();
    d.emulator_skip_blocks_before(first_block);
    softmax_into(&x, &mut y).unwrap();
    let stats = d.last_launch_stats().unwrap();
    assert!(stats.kernel.contains(family), "{}", stats.kernel);

    // Closed-form reference: m = max(0, spikes), d = (cols - spikes) e^-m + sum e^(v - m).
    let m = spikes.iter().fold(0.0f64, |m, &(_, v)| m.max(v as f64));
    let sum = (cols - spikes.len()) as f64 * (-m).exp()
        + spikes
            .iter()
            .map(|&(_, v)| (v as f64 - m).exp())
            .sum::<f64>();
    let zero_out = (-m).exp() / sum;
    let got = x.row(row).unwrap().to_host().unwrap();
    let mut bad = 0usize;
    let mut first_bad = None;
    for (c, g) in got.iter().enumerate() {
        let want = spikes
            .iter()
            .find(|s| s.0 == c)
            .map_or(zero_out, |&(_, v)| (v as f64 - m).exp() / sum);
        let g = g.to_f64();
        if (g - want).abs() > 8e-3 * want.abs() {
            bad += 1;
            first_bad.get_or_insert((c, g, want));
        }
    }
    assert_eq!(bad, 0, "{bad} wrong elements; first {first_bad:?}");
    // A row of a skipped block was not touched: the hook ran only the blocks asked for.
    let before = x
        .view(skipped_row * cols + cols - 4, &[4])
        .unwrap()
        .to_host()
        .unwrap();
    assert!(before.iter().all(|v| v.to_f32() == 0.0), "{before:?}");
}

/// The emulator's planner limits: 8 nominal SMs, grids capped at 8 * 32 = 256 blocks that loop
/// over rows (block b takes rows b, b + 256, ...). A row count that is a multiple of 256 puts
/// the last row in the last block, so skipping blocks 0..255 leaves 1/256 of the work.
const GRID_CAP: u64 = 256;

/// A warp per row (2048 columns, 4 rows per block, rows step by 1024): row 1,049,599 starts
/// at element 2,149,578,752.
#[test]
fn warp_family_row_offsets_past_2_pow_31() {
    let rows = 1024 * 1025;
    far_row(
        rows,
        2048,
        &[(7, 4.0), (2047, 1.0)],
        GRID_CAP - 1,
        rows - 5,
        "warp",
    );
}

/// A block per row with the row in shared memory (48,632 bf16 columns, the family's longest on
/// the emulator's 96 KiB: the row in its storage type plus one pack of lead-in, and 1 KiB
/// reserve): row 44,287 starts at element 2,153,765,384.
#[test]
fn block_family_row_offsets_past_2_pow_31() {
    let rows = 256 * 173;
    far_row(
        rows,
        48_632,
        &[(0, 3.0), (48_631, 2.0)],
        GRID_CAP - 1,
        rows - 2,
        "block",
    );
}

/// One column more: the online two-pass family; row 44,287 starts at element 2,153,809,671.
#[test]
fn online_family_row_offsets_past_2_pow_31() {
    let rows = 256 * 173;
    far_row(
        rows,
        48_633,
        &[(1, 3.0), (48_632, -2.0)],
        GRID_CAP - 1,
        rows - 2,
        "online",
    );
}

/// Few long rows: the split-row pair over a (chunks x rows) grid. 7 rows of 357,913,942
/// columns: row 6 starts at element 2,147,483,652; its 3 chunks are the last blocks.
#[test]
fn split_family_row_offsets_past_2_pow_31() {
    let cols = 357_913_942;
    let chunks = 3; // planner: ceil(2 * 8 SMs / 7 rows)
    far_row(
        7,
        cols,
        &[(0, 2.0), (cols - 1, 3.0), (cols / 3 + 1, 1.0)],
        6 * chunks,
        5,
        "split",
    );
}
