//! `cuda-softmax sweep --out DIR`: every op x dtype x the column sweep of docs/performance.md,
//! as a table on stdout (a progress line on stderr), `sweep.csv`, `sweep.json` and one SVG plot
//! per op in DIR.
//!
//! On a GPU each shape is timed with CUDA events (inputs rotated over >= 256 MiB, median of
//! batches: src/tools/timing.rs) next to a device-to-device copy timed in the same run. Without one
//! (or with `--emulator`) the same ops run on the CPU SIMT emulator, which is far too slow to
//! time meaningfully: there it only counts traffic, and every GB/s reported is the model's
//! prediction (see [`predicted_gbs`]) for a nominal card, and the output says so.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use cuda_softmax::tools::check::Rng;
use cuda_softmax::tools::timing::{gb_per_s, median_ms, rotation_count, time_copy};
use cuda_softmax::{
    CrossEntropy, Device, DeviceTensor, Dtype, Element, Result, Softmax, bf16, f16,
    log_softmax_into, logsumexp, softmax_inplace, softmax_into,
};

use crate::plot;

/// The column sweep of docs/performance.md's predicted table.
pub const SWEEP_COLS: [usize; 17] = [
    16, 32, 64, 128, 256, 512, 1024, 1152, 2048, 2049, 4096, 8192, 16384, 32768, 65536, 131072,
    262144,
];

/// `--quick`: one shape per family of the forward planner (several rows a warp, a warp a row, a
/// block a row, two passes), for a short run on the emulator.
pub const QUICK_COLS: [usize; 5] = [16, 1024, 4096, 16384, 65536];

/// On a GPU every shape holds 64 MiB of input, as in docs/performance.md's predicted table.
const GPU_INPUT_BYTES: usize = 64 << 20;

/// On the emulator a shape holds about this many elements (about 12 s for the whole sweep);
/// `--quick` uses a quarter. Rows are at least EMULATOR_MIN_ROWS, so long rows hold more.
const EMULATOR_ELEMENTS: usize = 1 << 16;

/// The emulator reports 8 SMs to its planner (src/runtime/emulator.rs, EMULATOR_LIMITS).
const EMULATOR_MIN_ROWS: usize = 8;

/// The nominal copy bandwidth used for predictions without a GPU: an H100 SXM's HBM3 peak
/// (3.35 TB/s read + write). A measured device-to-device copy reaches less; the plot's title
/// and the table's header say which figure was used.
pub const NOMINAL_COPY_GBS: f64 = 3350.0;
pub const NOMINAL_CARD: &str = "H100 SXM (3350 GB/s peak, nominal)";

/// The ops the sweep covers: every public operation over the last dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOp {
    Softmax,
    LogSoftmax,
    SoftmaxBackward,
    LogSumExp,
    /// `CrossEntropy` forward, mean reduction, i64 targets, target check off (it reads a status
    /// word back to the host, which would time a synchronisation).
    CrossEntropy,
}

impl SweepOp {
    pub const ALL: [SweepOp; 5] = [
        SweepOp::Softmax,
        SweepOp::LogSoftmax,
        SweepOp::SoftmaxBackward,
        SweepOp::LogSumExp,
        SweepOp::CrossEntropy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SweepOp::Softmax => "softmax",
            SweepOp::LogSoftmax => "log_softmax",
            SweepOp::SoftmaxBackward => "softmax_backward",
            SweepOp::LogSumExp => "logsumexp",
            SweepOp::CrossEntropy => "cross_entropy",
        }
    }

    /// The bytes the op must move at least: each input read once and each output written once.
    /// Row tensors are `rows * cols * elem`; logsumexp writes one f32 a row; cross-entropy reads
    /// one i64 target a row and writes one f32 lse a row plus the two f32 scalars (loss, z-loss).
    pub fn min_bytes(self, rows: usize, cols: usize, elem: usize) -> usize {
        let row_tensor = rows * cols * elem;
        match self {
            SweepOp::Softmax | SweepOp::LogSoftmax => 2 * row_tensor,
            SweepOp::SoftmaxBackward => 3 * row_tensor,
            SweepOp::LogSumExp => row_tensor + rows * 4,
            SweepOp::CrossEntropy => row_tensor + rows * (8 + 4) + 2 * 4,
        }
    }
}

/// The parsed command line of `sweep`.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub out: PathBuf,
    pub quick: bool,
    pub emulator: bool,
    pub torch: Option<PathBuf>,
    pub cols: Option<Vec<usize>>,
}

pub const USAGE: &str =
    "usage: cuda-softmax sweep --out DIR [--quick] [--emulator] [--cols N,N,..] [--torch FILE]
  --out DIR      where sweep.csv, sweep.json and sweep_<op>.svg are written (created if missing)
  --quick        the columns 16,1024,4096,16384,65536 and, on the emulator, fewer rows
  --emulator     run on the CPU SIMT emulator even if a GPU is present
  --cols LIST    these columns instead of the sweep of docs/performance.md
  --torch FILE   torch's numbers to plot (CSV op,dtype,rows,cols,gbs with a header line, as
                 scripts/torch_softmax_bandwidth.py --csv FILE writes)";

/// Parses the arguments after `sweep`.
pub fn parse(args: &[String]) -> std::result::Result<Options, String> {
    let mut opts = Options {
        out: PathBuf::new(),
        quick: false,
        emulator: false,
        torch: None,
        cols: None,
    };
    let mut out = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--torch" => opts.torch = Some(PathBuf::from(value("--torch")?)),
            "--cols" => opts.cols = Some(parse_cols(&value("--cols")?)?),
            "--quick" => opts.quick = true,
            "--emulator" => opts.emulator = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    opts.out = out.ok_or("--out DIR is required")?;
    Ok(opts)
}

fn parse_cols(list: &str) -> std::result::Result<Vec<usize>, String> {
    let cols = list
        .split(',')
        .map(|c| match c.trim().parse::<usize>() {
            Ok(n) if (1..=1 << 24).contains(&n) => Ok(n),
            _ => Err(format!(
                "--cols: {c:?} is not a column count in 1..=16777216"
            )),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if cols.is_empty() {
        return Err("--cols needs at least one column count".into());
    }
    Ok(cols)
}

/// One measured (or, on the emulator, predicted) point.
#[derive(Debug, Clone)]
pub struct Point {
    pub op: SweepOp,
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
    pub bytes_min: usize,
    /// Bytes the plan moves: counted by the emulator (on a GPU, the emulator's count for the
    /// same op, dtype and columns, scaled to the GPU's rows).
    pub bytes_moved: usize,
    /// GPU: measured milliseconds. Emulator: the predicted milliseconds (bytes_min / gbs).
    pub ms: f64,
    /// GPU: measured GB/s of the minimum bytes. Emulator: the prediction.
    pub gbs: f64,
    pub copy_gbs: f64,
    pub predicted_gbs: f64,
    /// Wall milliseconds of the emulator's run (its traffic count), for reference.
    pub emulator_ms: f64,
    pub kernel: String,
    pub on_gpu: bool,
}

impl Point {
    pub fn traffic(&self) -> f64 {
        self.bytes_moved as f64 / self.bytes_min as f64
    }
}

/// The model: an op can at best move its bytes at the copy rate, so its predicted bandwidth
/// (counted over the minimum bytes) is
///
/// `predicted GB/s = copy GB/s x bytes_min / bytes_moved`
///
/// with `bytes_moved` the traffic the plan really makes (1.0x the minimum for one-pass plans,
/// about 1.5x for the two-pass online and split-row plans) and the copy rate measured on the
/// GPU, or [`NOMINAL_COPY_GBS`] without one. It ignores launch overhead, occupancy and L2 hits
/// (docs/performance.md has the finer static model of bytes in flight). The traffic is always
/// the emulator's count, so its plan is the one the emulator's limits pick (8 SMs, 96 KiB of
/// shared memory a block): on a GPU with more shared memory the block family reaches longer
/// rows (f32 rows of 24K-57K columns are one pass on an H100 but two on the emulator).
pub fn predicted_gbs(copy_gbs: f64, bytes_min: usize, bytes_moved: usize) -> f64 {
    copy_gbs * bytes_min as f64 / bytes_moved.max(1) as f64
}

/// Rows of a shape: 64 MiB of input on a GPU; on the emulator about EMULATOR_ELEMENTS
/// elements (a quarter with `--quick`), but at least EMULATOR_MIN_ROWS, so that the emulator's
/// planner picks the family a large batch gets on a GPU (with fewer rows than SMs it splits
/// rows across blocks, which a 64 MiB input on a GPU does only past 65536 columns).
fn rows_for(cols: usize, elem: usize, on_gpu: bool, quick: bool) -> usize {
    if on_gpu {
        (GPU_INPUT_BYTES / (cols * elem)).max(1)
    } else {
        let elements = if quick {
            EMULATOR_ELEMENTS / 4
        } else {
            EMULATOR_ELEMENTS
        };
        (elements / cols).max(EMULATOR_MIN_ROWS)
    }
}

/// Inputs and outputs of one op for one shape; several sets rotate on a GPU so the working set
/// cannot sit in L2.
struct Buffers<T: Element> {
    /// Logits (softmax output y for the backward).
    x: DeviceTensor<T>,
    /// Upstream gradient (backward only).
    dy: Option<DeviceTensor<T>>,
    /// Output of the ops that write rows.
    out: Option<DeviceTensor<T>>,
    targets: Option<DeviceTensor<i64>>,
}

/// Host data of one shape, made once and uploaded to every rotated set (the sets exist to
/// defeat L2 by their addresses; their values may repeat).
struct HostInputs<T> {
    rows: usize,
    cols: usize,
    x: Vec<T>,
    /// Upstream gradient (backward only).
    dy: Option<Vec<T>>,
    /// One class a row (cross-entropy only).
    targets: Option<Vec<i64>>,
}

impl<T: Element> HostInputs<T> {
    fn new(op: SweepOp, rows: usize, cols: usize) -> Self {
        let mut rng = Rng::new(7);
        let x = rng.logits::<T>(rows * cols, 4.0);
        let dy = (op == SweepOp::SoftmaxBackward).then(|| rng.logits::<T>(rows * cols, 1.0));
        let targets = (op == SweepOp::CrossEntropy)
            .then(|| (0..rows).map(|_| rng.below(cols) as i64).collect());
        HostInputs {
            rows,
            cols,
            x,
            dy,
            targets,
        }
    }
}

fn buffers<T: Element>(device: &Device, op: SweepOp, host: &HostInputs<T>) -> Result<Buffers<T>> {
    let shape = [host.rows, host.cols];
    let mut x = DeviceTensor::from_host(device, &host.x, &shape)?;
    if op == SweepOp::SoftmaxBackward {
        // A real forward output, so the backward sees probabilities.
        softmax_inplace(&mut x)?;
    }
    let out = match op {
        SweepOp::Softmax | SweepOp::LogSoftmax | SweepOp::SoftmaxBackward => {
            Some(DeviceTensor::uninit(device, &shape)?)
        }
        SweepOp::LogSumExp | SweepOp::CrossEntropy => None,
    };
    let dy = match &host.dy {
        Some(dy) => Some(DeviceTensor::from_host(device, dy, &shape)?),
        None => None,
    };
    let targets = match &host.targets {
        Some(t) => Some(DeviceTensor::from_host(device, t, &[host.rows])?),
        None => None,
    };
    Ok(Buffers {
        x,
        dy,
        out,
        targets,
    })
}

fn run_op<T: Element>(op: SweepOp, b: &mut Buffers<T>) -> Result<()> {
    let missing = || cuda_softmax::Error::Launch {
        kernel: op.name().into(),
        detail: "sweep buffers incomplete".into(),
    };
    match op {
        SweepOp::Softmax => softmax_into(&b.x, b.out.as_mut().ok_or_else(missing)?),
        SweepOp::LogSoftmax => log_softmax_into(&b.x, b.out.as_mut().ok_or_else(missing)?),
        SweepOp::SoftmaxBackward => {
            let dy = b.dy.as_ref().ok_or_else(missing)?;
            let dx = b.out.as_mut().ok_or_else(missing)?;
            Softmax::new().backward_into(&b.x, dy, dx)
        }
        SweepOp::LogSumExp => logsumexp(&b.x).map(drop),
        SweepOp::CrossEntropy => CrossEntropy::new()
            .check_targets(false)
            .forward(&b.x, b.targets.as_ref().ok_or_else(missing)?)
            .map(drop),
    }
}

/// What one run of an op on the emulator counted.
struct Counted {
    bytes_moved: usize,
    bytes_min: usize,
    wall_ms: f64,
    kernel: String,
}

fn count_on_emulator<T: Element>(
    emu: &Device,
    op: SweepOp,
    rows: usize,
    cols: usize,
) -> Result<Counted> {
    let mut b = buffers(emu, op, &HostInputs::<T>::new(op, rows, cols))?;
    let start = Instant::now();
    run_op(op, &mut b)?;
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let stats = emu
        .last_launch_stats()
        .ok_or_else(|| cuda_softmax::Error::Launch {
            kernel: op.name().into(),
            detail: "the emulator recorded no launch statistics".into(),
        })?;
    Ok(Counted {
        bytes_moved: (stats.kernel_bytes_read + stats.kernel_bytes_written) as usize,
        bytes_min: op.min_bytes(rows, cols, size_of::<T>()),
        wall_ms,
        kernel: stats.kernel,
    })
}

fn time_on_gpu<T: Element>(gpu: &Device, op: SweepOp, rows: usize, cols: usize) -> Result<f64> {
    let count = rotation_count(op.min_bytes(rows, cols, size_of::<T>()));
    let host = HostInputs::<T>::new(op, rows, cols);
    let mut sets = (0..count)
        .map(|_| buffers(gpu, op, &host))
        .collect::<Result<Vec<_>>>()?;
    drop(host);
    median_ms(gpu, 3, 7, 10, |i| run_op(op, &mut sets[i % count]))
}

/// One point: the emulator's traffic count, then (on a GPU) the timing.
fn measure<T: Element>(
    emu: &Device,
    gpu: Option<&Device>,
    op: SweepOp,
    cols: usize,
    quick: bool,
    copy_gbs: f64,
) -> Result<Point> {
    let elem = size_of::<T>();
    let emu_rows = rows_for(cols, elem, false, quick);
    let counted = count_on_emulator::<T>(emu, op, emu_rows, cols)?;
    let rows = rows_for(cols, elem, gpu.is_some(), quick);
    let bytes_min = op.min_bytes(rows, cols, elem);
    // The traffic ratio holds per row; scale the emulator's count to this shape's rows.
    let bytes_moved =
        (bytes_min as f64 * counted.bytes_moved as f64 / counted.bytes_min as f64).round() as usize;
    let predicted = predicted_gbs(copy_gbs, bytes_min, bytes_moved);
    let (ms, gbs) = match gpu {
        Some(gpu) => {
            let ms = time_on_gpu::<T>(gpu, op, rows, cols)?;
            (ms, gb_per_s(bytes_min, ms))
        }
        None => (bytes_min as f64 / (predicted * 1e9) * 1e3, predicted),
    };
    Ok(Point {
        op,
        dtype: T::DTYPE,
        rows,
        cols,
        bytes_min,
        bytes_moved,
        ms,
        gbs,
        copy_gbs,
        predicted_gbs: predicted,
        emulator_ms: counted.wall_ms,
        kernel: counted.kernel,
        on_gpu: gpu.is_some(),
    })
}

fn measure_dtype(
    emu: &Device,
    gpu: Option<&Device>,
    op: SweepOp,
    dtype: Dtype,
    cols: usize,
    quick: bool,
    copy_gbs: f64,
) -> Result<Point> {
    match dtype {
        Dtype::F32 => measure::<f32>(emu, gpu, op, cols, quick, copy_gbs),
        Dtype::F16 => measure::<f16>(emu, gpu, op, cols, quick, copy_gbs),
        Dtype::Bf16 => measure::<bf16>(emu, gpu, op, cols, quick, copy_gbs),
        other => Err(cuda_softmax::Error::Unsupported {
            what: format!("the sweep does not know {other:?}"),
        }),
    }
}

/// Progress on stderr: one line rewritten in place on a terminal, plain lines otherwise.
struct Progress {
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let line = format!("[{}/{}] {what}", self.done, self.total);
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop the sweep.
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    /// Clears the progress line before a table row goes to the same terminal.
    fn clear(&self) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }

    fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// The device to time on (`None`: the emulator only) and the copy rate predictions use.
fn pick_device(opts: &Options) -> std::result::Result<(Option<Device>, f64, String), String> {
    let gpu = if opts.emulator {
        println!("--emulator: running on the CPU SIMT emulator.");
        None
    } else {
        match Device::cuda(0) {
            Ok(d) => Some(d),
            Err(e) if std::env::var("CS_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                return Err(format!("CS_REQUIRE_GPU=1 but no GPU could be opened: {e}"));
            }
            Err(e) => {
                println!("No GPU found: {e}\nRunning on the CPU SIMT emulator instead.");
                None
            }
        }
    };
    match gpu {
        Some(gpu) => {
            let bytes = 256 << 20;
            let ms = time_copy(&gpu, bytes, 7, 10).map_err(|e| e.to_string())?;
            let copy = gb_per_s(2 * bytes, ms);
            let label = format!(
                "{} (device-to-device copy {copy:.1} GB/s, measured)",
                gpu.name()
            );
            Ok((Some(gpu), copy, label))
        }
        None => {
            println!(
                "Without a GPU every GB/s below is PREDICTED, not measured: copy bandwidth of \
                 an {NOMINAL_CARD} x minimum bytes / bytes the plan moves (traffic counted by \
                 the emulator)."
            );
            Ok((
                None,
                NOMINAL_COPY_GBS,
                format!("the emulator; GB/s predicted for the copy of an {NOMINAL_CARD}"),
            ))
        }
    }
}

/// Runs the sweep and writes its files; the exit code of the subcommand.
pub fn run(opts: &Options) -> ExitCode {
    match run_inner(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sweep failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_inner(opts: &Options) -> std::result::Result<(), String> {
    let torch = match &opts.torch {
        Some(path) => plot::read_torch_csv(path)?,
        None => Vec::new(),
    };
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let (gpu, copy_gbs, label) = pick_device(opts)?;
    let emu = Device::emulator();
    let cols: Vec<usize> = match (&opts.cols, opts.quick) {
        (Some(c), _) => c.clone(),
        (None, true) => QUICK_COLS.to_vec(),
        (None, false) => SWEEP_COLS.to_vec(),
    };
    let mut progress = Progress {
        total: SweepOp::ALL.len() * Dtype::ALL.len() * cols.len(),
        done: 0,
        tty: std::io::stderr().is_terminal(),
    };
    println!("sweep on {label}:");
    println!("{}", table_header(gpu.is_some()));
    let mut points = Vec::new();
    for op in SweepOp::ALL {
        for dtype in Dtype::ALL {
            for &c in &cols {
                let rows = rows_for(c, dtype.size_bytes(), gpu.is_some(), opts.quick);
                progress.step(&format!("{} {} {rows}x{c}", op.name(), dtype.name()));
                let p = measure_dtype(&emu, gpu.as_ref(), op, dtype, c, opts.quick, copy_gbs)
                    .map_err(|e| format!("{} {} {rows}x{c}: {e}", op.name(), dtype.name()))?;
                progress.clear();
                println!("{}", table_row(&p));
                points.push(p);
            }
        }
    }
    progress.finish();
    write_outputs(opts, &points, &torch, &label)
}

fn write_outputs(
    opts: &Options,
    points: &[Point],
    torch: &[plot::TorchPoint],
    label: &str,
) -> std::result::Result<(), String> {
    let write = |name: &str, text: &str| {
        let path = opts.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok::<PathBuf, String>(path)
    };
    let mut written = vec![
        write("sweep.csv", &to_csv(points))?,
        write("sweep.json", &to_json(points, label))?,
    ];
    for op in SweepOp::ALL {
        let path = opts.out.join(format!("sweep_{}.svg", op.name()));
        plot::draw(&path, op, points, torch, label)?;
        written.push(path);
    }
    println!("wrote:");
    for path in written {
        println!("  {}", path.display());
    }
    Ok(())
}

/// On the emulator the time column is the emulator's own wall time (what counting the traffic
/// took), not a GPU time: the GB/s there are predictions.
fn table_header(on_gpu: bool) -> String {
    format!(
        "  {:<17} {:<5} {:>8} x {:<7} {:>10} {:>9} {:>6} {:>9} {:>7}  kernel",
        "op",
        "dtype",
        "rows",
        "cols",
        if on_gpu { "ms" } else { "emu ms" },
        "GB/s",
        "/copy",
        "predicted",
        "traffic"
    )
}

fn table_row(p: &Point) -> String {
    format!(
        "  {:<17} {:<5} {:>8} x {:<7} {:>10.4} {:>9.1} {:>6.2} {:>9.1} {:>6.2}x  {}{}",
        p.op.name(),
        p.dtype.name(),
        p.rows,
        p.cols,
        if p.on_gpu { p.ms } else { p.emulator_ms },
        p.gbs,
        p.gbs / p.copy_gbs,
        p.predicted_gbs,
        p.traffic(),
        p.kernel,
        if p.on_gpu { "" } else { " (predicted)" }
    )
}

/// The fields of a result row, in the order of the CSV columns: the CSV header and the JSON keys.
const ROW_FIELDS: [&str; 14] = [
    "op",
    "dtype",
    "rows",
    "cols",
    "bytes_min",
    "bytes_moved",
    "ms",
    "gbs",
    "copy_gbs",
    "ratio_to_copy",
    "predicted_gbs",
    "source",
    "emulator_ms",
    "kernel",
];

/// One value of a result row: text (quoted in JSON) or a number (already formatted).
enum Value {
    Text(String),
    Number(String),
}

/// The values of a result row, in the order of [`ROW_FIELDS`].
fn row_values(p: &Point) -> [Value; 14] {
    use Value::{Number, Text};
    [
        Text(p.op.name().to_string()),
        Text(p.dtype.name().to_string()),
        Number(p.rows.to_string()),
        Number(p.cols.to_string()),
        Number(p.bytes_min.to_string()),
        Number(p.bytes_moved.to_string()),
        Number(format!("{:.6}", p.ms)),
        Number(format!("{:.3}", p.gbs)),
        Number(format!("{:.3}", p.copy_gbs)),
        Number(format!("{:.4}", p.gbs / p.copy_gbs)),
        Number(format!("{:.3}", p.predicted_gbs)),
        Text(source(p).to_string()),
        Number(format!("{:.3}", p.emulator_ms)),
        Text(p.kernel.clone()),
    ]
}

fn to_csv(points: &[Point]) -> String {
    let mut s = ROW_FIELDS.join(",");
    s.push('\n');
    for p in points {
        // Kernel names hold no commas except as `a+b`; they are written as they are.
        let values: Vec<String> = row_values(p)
            .into_iter()
            .map(|(Value::Text(v) | Value::Number(v))| v)
            .collect();
        s += &values.join(",");
        s.push('\n');
    }
    s
}

fn source(p: &Point) -> &'static str {
    if p.on_gpu { "gpu" } else { "emulator" }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn to_json(points: &[Point], label: &str) -> String {
    let measured = points.first().is_some_and(|p| p.on_gpu);
    let mut s = String::from("{\n");
    let _ = writeln!(s, "  \"device\": {},", json_str(label));
    let _ = writeln!(s, "  \"measured\": {measured},");
    let _ = writeln!(
        s,
        "  \"model\": {},",
        json_str("predicted_gbs = copy_gbs * bytes_min / bytes_moved")
    );
    s.push_str("  \"points\": [\n");
    for (i, p) in points.iter().enumerate() {
        let fields: Vec<String> = ROW_FIELDS
            .iter()
            .zip(row_values(p))
            .map(|(name, value)| match value {
                Value::Text(v) => format!("\"{name}\": {}", json_str(&v)),
                Value::Number(v) => format!("\"{name}\": {v}"),
            })
            .collect();
        let _ = write!(s, "    {{{}}}", fields.join(", "));
        s.push_str(if i + 1 < points.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_and_rejects() {
        let o = parse(&args(&["--out", "d", "--quick", "--cols", "8,1024"])).unwrap();
        assert_eq!(o.out, PathBuf::from("d"));
        assert!(o.quick);
        assert_eq!(o.cols, Some(vec![8, 1024]));
        assert!(parse(&args(&["--quick"])).is_err());
        assert!(parse(&args(&["--out"])).is_err());
        assert!(parse(&args(&["--out", "d", "--cols", "0"])).is_err());
        assert!(parse(&args(&["--out", "d", "--bogus"])).is_err());
    }

    #[test]
    fn prediction_is_copy_over_traffic() {
        assert_eq!(predicted_gbs(3000.0, 100, 150), 2000.0);
        assert_eq!(predicted_gbs(3000.0, 100, 100), 3000.0);
    }
}
